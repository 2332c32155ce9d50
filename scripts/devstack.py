"""What does `./scripts/run.sh` start? The whole stack on one machine, in the right order.

Temporal dev server (SQLite file, Web UI, our search attributes) -> simulator process ->
worker process (Prometheus metrics on a free port) -> gateway process (127.0.0.1:3000) -> a
pool (min_ready 2) started through starter.py, waited on until READY, then a lease acquired
through the gateway, ComfyUI asked through its proxy, and the lease released. Every process
logs to .warmpool/logs/. Ctrl-C (or --once after READY) stops them all, gateway first.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from warmpool.devserver import dev_server_command  # noqa: E402

STATE = ROOT / ".warmpool"
LOGS = STATE / "logs"
DEMO_ENV = {
    # Fast demo timings (the simulator boots an instance in ~7 s); override in .env.
    "WARM_POOL_POLL_ACTIVE_INTERVAL_MS": "2000",
    "WARMPOOL_READINESS_INITIAL_S": "1",
    "WARMPOOL_RETRY_BACKOFF_INITIAL_S": "2",
}


DEMO_ADMIN_KEY = "devstack-admin-key"
"""The gateway's admin key when ADMIN_API_KEY is unset: for this local demo only."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"devstack: nothing listens on {host}:{port} after {timeout:.0f}s")


def spawn(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = (LOGS / f"{name}.log").open("ab")
    return subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
    )


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--once", action="store_true", help="exit once the slot is READY")
    parser.add_argument("--pool", default="demo")
    parser.add_argument("--temporal-port", type=int, default=7233)
    parser.add_argument("--ui-port", type=int, default=8233)
    parser.add_argument("--gateway-port", type=int, default=3000)
    args = parser.parse_args()
    LOGS.mkdir(parents=True, exist_ok=True)
    env = {**DEMO_ENV, **os.environ}
    env["TEMPORAL_ADDRESS"] = f"127.0.0.1:{args.temporal_port}"
    procs: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    try:
        procs.append(
            spawn(
                "temporal",
                dev_server_command(
                    args.temporal_port, STATE / "temporal.sqlite", ui_port=args.ui_port
                ),
                env,
            )
        )
        wait_port("127.0.0.1", args.temporal_port, 60)

        sim = subprocess.Popen(
            [sys.executable, "-m", "vastsim", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=(LOGS / "vastsim.log").open("ab"),
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        procs.append(sim)
        assert sim.stdout is not None
        urls = json.loads(sim.stdout.readline())
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
        procs.append(spawn("worker", [sys.executable, "worker.py"], env))
        procs.append(spawn("gateway", [sys.executable, "-m", "warmpool.gateway"], env))
        wait_port("127.0.0.1", args.gateway_port, 60)
        gateway_url = f"http://127.0.0.1:{args.gateway_port}"
        gateway = httpx.Client(base_url=gateway_url, timeout=30)
        print(f"Temporal Web UI : http://127.0.0.1:{args.ui_port}")
        print(f"Simulator       : {urls['base_url']} (control {urls['control_url']})")
        print(f"Gateway         : {gateway_url} (API {gateway_url}/docs, {gateway_url}/metrics)")
        print(f"Logs            : {LOGS}")

        def cli(*argv: str) -> str:
            done = subprocess.run(
                [sys.executable, "starter.py", *argv],
                env=env,
                cwd=ROOT,
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            )
            return done.stdout

        pool = ["--pool", args.pool]
        print(cli("pool", "start", *pool, "--min-ready", "2", "--max-slots", "4"), end="")
        cli("pool", "wait", *pool, "--ready", "1", "--timeout", "300")
        print(f"first READY after {time.monotonic() - started:.1f}s")
        print(cli("pool", "wait", *pool, "--ready", "2", "--timeout", "300"))
        grant = gateway.post("/api/leases", json={"holder": "demo-user", "duration_s": 600})
        grant.raise_for_status()
        lease = grant.json()
        print(f"leased {lease['lease_id']} -> {gateway_url}{lease['proxy_path']}")
        stats = gateway.get(f"{lease['proxy_path']}system_stats").json()
        print(f"  ComfyUI {stats['system']['comfyui_version']} answers through the gateway")
        ended = gateway.post(f"/api/leases/{lease['lease_id']}/release").json()
        print(f"released {ended['lease_id']} ({ended['end_reason']})")
        if args.once:
            print(cli("pool", "drain", *pool, "--wait"), end="")
            return 0
        print("running; Ctrl-C to stop (pools keep their state in the SQLite file)")
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    except (subprocess.CalledProcessError, httpx.HTTPError) as exc:
        print(f"devstack: {exc}; see {LOGS}", file=sys.stderr)
        return 1
    finally:
        stop(procs)


if __name__ == "__main__":
    sys.exit(main())
