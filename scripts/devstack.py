"""What does `./scripts/run.sh` start? The whole stack on one machine, in the right order.

Temporal dev server (SQLite file, Web UI, our search attributes) -> simulator process ->
worker process (Prometheus metrics on a free port) -> gateway process (127.0.0.1:3000) -> the
pool (`WARMPOOL_POOL`, default `default`; min_ready 2): started, or reused when it already runs
in the SQLite file (resumed if it was draining, started again if it finished), waited on until
READY, then a lease acquired through the gateway, ComfyUI asked through its proxy, and the
lease released. It prints every address and key and the next commands to try.

Running it again (after Ctrl-C, or after a crash that left processes behind) reuses the pool.
SIGINT or SIGTERM at any moment, start-up included, stops every process it started (each in a
process group of its own, gateway first; the children also get SIGTERM if this process dies).
Every process logs to `<state>/logs/`. `--once` drains the pool and exits after the demo.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from warmpool.devserver import dev_server_command  # noqa: E402

DEMO_ENV = {
    # Fast demo timings (the simulator boots an instance in ~7 s); override in .env.
    "WARM_POOL_POLL_ACTIVE_INTERVAL_MS": "2000",
    "WARMPOOL_READINESS_INITIAL_S": "1",
    "WARMPOOL_RETRY_BACKOFF_INITIAL_S": "2",
}
DEMO_ADMIN_KEY = "devstack-admin-key"
"""The gateway's admin key when ADMIN_API_KEY is unset: for this local demo only."""
STOP_GRACE_S = 12.0
"""How long a process gets after SIGTERM before its whole process group is killed."""
OURS = ("temporal", "vastsim", "worker.py", "warmpool.gateway")
"""What a leftover process of an earlier run has in its command line."""


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived: unwind and stop everything (not an `Exception`: nothing on the
    way may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block ends, so a process is never started unrecorded."""
    held = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the run command dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, timeout: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening(port):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        time.sleep(0.2)
    raise RuntimeError(f"{what}: nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


class Stack:
    """The processes this run started, recorded in `<state>/run.json` for the next run."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.logs = state / "logs"
        self.record = state / "run.json"
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(
        self, name: str, args: list[str], env: dict[str, str], *, stdout: int | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        with signals_held():
            proc = subprocess.Popen(
                args,
                stdout=log if stdout is None else stdout,
                stderr=log,
                env=env,
                cwd=ROOT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            self.procs.append((name, proc))
            self.save()
        log.close()
        return proc

    def save(self) -> None:
        pids = {name: proc.pid for name, proc in self.procs}
        self.record.write_text(json.dumps({"run_command": os.getpid(), "groups": pids}))

    def stop(self) -> None:
        """SIGTERM to each process group, the gateway and worker first (the worker drains),
        then the simulator and Temporal; SIGKILL to a group still there after STOP_GRACE_S."""
        first = {"gateway", "worker"}
        last = [p for n, p in self.procs if n not in first]  # SQLite survives a SIGKILL
        for wave in ([p for n, p in self.procs if n in first], last):
            for proc in wave:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + (STOP_GRACE_S if wave is not last else 5.0)
            for proc in wave:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # stragglers of its group too
                proc.wait()
        self.procs.clear()
        self.record.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def clean_up_after_a_crash(record: Path) -> None:
    """A run command killed with SIGKILL may have left its processes: stop them. Another run
    command still alive is an error (two stacks cannot share the ports or the SQLite file)."""
    if not record.exists():
        return
    try:
        earlier = json.loads(record.read_text())
    except (OSError, ValueError):
        record.unlink(missing_ok=True)
        return
    owner = int(earlier.get("run_command", 0))
    if owner and owner != os.getpid() and _alive(owner) and "devstack" in _cmdline(owner):
        raise RuntimeError(
            f"the run command already runs (pid {owner}): use that stack, or stop it first "
            f"(kill {owner})"
        )
    for name, pgid in earlier.get("groups", {}).items():
        if _alive(pgid) and any(mark in _cmdline(pgid) for mark in OURS):
            print(f"stopping {name} (pid {pgid}) left by an earlier run")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            while _alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.2)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
    record.unlink(missing_ok=True)


def cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """The operator CLI, as a newcomer would run it."""
    return subprocess.run(
        [sys.executable, "starter.py", *argv],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def cli_ok(env: dict[str, str], *argv: str) -> str:
    done = cli(env, *argv)
    if done.returncode != 0:
        raise RuntimeError(f"`warmpool {' '.join(argv)}`: {done.stderr.strip()}")
    return done.stdout


def ensure_pool(env: dict[str, str], pool: str, min_ready: int, max_slots: int) -> str:
    """Start the pool, or reuse it: resumed if it was draining, started again if finished."""
    done = cli(env, "--json", "pool", "status", "--pool", pool)
    status = json.loads(done.stdout) if done.returncode == 0 else None
    if status is None or status.get("finished"):
        cli_ok(
            env,
            "pool",
            "start",
            "--pool",
            pool,
            "--min-ready",
            str(min_ready),
            "--max-slots",
            str(max_slots),
        )
        again = " again (it had finished)" if status else ""
        return f"started pool {pool}{again}: min_ready {min_ready}, max_slots {max_slots}"
    config = status["config"]
    note = ""
    if status.get("draining") or status.get("safe_mode"):
        cli_ok(env, "pool", "resume", "--pool", pool)
        note = ", resumed (it was draining or in safe mode)"
    # This run's simulator is new: the instances the pool's slots hold went with the previous
    # one. Retire those slots (each confirms its instance gone) so the pool rents afresh now
    # rather than when each slot's keepalive notices.
    stale = [str(s["index"]) for s in status["slots"] if s.get("instance_id")]
    for index in stale:
        cli_ok(env, "slot", "retire", "--pool", pool, "--index", index)
    if stale:
        note += f", {len(stale)} slot(s) of the previous simulator replaced"
    return (
        f"reusing pool {pool}, already running{note}: min_ready {config['min_ready']}, "
        f"max_slots {config['max_slots']}"
    )


def demo_lease(gateway: httpx.Client, gateway_url: str, pool: str, timeout: float) -> None:
    """Lease, ask ComfyUI through the gateway, release. A reused pool may still show a slot
    READY on an instance of the previous run's simulator (gone with it) until the slot's
    keepalive notices: then the lease is released and the next READY slot is tried."""
    deadline = time.monotonic() + timeout
    told = False
    while True:
        grant = gateway.post(
            "/api/leases",
            json={"holder": "demo-user", "duration_s": 600, "pool": pool, "wait_s": 60},
        )
        grant.raise_for_status()
        lease = grant.json()
        stats = gateway.get(f"{lease['proxy_path']}system_stats")
        ended = gateway.post(f"/api/leases/{lease['lease_id']}/release").json()
        if stats.status_code == 200:
            print(f"leased {lease['lease_id']} -> {gateway_url}{lease['proxy_path']}")
            version = stats.json().get("system", {}).get("comfyui_version", "?")
            print(f"  ComfyUI {version} answers through the gateway")
            print(f"released {ended['lease_id']} ({ended['end_reason']})", flush=True)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"ComfyUI did not answer through the gateway: {stats.text[:200]}")
        if not told:
            print(
                "a slot still shows an instance of the previous run; waiting for the pool to "
                "replace it",
                flush=True,
            )
            told = True
        time.sleep(2)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--once", action="store_true", help="drain the pool and exit after the demo lease"
    )
    parser.add_argument(
        "--pool",
        default=os.environ.get("WARMPOOL_POOL", "default"),
        help="the pool (default: $WARMPOOL_POOL, else 'default')",
    )
    parser.add_argument("--min-ready", type=int, default=2, help="for a new pool (default 2)")
    parser.add_argument("--max-slots", type=int, default=4, help="for a new pool (default 4)")
    parser.add_argument("--temporal-port", type=int, default=7233, help="default 7233")
    parser.add_argument("--ui-port", type=int, default=8233, help="default 8233")
    parser.add_argument("--gateway-port", type=int, default=3000, help="default 3000")
    parser.add_argument(
        "--sim-speed", type=float, default=1.0, help="simulator speed-up (default 1)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=ROOT / ".warmpool",
        help="SQLite file, logs and run record (default .warmpool)",
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=300, help="seconds to READY (default 300)"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stack = Stack(args.state_dir.resolve())
    stack.logs.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, stack)
    except Stopped as stop:
        print(f"devstack: {stop}: stopping everything", file=sys.stderr)
        return 128 + stop.signum
    except Exception as exc:  # noqa: BLE001 - one line and the logs, never a traceback
        print(f"devstack: {exc or type(exc).__name__}; logs in {stack.logs}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()


def run(args: argparse.Namespace, stack: Stack) -> int:
    clean_up_after_a_crash(stack.record)
    for port, option in (
        (args.temporal_port, "--temporal-port"),
        (args.ui_port, "--ui-port"),
        (args.gateway_port, "--gateway-port"),
    ):
        if listening(port):
            raise RuntimeError(f"port {port} is in use by another program: pick {option}")
    env = {**DEMO_ENV, **os.environ}
    env["TEMPORAL_ADDRESS"] = f"127.0.0.1:{args.temporal_port}"
    env["WARMPOOL_POOL"] = args.pool
    started = time.monotonic()
    db = stack.state / "temporal.sqlite"
    temporal = stack.spawn(
        "temporal", dev_server_command(args.temporal_port, db, ui_port=args.ui_port), env
    )
    wait_port(args.temporal_port, 60, "the Temporal dev server", temporal)

    sim_args = [sys.executable, "-m", "vastsim", "--port", "0", "--speed", str(args.sim_speed)]
    sim = stack.spawn("vastsim", sim_args, env, stdout=subprocess.PIPE)
    assert sim.stdout is not None
    line = sim.stdout.readline()
    if not line:
        raise RuntimeError("the simulator exited before it listened")
    urls = json.loads(line)
    env.update(
        {
            "VASTAI_BASE_URL": urls["base_url"],
            "VASTAI_API_KEY": urls["api_key"],
            "HF_ENDPOINT": urls["hf_base_url"],
            "CIVITAI_BASE_URL": urls["civitai_base_url"],
            "WARMPOOL_INSTANCE_SECRET": env.get("WARMPOOL_INSTANCE_SECRET", "devstack-secret"),
        }
    )
    env.setdefault("WARMPOOL_WORKER_METRICS_ADDR", f"127.0.0.1:{free_port()}")
    env.setdefault("ADMIN_API_KEY", DEMO_ADMIN_KEY)
    env.update(
        {
            "WARMPOOL_GATEWAY_PORT": str(args.gateway_port),
            "WARMPOOL_GATEWAY_POOLS": args.pool,
            "WARMPOOL_GATEWAY_WORKER_METRICS": f"http://{env['WARMPOOL_WORKER_METRICS_ADDR']}/metrics",
        }
    )
    stack.spawn("worker", [sys.executable, "worker.py"], env)
    gateway_proc = stack.spawn("gateway", [sys.executable, "-m", "warmpool.gateway"], env)
    wait_port(args.gateway_port, 60, "the gateway", gateway_proc)
    gateway_url = f"http://127.0.0.1:{args.gateway_port}"
    admin_key = env["ADMIN_API_KEY"]
    shown_key = admin_key if admin_key == DEMO_ADMIN_KEY else "$ADMIN_API_KEY (as you set it)"
    print(f"Temporal        : {env['TEMPORAL_ADDRESS']} (Web UI http://127.0.0.1:{args.ui_port})")
    print(f"Gateway         : {gateway_url} (API docs {gateway_url}/docs, {gateway_url}/metrics)")
    print(f"  admin key     : {shown_key} (header X-Admin-Key)")
    print(f"Simulator       : {urls['base_url']} (Vast.ai API key {urls['api_key']})")
    print(f"  control URL   : {urls['control_url']} (faults, instances)")
    print(f"Logs            : {stack.logs}", flush=True)

    print(ensure_pool(env, args.pool, args.min_ready, args.max_slots), flush=True)
    pool = ["--pool", args.pool]
    timeout = str(args.ready_timeout)
    cli_ok(env, "pool", "wait", *pool, "--ready", "1", "--timeout", timeout)
    print(f"first READY after {time.monotonic() - started:.1f}s", flush=True)
    print(cli_ok(env, "pool", "status", *pool), flush=True)
    with httpx.Client(base_url=gateway_url, timeout=30) as gateway:
        demo_lease(gateway, gateway_url, args.pool, args.ready_timeout)
    if args.once:
        print(cli_ok(env, "pool", "drain", *pool, "--wait"), end="", flush=True)
        return 0
    exports = []
    if args.temporal_port != 7233:
        exports.append(f"export TEMPORAL_ADDRESS={env['TEMPORAL_ADDRESS']}")
    if args.pool != "default":
        exports.append(f"export WARMPOOL_POOL={args.pool}")
    print("\nNext, in another shell (`source .venv/bin/activate` puts `warmpool` on PATH):")
    for export in exports:
        print(f"  {export}")
    print("  warmpool pool status")
    print("  warmpool lease acquire --holder you --duration 600")
    key = admin_key if admin_key == DEMO_ADMIN_KEY else "$ADMIN_API_KEY"
    print(f"  curl -s -H 'X-Admin-Key: {key}' {gateway_url}/api/proxy/admin/warm-pool/status")
    print("running; Ctrl-C to stop (the pool keeps its state in the SQLite file)", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
