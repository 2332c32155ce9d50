"""What can an operator do from a shell? `python starter.py --help`, the same CLI as `warmpool`."""

from warmpool.cli import exit_now, main

if __name__ == "__main__":
    exit_now(main(prog="starter.py"))
