"""How do Vast.ai calls, worker memory and CPU grow with the number of slots one worker runs?

Measures: N slots (default 10 and 100; pool "bench", indexes 0..N-1) are started as
WarmSlotWorkflow against a simulator in a child process (SimConfig(offers=4*N), loose offer
constraints), --in-flight at a time until their rent (so few race for an offer) and spread over
at least one poll period (so their polls have uniform phases, the worst case for the shared
listing). Once all are READY (or, with --phase provisioning, all PROVISIONING on instances
that never finish loading), the simulator's calls are counted by endpoint over --periods poll
periods (READY: the idle poll, 180 s in production; PROVISIONING: the active poll, 30 s) and
printed per period, next to the list pages one listing of N instances takes (25 per page), the
worker process's RSS (VmRSS) and its CPU.

Scaling: every interval is its production default divided by --scale (default 10), so calls per
period are production figures; CPU per period is too, and CPU % at production is the printed
value divided by --scale. The provider activity budget (WARMPOOL_VAST_CALLS_PER_SECOND) is
raised to --vast-rate so that ramp-up fits in minutes; in production it also caps how often
provisioning slots can poll (each poll is one provider activity, whatever the listing shares).
The worker is the production one (`create_workers`: activity limit from the settings, workflow
cache `worker.MAX_CACHED_WORKFLOWS`, the lean sandbox); --replicas adds worker pairs that share
the activities (one listing), --max-cached changes the cache.

Memory: the worker's RSS before the first slot and after the measurement, their difference per
slot, and RSS by kind of mapping (brk heap, anonymous mmaps: pymalloc arenas and native
allocators, files). --heap also traces Python allocations (tracemalloc) and prints the files
whose allocations grew; it slows the run and inflates RSS, so take RSS from a run without it.

Time on 2 shared cores: ~2 min for the defaults (READY), ~40 s with --phase provisioning.
`--slots 1000 --ramp-timeout 2400 --in-flight 8` takes ~8 min READY (ramp ~4.5 min, then ~3
min retiring 1,000 slots at once, which replays evicted slots). 1,000 provisioning slots do
not fit at scale 10: their polls are ~330 provider activities/s, and the dev server saturates
near 200 slots.

    .venv/bin/python bench/api_calls_per_period.py [--slots 10 100] [--phase ready|provisioning]
        [--max-cached N] [--replicas N] [--heap]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
import tracemalloc
from dataclasses import dataclass

from harness import (
    FAST_SIM,
    LOOSE_OFFERS,
    Bench,
    SimProcess,
    cpu_seconds,
    heap_growth,
    memory_map,
    print_table,
    rss_mb,
    run,
    scaled_settings,
    stack,
    wait_for,
)

from vastsim import SimConfig
from warmpool.models import SlotState, SlotStatus
from worker import HEARTBEAT_THROTTLE, MAX_CACHED_WORKFLOWS

PAGE = 25
LOADING_FOREVER = FAST_SIM.model_copy(update={"loading_s": 10**6})


@dataclass
class Result:
    slots: int
    ramp_s: float
    period_s: float
    per_period: dict[str, float]
    rss_mb: float
    base_rss_mb: float
    cpu_s_per_period: float
    sim_cpu_s_per_period: float
    still_in_phase: int
    heap: list[tuple[str, float, int]]
    maps: dict[str, tuple[float, float]]


def rented(status: SlotStatus) -> bool:
    return status.state not in (SlotState.PREFLIGHT, SlotState.SEARCHING, SlotState.RENTING)


async def start_few_at_a_time(bench: Bench, n: int, min_gap: float, in_flight: int) -> None:
    """At most `in_flight` slots before their rent at once, and no faster than one per `min_gap`.

    Every slot rents the cheapest matching offer, so slots that search at once race for it and
    all but one search again (fault_mix.py counts those races): started all together, 1,000
    slots spend minutes racing. A few at a time keeps the races rare.
    """
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(in_flight)

    async def one(index: int) -> None:
        try:
            await wait_for(await bench.start_slot(index), rented, within=300, every=0.05)
        finally:
            gate.release()

    began = loop.time()
    async with asyncio.TaskGroup() as group:
        for i in range(n):
            await gate.acquire()
            group.create_task(one(i))
            await asyncio.sleep(max(0.0, began + (i + 1) * min_gap - loop.time()))


async def measure(n: int, args: argparse.Namespace) -> Result:
    phase = SlotState.READY if args.phase == "ready" else SlotState.PROVISIONING
    base: SimConfig = FAST_SIM if phase == SlotState.READY else LOADING_FOREVER
    settings = scaled_settings(args.scale, **LOOSE_OFFERS, vast_calls_per_second=args.vast_rate)
    if phase == SlotState.PROVISIONING:
        settings["provision_timeout_s"] = 10**6  # the instances never load: keep the slots
    async with (
        SimProcess(base.model_copy(update={"offers": 4 * n})) as sim,
        stack(
            sim,
            settings,
            heartbeat_throttle=HEARTBEAT_THROTTLE / args.scale,
            replicas=args.replicas,
            max_cached_workflows=args.max_cached,
        ) as bench,
    ):
        s = bench.settings
        period = (s.poll_idle_ms if phase == SlotState.READY else s.poll_active_ms) / 1000
        base_rss, base_maps = rss_mb(), memory_map()
        heap_before = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
        started = time.monotonic()
        await start_few_at_a_time(bench, n, period / n, args.in_flight)
        await bench.wait_count(n, phase, within=args.ramp_timeout)
        ramp = time.monotonic() - started
        before, t0 = await sim.call_counts(), time.monotonic()
        cpu0, sim_cpu0 = cpu_seconds(), cpu_seconds(sim.pid)
        await asyncio.sleep(period * args.periods)
        after, cpu1, sim_cpu1 = await sim.call_counts(), cpu_seconds(), cpu_seconds(sim.pid)
        periods = (time.monotonic() - t0) / period
        rss, maps = rss_mb(), memory_map()
        heap = []
        if heap_before is not None:
            heap = heap_growth(heap_before, tracemalloc.take_snapshot())
        still = await bench.count(phase)
        print(f"  N={n}: measured; retiring", file=sys.stderr)
        await bench.retire_all(n, within=args.ramp_timeout)
    return Result(
        slots=n,
        ramp_s=ramp,
        period_s=period * args.scale,
        per_period=per_period(before, after, periods),
        rss_mb=rss,
        base_rss_mb=base_rss,
        cpu_s_per_period=(cpu1 - cpu0) / periods,
        sim_cpu_s_per_period=(sim_cpu1 - sim_cpu0) / periods,
        still_in_phase=still,
        heap=heap,
        maps={kind: (base_maps[kind], maps[kind]) for kind in maps},
    )


def per_period(before: dict[str, int], after: dict[str, int], periods: float) -> dict[str, float]:
    return {
        key: (after.get(key, 0) - before.get(key, 0)) / periods
        for key in after
        if after.get(key, 0) != before.get(key, 0)
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--phase", choices=["ready", "provisioning"], default="ready")
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--periods", type=float, default=2.0)
    parser.add_argument("--vast-rate", type=float, default=500.0, help="provider activities/s")
    parser.add_argument("--ramp-timeout", type=float, default=300.0)
    parser.add_argument("--in-flight", type=int, default=4, help="slots searching at once")
    parser.add_argument(
        "--max-cached", type=int, default=MAX_CACHED_WORKFLOWS, help="workflow cache size"
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="worker pairs sharing the activities"
    )
    parser.add_argument(
        "--heap", action="store_true", help="trace Python allocations; print where they grew"
    )
    args = parser.parse_args()
    if args.heap:
        tracemalloc.start()
    results = []
    for n in args.slots:
        results.append(await measure(n, args))
    endpoints = sorted({key for r in results for key in r.per_period} - {"list_v1"})
    phase = "READY (idle poll)" if args.phase == "ready" else "PROVISIONING (active poll)"
    print(f"\nVast.ai calls per poll period, {phase}; time scale 1/{args.scale:g}")
    print_table(
        [
            "slots",
            "list pages",
            "pages/listing",
            "listings",
            *endpoints,
            "ramp s (real)",
            "in phase",
        ],
        [
            [
                r.slots,
                f"{r.per_period.get('list_v1', 0.0):.1f}",
                math.ceil(r.slots / PAGE),
                f"{r.per_period.get('list_v1', 0.0) / math.ceil(r.slots / PAGE):.1f}",
                *(f"{r.per_period.get(e, 0.0):.1f}" for e in endpoints),
                f"{r.ramp_s:.0f}",
                r.still_in_phase,
            ]
            for r in results
        ],
    )
    print(
        f"\nWorker process (workflows + activities + client), per {results[0].period_s:g} s period"
    )
    print_table(
        [
            "slots",
            "RSS MB",
            "RSS MB before slots",
            "KB per slot",
            "CPU s/period",
            "CPU % (scaled)",
            "CPU % (production)",
            "simulator CPU s/period",
        ],
        [
            [
                r.slots,
                f"{r.rss_mb:.0f}",
                f"{r.base_rss_mb:.0f}",
                f"{1024 * (r.rss_mb - r.base_rss_mb) / r.slots:.0f}",
                f"{r.cpu_s_per_period:.2f}",
                f"{100 * r.cpu_s_per_period / (r.period_s / args.scale):.1f}",
                f"{100 * r.cpu_s_per_period / r.period_s:.2f}",
                f"{r.sim_cpu_s_per_period:.2f}",
            ]
            for r in results
        ],
    )
    print("\nWorker RSS by kind of mapping, MB before slots -> after")
    print_table(
        ["slots", *results[0].maps],
        [[r.slots, *(f"{a:.0f} -> {b:.0f}" for a, b in r.maps.values())] for r in results],
    )
    for r in results:
        if r.heap:
            print(f"\nPython heap growth with {r.slots} slots (tracemalloc, excludes OpenSSL/Rust)")
            print_table(["file", "MB", "blocks"], [[f, f"{mb:.1f}", n] for f, mb, n in r.heap])


if __name__ == "__main__":
    run(main())
