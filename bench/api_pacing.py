"""Do the pool's provider calls stay under Vast.ai's per-endpoint limits when slots start together?

Measures: --slots slots start at once against a simulator that enforces the spec's minimum
interval per endpoint and key (`vastsim.faults.SPEC_MIN_INTERVALS`: search 6 s, create 4.5,
show 2, list 1, destroy 3; a call sooner gets 429 without Retry-After), run until every slot is
READY, then retired (destroy until confirmed). Time runs --scale times faster everywhere: the
simulator's clock and limits (`speed`), the worker's settings (`scaled_settings`) and its pacing
(`vast_pacing_scale` 1/scale), so the ratios are production's. Printed: calls and 429 answers
per endpoint, and the seconds (scaled back) until all were READY and all were gone. With
--no-pacing the worker runs without its per-endpoint queues' rates and client pacing, for the
contrast.

    .venv/bin/python bench/api_pacing.py [--slots 6] [--scale 10] [--replicas 1] [--no-pacing]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter

from harness import LOOSE_OFFERS, in_state, print_table, run, scaled_settings, stack, wait_for

from vastsim import SimConfig, Simulator
from vastsim.faults import SPEC_MIN_INTERVALS
from warmpool.models import SlotState


async def measure(slots: int, scale: float, replicas: int, pacing: bool) -> None:
    sim_config = SimConfig(speed=scale, min_intervals=SPEC_MIN_INTERVALS)
    settings = scaled_settings(scale, **LOOSE_OFFERS, vast_pacing_scale=1 / scale if pacing else 0)
    async with Simulator(sim_config) as sim, stack(sim, settings, replicas=replicas) as bench:
        started = time.monotonic()
        handles = [await bench.start_slot(i) for i in range(slots)]
        await asyncio.gather(
            *(wait_for(h, in_state(SlotState.READY), within=600 / scale + 120) for h in handles)
        )
        ready = (time.monotonic() - started) * scale
        await bench.retire(handles)
        gone = (time.monotonic() - started) * scale
        calls = sim.calls
    total: Counter[str] = Counter(c.endpoint_key for c in calls)
    limited: Counter[str] = Counter(c.endpoint_key for c in calls if c.status == 429)
    print(f"\n{slots} slots, scale {scale:g}, {replicas} worker pair(s), pacing {pacing}")
    print(f"all READY after {ready:.0f} s, all destroyed after {gone:.0f} s (production seconds)")
    print_table(
        ["endpoint", "limit (s)", "calls", "429"],
        [
            [key, SPEC_MIN_INTERVALS.get(key, "-"), total[key], limited[key]]
            for key in sorted(total)
        ],
    )
    print(f"429 answers: {sum(limited.values())} of {sum(total.values())} calls")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", type=int, default=6)
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--replicas", type=int, default=1, help="worker pairs sharing the key")
    parser.add_argument("--no-pacing", action="store_true")
    args = parser.parse_args()
    await measure(args.slots, args.scale, args.replicas, not args.no_pacing)


if __name__ == "__main__":
    run(main())
