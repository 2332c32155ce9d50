"""How long from the README run command to the first READY slot, on the simulator?

Measures: runs `scripts/devstack.py --once` (what `./scripts/run.sh --once` runs after its
bootstrap step) --runs times as a subprocess, each with a fresh pool name, and prints the wall
time from the launch to its "first READY after N s" line (and devstack's own N, which starts
after Python has imported it), plus the whole run (READY, then retire and stop every process).
`--run-sh` runs `./scripts/run.sh --once` itself; its bootstrap re-installs the project into
.venv when pyproject.toml changed since the last install.

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

from harness import ROOT, print_table, summary

READY_LINE = re.compile(r"first READY after ([\d.]+)s")


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
        pool = f"ttr-{os.getpid() % 100_000}-{i}"
        flags = ["--temporal-port", str(args.temporal_port), "--ui-port", str(args.ui_port)]
        runs.append(one_run([*launcher, "--once", "--pool", pool, *flags]))
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
