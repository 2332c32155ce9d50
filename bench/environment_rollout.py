"""What does a studio's environment cost a pool: time to READY against model size, and a rollout?

Measures, on the simulator with real workers and activities (`harness.stack`):

(a) Time to READY of a pool of 4 (min_ready = max_slots = 4) as a function of the declared
    model size: 0, 2, 8 and 32 GB in total (three required models, 50/30/20 % of it, behind two
    custom nodes), plus a pool with no environment for reference. The simulator downloads at
    its default bandwidth (`SimConfig.download_bytes_per_s`, 100 MB/s per host), installs a node
    in `node_install_s` (5 s) and starts ComfyUI only once the required part is there (as the
    `/.provisioning` marker does on the `vastai/comfyui` image). Printed per size: the pool's
    time from its start to 4 idle READY, the slots' own time to READY (from their rent), the
    ratio to the 0 GB row, the rentals and the failures. A fresh pool per row (its exclusions
    start empty), drained before the next.
(b) A rollout: a pool of 4 (min_ready 3, buffer 3, max_slots 4: 3 idle + 1 leased) on v1 (2 nodes
    + 2 GB), `set_environment` to v2 (v1 + a 1 GB model), the lease released halfway (once 2 of
    the 3 idle slots serve v2). Printed: set_environment to the first v2 READY, to the release, to
    all slots on v2; the fewest idle READY seen (the pool status every 50 ms); the rentals.
    Once with `max_surge` 1 (the default) and once with 2.

Time runs --scale times faster (default 10): the simulator's clock (`SimConfig.speed`) and the
worker's intervals and deadlines (`harness.scaled_settings`, the readiness timeout too:
300 s -> 30 s), and the slot's `environment_timeout` / `environment_poll` (45 min / 10 s). Figures
are real seconds, and production seconds (x scale) where it makes sense; the fixed costs of the
stack (RPCs, workflow tasks) do not scale, so small figures are inflated by them x scale.

With --readiness-timeout S (production seconds), the slots wait that long for ComfyUI to answer
instead of the shipped 300 s (see the README of bench/ for why it matters here).

    .venv/bin/python bench/environment_rollout.py [--scale 10] [--sizes 0,2,8,32]
        [--readiness-timeout 300] [--skip-rollout] [--skip-sizes]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from harness import LOOSE_OFFERS, Bench, print_table, run, scaled_settings, stack

from vastsim import SimConfig, Simulator
from vastsim.records import InstanceInfo
from warmpool.clients import pool as pool_client
from warmpool.clients import slot as slot_client
from warmpool.environment import Environment, ModelSpec, NodeSpec
from warmpool.labels import pool_label_prefix, pool_workflow_id
from warmpool.models import (
    LeaseRequest,
    PoolConfig,
    PoolInput,
    PoolStatus,
    ScalingPolicy,
    SlotState,
)
from warmpool.names import Pool as PoolNames

GB = 1_000_000_000
SLOTS = 4
NODES = [
    NodeSpec(
        name="ComfyUI-Studio",
        git="https://github.com/studio/ComfyUI-Studio",
        commit="abc1234",
        classes=["StudioLoader", "StudioMix"],
    ),
    NodeSpec(
        name="ComfyUI-Extra",
        git="https://github.com/studio/ComfyUI-Extra",
        commit="def5678",
        classes=["ExtraNode"],
    ),
]
SHARES = (("checkpoints", 0.5), ("loras", 0.3), ("vae", 0.2))


def studio(total_gb: float, *, extra_gb: float = 0.0) -> Environment:
    """Two nodes and three required models of `total_gb` in all (on a host that needs no
    token), plus one more model of `extra_gb` when given (a v2)."""
    models = [
        ModelSpec(
            url=f"https://files.example.com/{folder}-{total_gb:g}gb.safetensors",
            folder=folder,
            file=f"{folder}-{total_gb:g}gb.safetensors",
            size=int(total_gb * share * GB),
        )
        for folder, share in SHARES
        if total_gb > 0
    ]
    if extra_gb > 0:
        models.append(
            ModelSpec(
                url="https://files.example.com/upscaler.safetensors",
                folder="upscale_models",
                file="upscaler.safetensors",
                size=int(extra_gb * GB),
            )
        )
    return Environment(nodes=NODES, models=models)


@dataclass
class Context:
    sim: Simulator
    bench: Bench
    scale: float
    sim_config: SimConfig

    def slot_overrides(self) -> dict[str, object]:
        return {
            "environment_timeout": timedelta(minutes=45) / self.scale,
            "environment_poll": timedelta(seconds=10) / self.scale,
        }


@dataclass
class PoolRun:
    name: str
    handle: Any
    started: float = field(default_factory=time.monotonic)

    async def status(self) -> PoolStatus:
        return await pool_client.query_status(self.handle)


async def start_pool(ctx: Context, config: PoolConfig) -> PoolRun:
    name = f"env-{uuid.uuid4().hex[:6]}"
    slot = ctx.bench.settings.slot_config().merged(ctx.slot_overrides())
    handle = await ctx.bench.client.start_workflow(
        PoolNames.WORKFLOW,
        PoolInput(pool=name, config=config.model_copy(update={"slot": slot})),
        id=pool_workflow_id(name),
        task_queue=ctx.bench.queue,
        result_type=PoolStatus,
    )
    return PoolRun(name, handle)


async def drain(ctx: Context, pool: PoolRun) -> None:
    await pool.handle.signal(PoolNames.DRAIN)
    status = await pool.status()
    for lease in status.active_leases:
        await pool_client.release(ctx.bench.client, pool.name, lease.lease_id)
    await asyncio.wait_for(pool.handle.result(), 120)


def rentals(ctx: Context, pool: PoolRun) -> list[InstanceInfo]:
    prefix = pool_label_prefix(pool.name)
    return [i for i in ctx.sim.instances() if (i.label or "").startswith(prefix)]


async def wait_pool(
    pool: PoolRun,
    done: Callable[[PoolStatus], bool],
    *,
    within: float,
    seen: Callable[[PoolStatus], None] = lambda s: None,
) -> tuple[PoolStatus, bool]:
    """Poll the pool's status every 50 ms until `done` (True) or `within` s or safe mode (False)."""
    deadline = time.monotonic() + within
    while True:
        status = await pool.status()
        seen(status)
        if done(status):
            return status, True
        if status.safe_mode or time.monotonic() > deadline:
            return status, False
        await asyncio.sleep(0.05)


# ---- (a) time to READY against model size -----------------------------------------------------


@dataclass
class SizeRow:
    label: str
    total_gb: float | None
    all_ready_s: float | None
    slot_ready_s: list[float]
    rentals: int
    failures: dict[str, int]
    safe_reason: str | None


async def size_row(ctx: Context, total_gb: float | None) -> SizeRow:
    env = None if total_gb is None else studio(total_gb)
    config = PoolConfig(min_ready=SLOTS, max_slots=SLOTS, environment=env)
    pool = await start_pool(ctx, config)
    download_s = 0.0 if total_gb is None else total_gb * GB / ctx.sim_config.download_bytes_per_s
    within = (download_s + 120) / ctx.scale + 60
    status, ok = await wait_pool(
        pool,
        lambda s: s.idle_ready == SLOTS and all(v.state == SlotState.READY for v in s.slots),
        within=within,
    )
    all_ready = time.monotonic() - pool.started if ok else None
    slot_ready: list[float] = []
    for view in status.slots:
        slot = await slot_client.status(ctx.bench.client, pool.name, view.index)
        if slot.state == SlotState.READY and slot.time_to_ready_s is not None:
            slot_ready.append(slot.time_to_ready_s)
    rented = len(rentals(ctx, pool))
    await drain(ctx, pool)
    return SizeRow(
        label="no environment" if total_gb is None else f"{total_gb:g} GB",
        total_gb=total_gb,
        all_ready_s=all_ready,
        slot_ready_s=slot_ready,
        rentals=rented,
        failures=dict(status.stats.failures_by_reason),
        safe_reason=status.safe_reason if status.safe_mode else None,
    )


def print_sizes(ctx: Context, rows: list[SizeRow]) -> None:
    scale = ctx.scale
    zero = next((r for r in rows if r.total_gb == 0), None)
    base_pool = zero.all_ready_s if zero else None
    base_slot = statistics.median(zero.slot_ready_s) if zero and zero.slot_ready_s else None
    readiness = ctx.bench.settings.readiness_timeout_s

    def ratio(value: float | None, base: float | None) -> str:
        return "-" if value is None or not base else f"{value / base:.2f}"

    print(
        f"\n(a) time to READY of a pool of {SLOTS} against declared model size; scale {scale:g}, "
        f"{ctx.sim_config.download_bytes_per_s / 1e6:g} MB/s per host, nodes "
        f"{ctx.sim_config.node_install_s:g} s each, readiness timeout {readiness:g} s real "
        f"({readiness * scale:g} s production). Production seconds (real x {scale:g}); the pool "
        "from its start (4 rents paced), a slot from its rent"
    )
    print_table(
        [
            "declared",
            "download s",
            "pool: 4 idle READY s",
            "x 0 GB",
            "slot to READY p50 / max s",
            "x 0 GB (p50)",
            "rentals",
            "failures",
        ],
        [
            [
                r.label,
                "-"
                if r.total_gb is None
                else f"{r.total_gb * GB / ctx.sim_config.download_bytes_per_s:.0f}",
                "never" if r.all_ready_s is None else f"{r.all_ready_s * scale:.0f}",
                ratio(r.all_ready_s, base_pool),
                "-"
                if not r.slot_ready_s
                else f"{statistics.median(r.slot_ready_s) * scale:.0f} / "
                f"{max(r.slot_ready_s) * scale:.0f}",
                ratio(statistics.median(r.slot_ready_s) if r.slot_ready_s else None, base_slot),
                r.rentals,
                ", ".join(f"{k} {v}" for k, v in r.failures.items()) or "-",
            ]
            for r in rows
        ],
    )
    for r in rows:
        if r.safe_reason:
            print(f"{r.label}: safe mode: {r.safe_reason}")


# ---- (b) a rollout -------------------------------------------------------------------------------


@dataclass
class Rollout:
    max_surge: int
    to_first_v2: float | None = None
    to_release: float | None = None
    to_all_v2: float | None = None
    fewest_idle: int = 3
    samples: int = 0
    below_s: float = 0.0
    """Time with fewer than min_ready idle READY slots (sum of the gaps between samples)."""
    rentals: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    note: str = ""
    dips: list[str] = field(default_factory=list)
    """The pool at the first sample below min_ready idle READY, and the sample before it."""


async def rollout(ctx: Context, max_surge: int) -> Rollout:
    v1, v2 = studio(2), studio(2, extra_gb=1)
    config = PoolConfig(
        min_ready=3,
        max_slots=4,
        scaling=ScalingPolicy(buffer=3),
        environment=v1,
        max_surge=max_surge,
    )
    result = Rollout(max_surge)
    pool = await start_pool(ctx, config)
    status, ok = await wait_pool(pool, lambda s: s.idle_ready == 3, within=120)
    if not ok:
        result.note = f"v1 never READY: {status.counts} {status.safe_reason or ''}"
        await drain(ctx, pool)
        return result
    request = LeaseRequest(holder="bench", request_id=uuid.uuid4().hex)
    grant = await pool_client.acquire(ctx.bench.client, pool.name, request)
    status, ok = await wait_pool(
        pool,
        lambda s: s.idle_ready == 3 and s.slots_by_environment == {v1.version: 4},
        within=120,
    )
    if not ok:
        result.note = f"no 3 idle + 1 leased on v1: {status.counts}"
        await drain(ctx, pool)
        return result
    began = time.monotonic()
    await pool_client.retry_transient(
        lambda: pool.handle.execute_update(PoolNames.SET_ENVIRONMENT, v2, result_type=PoolStatus)
    )

    previous: list[PoolStatus] = []
    last_sample = [time.monotonic(), 3.0]

    def seen(s: PoolStatus) -> None:
        now = time.monotonic()
        if last_sample[1] < 3:
            result.below_s += now - last_sample[0]
        last_sample[:] = [now, float(s.idle_ready)]
        result.samples += 1
        result.fewest_idle = min(result.fewest_idle, s.idle_ready)
        if s.idle_ready < 3 and not result.dips:
            at = time.monotonic() - began
            result.dips = [
                *(f"before: {describe(p, v2)}" for p in previous[-1:]),
                f"{at:.2f} s: {describe(s, v2)}",
            ]
        previous[:] = [s]
        on_v2 = [
            v
            for v in s.slots
            if v.env_version == v2.version and v.state == SlotState.READY and not v.retiring
        ]
        if on_v2 and result.to_first_v2 is None:
            result.to_first_v2 = time.monotonic() - began

    def idle_on_v2(n: int) -> Callable[[PoolStatus], bool]:
        return lambda s: (
            sum(
                1
                for v in s.slots
                if v.env_version == v2.version
                and v.state == SlotState.READY
                and v.lease_id is None
                and not v.retiring
            )
            >= n
        )

    window = 300 / ctx.scale + 120
    status, ok = await wait_pool(pool, idle_on_v2(2), within=window, seen=seen)
    await pool_client.release(ctx.bench.client, pool.name, grant.lease_id)
    result.to_release = time.monotonic() - began
    if not ok:
        result.note = f"2 idle on v2 not reached, released anyway: {status.counts}"
    status, ok = await wait_pool(
        pool,
        lambda s: set(s.slots_by_environment) == {v2.version} and s.idle_ready >= 3,
        within=window,
        seen=seen,
    )
    if ok:
        result.to_all_v2 = time.monotonic() - began
    else:
        result.note += f" never all on v2: {status.slots_by_environment} {status.counts}"
    result.rentals = len(rentals(ctx, pool))
    result.failures = dict(status.stats.failures_by_reason)
    await drain(ctx, pool)
    return result


def describe(s: PoolStatus, v2: Environment) -> str:
    """The pool's slots in one line: index, state, flags, version (v1/v2)."""
    slots = []
    for v in sorted(s.slots, key=lambda v: v.index):
        flags = "".join(
            flag
            for flag, on in (
                (" leased", v.lease_id is not None),
                (" cleaning", v.cleaning),
                (" retiring", v.retiring),
            )
            if on
        )
        version = "v2" if v.env_version == v2.version else "v1"
        slots.append(f"{v.index} {v.state.value}{flags} {version}")
    return f"idle_ready {s.idle_ready}, active leases {len(s.active_leases)}: " + "; ".join(slots)


def print_rollouts(ctx: Context, rows: list[Rollout]) -> None:
    scale = ctx.scale

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} ({value * scale:.0f})"

    print(
        f"\n(b) rollout v1 (2 nodes + 2 GB) -> v2 (+ 1 GB) on a pool of 4 (min_ready 3, buffer 3, "
        f"one leased, released once 2 idle slots serve v2); seconds from set_environment, real "
        f"(production at scale {scale:g})"
    )
    print_table(
        [
            "max_surge",
            "first v2 READY",
            "lease released",
            "all slots on v2",
            "fewest idle READY",
            "below 3 idle s",
            "status samples",
            "rentals",
            "failures",
        ],
        [
            [
                r.max_surge,
                cell(r.to_first_v2),
                cell(r.to_release),
                cell(r.to_all_v2),
                r.fewest_idle,
                f"{r.below_s:.2f}",
                r.samples,
                r.rentals,
                ", ".join(f"{k} {v}" for k, v in r.failures.items()) or "-",
            ]
            for r in rows
        ],
    )
    for r in rows:
        if r.note:
            print(f"max_surge {r.max_surge}: {r.note.strip()}")
        for line in r.dips:
            print(f"max_surge {r.max_surge}, below min_ready idle: {line}")


async def main(args: argparse.Namespace) -> None:
    scale: float = args.scale
    sim_config = SimConfig(speed=scale, offers=120)
    overrides: dict[str, object] = dict(LOOSE_OFFERS)
    if args.readiness_timeout is not None:
        overrides["readiness_timeout_s"] = args.readiness_timeout / scale
    settings = scaled_settings(scale, **overrides)
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    async with Simulator(sim_config) as sim, stack(sim, settings) as bench:
        ctx = Context(sim, bench, scale, sim_config)
        if not args.skip_sizes:
            rows = [await size_row(ctx, None)]
            for size in sizes:
                rows.append(await size_row(ctx, size))
                print(f"  {rows[-1].label}: {rows[-1].all_ready_s}", file=sys.stderr)
            print_sizes(ctx, rows)
        if not args.skip_rollout:
            rollouts = [await rollout(ctx, surge) for surge in (1, 2)]
            print_rollouts(ctx, rollouts)
        live = sim.live_instances()
    print(f"\nleft billing: {len(live)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--sizes", default="0,2,8,32", help="total GB per row, comma-separated")
    parser.add_argument(
        "--readiness-timeout",
        type=float,
        default=None,
        help="production seconds the slots wait for ComfyUI (default: the shipped 300)",
    )
    parser.add_argument("--skip-sizes", action="store_true")
    parser.add_argument("--skip-rollout", action="store_true")
    run(main(parser.parse_args()))
