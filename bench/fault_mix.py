"""What share of rentals reach READY under the simulator's default fault mix, and why not the rest?

Measures: M slots (default 20) start at once against an in-process simulator with
SimConfig(fault_mix="default"): 5% of rentals "no space left on device", 3% load_failed, 3%
ComfyUI never ready, and 2% of API calls answered 429. Each slot retries until READY. Then
every attempt is aggregated from the slots' status counters (attempts, rents,
failures_by_reason) and every rental from the simulator's instances() (the faults each was
born with). An attempt is one search; it rents only if no other slot took its offer first
("lost offer race"). A rental reached READY if it is a slot's final instance or was later
lost to a keepalive failure.

Timings are production defaults divided by --scale (default 100, see harness.scaled_settings):
the shares do not depend on time, only the run length does (a never-ready instance costs the
readiness timeout, 300 s in production, 3 s here; load_failed costs the 120 s grace, 1.2 s).

    .venv/bin/python bench/fault_mix.py [--slots 20] [--seed 0] [--scale 100]
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter

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
from warmpool.models import SlotState, SlotStatus
from worker import HEARTBEAT_THROTTLE


def share(part: int, whole: int) -> str:
    return f"{part}/{whole} = {part / whole:.0%}" if whole else "-"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=100.0)
    args = parser.parse_args()
    sim_config = FAST_SIM.model_copy(
        update={"fault_mix": "default", "seed": args.seed, "offers": max(40, 8 * args.slots)}
    )
    settings = scaled_settings(args.scale, **LOOSE_OFFERS)
    async with (
        Simulator(sim_config) as sim,
        stack(sim, settings, heartbeat_throttle=HEARTBEAT_THROTTLE / args.scale) as bench,
    ):
        handles = await asyncio.gather(*(bench.start_slot(i) for i in range(args.slots)))
        statuses: list[SlotStatus] = await asyncio.gather(
            *(wait_for(h, in_state(SlotState.READY), within=300, every=0.2) for h in handles)
        )
        rentals = sim.instances()
        calls = sim.calls
        await bench.retire(handles)

    reasons: Counter[str] = Counter()
    for status in statuses:
        reasons.update(status.counters.failures_by_reason)
    attempts = sum(s.counters.attempts for s in statuses)
    rents = sum(s.counters.rents for s in statuses)
    without_rent = reasons["no_offers"] + reasons["rent_failed"]
    ready_rentals = len(statuses) + reasons["keepalive_lost"]
    final = {s.instance.id for s in statuses if s.instance is not None}
    by_fault: Counter[tuple[str, bool]] = Counter(
        (",".join(r.faults) or "none", r.id in final) for r in rentals
    )
    throttled = sum(1 for c in calls if c.status == 429)

    print(f"\n{args.slots} slots, default fault mix, seed {args.seed}")
    print_table(
        ["figure", "value"],
        [
            ["attempts (searches)", attempts],
            ["lost offer races", attempts - rents - without_rent],
            ["rentals (simulator creates)", len(rentals)],
            ["READY share per attempt", share(len(statuses), attempts)],
            ["READY share per rental", share(ready_rentals, len(rentals))],
            ["API calls answered 429", share(throttled, len(calls))],
        ],
    )
    print("\nFailed attempts by reason (slot counters)")
    print_table(["reason", "count"], reasons.most_common() or [("-", 0)])
    print("\nRentals by the fault they were born with (simulator)")
    print_table(
        ["fault", "rentals", "still serving"],
        [
            [fault, by_fault[(fault, False)] + by_fault[(fault, True)], by_fault[(fault, True)]]
            for fault in sorted({fault for fault, _ in by_fault})
        ],
    )


if __name__ == "__main__":
    run(main())
