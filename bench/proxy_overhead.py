"""What does the gateway's ComfyUI proxy cost? Latency and throughput through it vs direct.

Measures, side by side in one run, `GET /system_stats` and `POST /prompt` (the text-only
graph of comfyui-api.md, queued and answered at once) against one leased simulator instance:
- directly, at its validated connection URL with the instance's Bearer token (what a client
  that knew the token would do), and
- through the gateway, `/comfy/<lease_id>/...`, which resolves the lease (cached for
  `WARMPOOL_GATEWAY_LEASE_CACHE_S`, 1 s), adds the token and streams both ways.
Latency: `--requests` sequential requests per endpoint, direct and gateway alternating request
by request, p50/p99/mean. Throughput: `--concurrency` clients for `--seconds`, in alternating
blocks (direct, gateway, direct, gateway) so drift of the shared machine hits both alike.

Processes: the simulator in a child process, the Temporal dev server, the gateway as its own
command (`python -m warmpool.gateway`, access log off: WARMPOOL_LOG_LEVEL=WARNING), and this
process (worker with one READY slot, and the load generator: httpx, keep-alive). Gateway CPU
is read from /proc. On 2 shared cores the load generator and the gateway compete for CPU, so
throughput is a floor for both paths; the difference between them is the figure.

    .venv/bin/python bench/proxy_overhead.py [--requests 1000] [--concurrency 16] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
from harness import (
    FAST_SIM,
    INSTANCE_SECRET,
    LOOSE_OFFERS,
    ROOT,
    SimProcess,
    cpu_seconds,
    print_table,
    run,
    stack,
)

from warmpool.clients import pool as pool_client
from warmpool.clients import slot as slot_client
from warmpool.instance_token import derive_instance_token
from warmpool.labels import pool_workflow_id, slot_label
from warmpool.models import PoolConfig, PoolInput, PoolStatus
from warmpool.names import Pool

ADMIN_KEY = "bench-admin-key"
GRAPH = {
    "1": {"class_type": "PrimitiveString", "inputs": {"value": "hello warm pool"}},
    "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
}

Call = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


@dataclass
class Target:
    name: str
    client: httpx.AsyncClient
    latencies: dict[str, list[float]] = field(default_factory=dict)
    completed: dict[str, int] = field(default_factory=dict)
    elapsed: dict[str, float] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def calls(prefix: str) -> dict[str, Call]:
    return {
        "GET /system_stats": lambda c: c.get(f"{prefix}/system_stats"),
        "POST /prompt": lambda c: c.post(f"{prefix}/prompt", json={"prompt": GRAPH}),
    }


async def timed(client: httpx.AsyncClient, call: Call) -> float:
    started = time.perf_counter()
    response = await call(client)
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url}: HTTP {response.status_code} {response.text}")
    return time.perf_counter() - started


async def latency(targets: list[tuple[Target, str]], requests: int) -> None:
    for endpoint in calls(""):
        for target, _ in targets:
            target.latencies[endpoint] = []
        for _ in range(requests):
            for target, prefix in targets:
                seconds = await timed(target.client, calls(prefix)[endpoint])
                target.latencies[endpoint].append(seconds)


async def blast(client: httpx.AsyncClient, call: Call, concurrency: int, seconds: float) -> int:
    """Requests completed by `concurrency` clients in a loop for `seconds`."""
    deadline = time.perf_counter() + seconds

    async def one_client() -> int:
        done = 0
        while time.perf_counter() < deadline:
            await timed(client, call)
            done += 1
        return done

    return sum(await asyncio.gather(*(one_client() for _ in range(concurrency))))


async def throughput(
    targets: list[tuple[Target, str]], concurrency: int, seconds: float, rounds: int = 2
) -> None:
    for endpoint in calls(""):
        for _ in range(rounds):
            for target, prefix in targets:
                started = time.perf_counter()
                done = await blast(target.client, calls(prefix)[endpoint], concurrency, seconds)
                target.completed[endpoint] = target.completed.get(endpoint, 0) + done
                target.elapsed[endpoint] = (
                    target.elapsed.get(endpoint, 0.0) + time.perf_counter() - started
                )


def ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.2f}"


async def start_gateway(env: dict[str, str], port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "warmpool.gateway", env=env, cwd=ROOT
    )
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            try:
                await http.get(f"http://127.0.0.1:{port}/healthz")
                return proc
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    raise TimeoutError("the gateway did not start")


async def main(args: argparse.Namespace) -> None:
    async with (
        SimProcess(FAST_SIM) as sim,
        stack(sim, {**LOOSE_OFFERS, "readiness_initial_s": 0.5}) as bench,
    ):
        pool = "proxybench"
        handle = await bench.client.start_workflow(
            Pool.WORKFLOW,
            PoolInput(
                pool=pool,
                config=PoolConfig(min_ready=1, max_slots=1, slot=bench.settings.slot_config()),
            ),
            id=pool_workflow_id(pool),
            task_queue=bench.queue,
            result_type=PoolStatus,
        )
        for _ in range(600):
            if (await pool_client.query_status(handle)).idle_ready >= 1:
                break
            await asyncio.sleep(0.1)
        port = free_port()
        gateway = await start_gateway(
            {
                **os.environ,
                "TEMPORAL_ADDRESS": bench.client.service_client.config.target_host,
                "WARMPOOL_TASK_QUEUE": bench.queue,
                "WARMPOOL_GATEWAY_PORT": str(port),
                "WARMPOOL_GATEWAY_POOLS": pool,
                "WARMPOOL_INSTANCE_SECRET": INSTANCE_SECRET,
                "VASTAI_BASE_URL": sim.base_url,
                "ADMIN_API_KEY": ADMIN_KEY,
                "WARMPOOL_LOG_LEVEL": "WARNING",
            },
            port,
        )
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=64)
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as via:
                grant = await via.post("/api/leases", json={"holder": "bench", "duration_s": 3600})
                grant.raise_for_status()
                lease = grant.json()
                slot = await slot_client.status(bench.client, pool, lease["slot"])
                token = derive_instance_token(
                    INSTANCE_SECRET.encode(), slot_label(pool, lease["slot"], slot.attempt)
                )
                async with httpx.AsyncClient(
                    base_url=lease["connection_url"],
                    headers={"Authorization": f"Bearer {token}"},
                    limits=limits,
                    timeout=30,
                ) as direct_client:
                    direct, through = Target("direct", direct_client), Target("gateway", via)
                    targets = [(direct, ""), (through, f"/comfy/{lease['lease_id']}")]
                    for target, prefix in targets:  # warm connections and the lease cache
                        for call in calls(prefix).values():
                            await timed(target.client, call)
                    cpu_before = cpu_seconds(gateway.pid)
                    await latency(targets, args.requests)
                    await throughput(targets, args.concurrency, args.seconds)
                    gateway_cpu = cpu_seconds(gateway.pid) - cpu_before
        finally:
            gateway.terminate()
            await gateway.wait()
        rows = []
        for endpoint in calls(""):
            for target in (direct, through):
                values = target.latencies[endpoint]
                rate = target.completed[endpoint] / target.elapsed[endpoint]
                rows.append(
                    (
                        endpoint,
                        target.name,
                        ms(values, 0.5),
                        ms(values, 0.99),
                        f"{statistics.fmean(values) * 1000:.2f}",
                        f"{rate:.0f}",
                    )
                )
        print(
            f"\n{args.requests} sequential requests per endpoint and path (alternating); "
            f"throughput: {args.concurrency} concurrent clients, 2 x {args.seconds:g} s per path"
        )
        print_table(("endpoint", "path", "p50 ms", "p99 ms", "mean ms", "req/s"), rows)
        proxied = sum(len(through.latencies[e]) + through.completed[e] for e in calls(""))
        print(f"gateway CPU: {gateway_cpu * 1000 / proxied:.2f} ms per proxied request")
        await pool_client.release(bench.client, pool, lease["lease_id"])
        await handle.signal(Pool.DRAIN)
        await handle.result()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    run(main(parser.parse_args()))
