"""How many Vast.ai API calls does a READY, idle slot cost per hour?

Measures: K slots (default 1, then 10) reach READY against an in-process simulator with every
interval at its production default divided by --scale (default 100: status poll while idle
180 s -> 1.8 s, keepalive 30 s -> 0.3 s, shared-listing TTL 15 s -> 0.15 s, provider call budget
2/s -> 200/s). The simulator's calls are then counted by endpoint over --hours production hours
(default 1 = 36 s of real time at scale 100) while the slots sit idle, and printed as calls per
slot per production hour.

Scaling: while READY every Vast.ai call comes from a timer (the watch activity's status poll
every WARM_POOL_POLL_IDLE_INTERVAL_MS, read through the worker's shared listing), so a count per
scaled hour is the count per production hour. The ComfyUI keepalive pings are not Vast.ai calls
and are not counted. More slots than 25 would add list pages (see api_calls_per_period.py).

Sharing: a slot's poll reads the listing again only if the last read is older than its TTL
(15 s in production), so the figure per slot lies between 3600/180 = 20 (no two polls of the
worker within 15 s) and 20/K (all K slots in step). Slots that start together still reach
READY at scattered times (offer races, boot), so their phases are close to random; --spread
also starts them over one idle poll period. api_calls_per_period.py spaces them evenly.

    .venv/bin/python bench/idle_api_calls.py [--slots 1 10] [--scale 100] [--hours 1] [--spread]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from harness import (
    FAST_SIM,
    LOOSE_OFFERS,
    in_state,
    print_table,
    run,
    scaled_settings,
    stack,
    wait_for,
)

from vastsim import Simulator
from warmpool.clients import slot as slot_client
from warmpool.models import SlotState
from worker import HEARTBEAT_THROTTLE

READY = SlotState.READY


async def measure(slots: int, scale: float, hours: float, spread: bool) -> dict[str, float]:
    """Calls per slot per production hour, by endpoint, for `slots` idle READY slots."""
    sim_config = FAST_SIM.model_copy(update={"offers": max(40, 8 * slots)})
    settings = scaled_settings(scale, **LOOSE_OFFERS)
    async with (
        Simulator(sim_config) as sim,
        stack(sim, settings, heartbeat_throttle=HEARTBEAT_THROTTLE / scale) as bench,
    ):
        gap = bench.settings.poll_idle_ms / 1000 / slots if spread else 0.0
        handles = []
        for i in range(slots):
            handles.append(await bench.start_slot(i))
            await asyncio.sleep(gap)
        await asyncio.gather(*(wait_for(h, in_state(READY), within=120) for h in handles))
        await asyncio.sleep(bench.settings.poll_idle_ms / 1000)  # every watch is past its start
        before, started = sim.call_counts, time.monotonic()
        await asyncio.sleep(hours * 3600 / scale)
        after, elapsed = sim.call_counts, time.monotonic() - started
        statuses = [await slot_client.query_status(h) for h in handles]
        lost = sum(s.counters.failures for s in statuses)
        if lost or any(s.state != READY for s in statuses):
            print(f"note: {lost} slot failure(s) during the window; the figure includes them")
        await bench.retire(handles)
    production_hours = elapsed * scale / 3600
    return {
        key: (after.get(key, 0) - before.get(key, 0)) / slots / production_hours
        for key in sorted(set(after) | set(before))
        if after.get(key, 0) != before.get(key, 0)
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--scale", type=float, default=100.0)
    parser.add_argument("--hours", type=float, default=1.0, help="production hours to count")
    parser.add_argument("--spread", action="store_true", help="start over one idle poll period")
    args = parser.parse_args()
    results = {k: await measure(k, args.scale, args.hours, args.spread) for k in args.slots}
    endpoints = sorted({key for per in results.values() for key in per})
    started = "spread over one idle poll period" if args.spread else "started together"
    print(f"\nVast.ai calls per READY idle slot per production hour, slots {started}")
    print(f"(time scale 1/{args.scale:g}, {args.hours:g} production hour(s) counted)")
    print_table(
        ["slots", *endpoints, "total"],
        [
            [k, *(f"{per.get(e, 0.0):.1f}" for e in endpoints), f"{sum(per.values()):.1f}"]
            for k, per in results.items()
        ],
    )


if __name__ == "__main__":
    run(main())
