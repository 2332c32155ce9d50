"""How long from the README run command to the first READY slot, on the simulator?

Measures: runs `scripts/devstack.py --once` (what `./scripts/run.sh --once` runs after its
bootstrap step) --runs times as a subprocess, each with a fresh pool name, and prints the wall
time from the launch to its "first READY after N s" line (and devstack's own N, which starts
after Python has imported it), plus the whole --once run (the rest of its demo, a drain, and
stopping every process). `--run-sh` runs `./scripts/run.sh --once` itself; its bootstrap
re-installs the project into .venv when pyproject.toml changed since the last install.
Refuses to start while another process holds the SQLite file (two dev servers on it lock or
corrupt it), and terminates the pool of a failed run, which every later devstack would resume.

The run command brings up the Temporal dev server (SQLite file .warmpool/temporal.sqlite, shared
with every devstack run), the simulator (speed 1: an instance runs ComfyUI ~7 s after the rent)
and a worker with the demo timings (WARM_POOL_POLL_ACTIVE_INTERVAL_MS=2000). On Vast.ai the
instance boot (image pull, minutes) replaces the simulator's 7 s; the rest is what this adds.

    .venv/bin/python bench/time_to_ready.py [--runs 3] [--temporal-port 7233] [--ui-port 8233]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness import ROOT, print_table, summary

from warmpool.devserver import TEMPORAL, dev_server_command

READY_LINE = re.compile(r"first READY after ([\d.]+)s")
SQLITE = ROOT / ".warmpool" / "temporal.sqlite"


@dataclass
class Run:
    to_ready: float | None
    self_reported: float | None
    total: float
    code: int


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_free(ports: list[int], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while any(listening(p) for p in ports):
        if time.monotonic() > deadline:
            raise SystemExit(f"ports {ports} still in use: pass --temporal-port / --ui-port")
        time.sleep(0.5)


def sqlite_users() -> list[int]:
    """Processes holding devstack's SQLite file: two dev servers on it corrupt each other."""
    users = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(link.resolve() == SQLITE for link in fd_dir.iterdir()):
                users.append(int(fd_dir.parent.name))
        except OSError:
            continue
    return users


def terminate_leftovers(pool: str, port: int) -> None:
    """A failed run leaves its pool running in the SQLite file, where every later devstack
    would resume it: start the dev server on the file once more and terminate the pool."""
    server = subprocess.Popen(
        dev_server_command(port, SQLITE, log_level="error"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    mine = f"(WorkflowId = 'warmpool/{pool}' OR WorkflowId STARTS_WITH 'warmpool/{pool}/')"
    try:
        deadline = time.monotonic() + 30
        while not listening(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        subprocess.run(
            [
                str(TEMPORAL), "workflow", "terminate", "--address", f"127.0.0.1:{port}",
                "--query", f"{mine} AND ExecutionStatus='Running'",
                "--reason", "time_to_ready.py: failed run", "--yes",
            ],
            stdout=subprocess.DEVNULL,
            check=False,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)


def one_run(command: list[str]) -> Run:
    started = time.monotonic()
    to_ready = self_reported = None
    tail: list[str] = []
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = [*tail[-20:], line.rstrip()]
            if (match := READY_LINE.search(line)) and to_ready is None:
                to_ready = time.monotonic() - started
                self_reported = float(match.group(1))
        code = proc.wait()
    if to_ready is None or code != 0:
        print(f"run failed (exit {code}); last lines:\n" + "\n".join(tail), file=sys.stderr)
    return Run(to_ready, self_reported, time.monotonic() - started, code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--temporal-port", type=int, default=7233)
    parser.add_argument("--ui-port", type=int, default=8233)
    parser.add_argument("--run-sh", action="store_true", help="run ./scripts/run.sh --once")
    args = parser.parse_args()
    ports = [args.temporal_port, args.ui_port]
    if any(listening(p) for p in ports):
        raise SystemExit(f"something listens on {ports}: stop it or pass other ports")
    launcher = ["./scripts/run.sh"] if args.run_sh else [sys.executable, "scripts/devstack.py"]
    runs = []
    for i in range(args.runs):
        wait_free(ports)
        if users := sqlite_users():
            raise SystemExit(f"processes {users} hold {SQLITE} (a devstack running?): wait")
        pool = f"ttr-{os.getpid() % 100_000}-{i}"
        flags = ["--temporal-port", str(args.temporal_port), "--ui-port", str(args.ui_port)]
        runs.append(one_run([*launcher, "--once", "--pool", pool, *flags]))
        if runs[-1].code != 0:
            wait_free(ports)
            if users := sqlite_users():
                print(f"pool {pool} may be left running in {SQLITE}", file=sys.stderr)
                raise SystemExit(f"processes {users} hold {SQLITE}: cannot clean up")
            terminate_leftovers(pool, args.temporal_port)
    print(f"\nREADME run command ({' '.join(launcher[-1:])} --once) to the first READY slot")
    print_table(
        ["run", "to READY s", "devstack's own s", "whole run s", "exit"],
        [
            [
                i + 1,
                f"{r.to_ready:.1f}" if r.to_ready is not None else "-",
                f"{r.self_reported:.1f}" if r.self_reported is not None else "-",
                f"{r.total:.1f}",
                r.code,
            ]
            for i, r in enumerate(runs)
        ],
    )
    ready = [r.to_ready for r in runs if r.to_ready is not None]
    print(f"to READY: {summary(ready)} s over {len(ready)} successful run(s)")


if __name__ == "__main__":
    main()
