"""How long does a fatal provider status bill before the slot destroys the instance?

Measures: a slot rents an instance that stays "loading" (simulator), and once the slot is
PROVISIONING the instance's status_msg becomes "... no space left on device" at time T, at a
random phase of the slot's poll timer (uniform in one interval, as a real failure would be).
Printed: seconds from T to the slot's TERMINATING transition (detected), to the DELETE call in
the simulator's call log, and to the first show that answered null after it (the provider
confirming: the instance is gone). Every setting is the production default except the
provisioning poll interval, run at each --intervals-ms value (default 30000, the production
WARM_POOL_POLL_ACTIVE_INTERVAL_MS, and 1000), --runs times each.

Scaling: the delay is the wait for the next status poll (uniform in 0..interval, so mean
interval/2, max interval) plus one listing read and one destroy activity (tens of ms here; add
the provider's latency, ~3 round trips, in production). With many slots per worker the listing
can also be up to its TTL (half the shorter of the active poll and keepalive intervals) old.
The destroy is a provider activity: at a 1 s poll the default budget (2 activities/s, see
--vast-calls-per-second) is mostly spent on polls and delays it by 1-2 s.

    .venv/bin/python bench/fatal_to_destroy.py [--intervals-ms 30000 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import dataclass

from harness import LOOSE_OFFERS, Bench, print_table, run, stack, summary, wait_for

from vastsim import SimConfig, Simulator
from warmpool.models import SlotState, SlotStatus

FATAL_MSG = "Error response from daemon: failed to register layer: no space left on device"
LOADING_FOREVER = SimConfig(provision_s=0.1, created_s=0.1, loading_s=10**6, comfy_boot_s=0.4)


@dataclass
class Run:
    detected: float
    delete: float
    confirmed: float


def is_provisioning(status: SlotStatus) -> bool:
    return status.state == SlotState.PROVISIONING and status.instance is not None


async def loading(sim: Simulator, instance_id: int) -> None:
    """Until the simulator shows the instance pulling its image (0.2 s after the rent)."""
    for _ in range(500):
        if next(i for i in sim.instances() if i.id == instance_id).actual_status == "loading":
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"instance {instance_id} never showed loading")


async def one_run(bench: Bench, sim: Simulator, index: int, interval: float) -> Run:
    handle = await bench.start_slot(index)
    status = await wait_for(handle, is_provisioning, within=60)
    assert status.instance is not None
    instance_id = status.instance.id
    await loading(sim, instance_id)
    await asyncio.sleep(random.uniform(0, interval))
    fatal_at = time.time()
    sim.set_instance_status(instance_id, status_msg=FATAL_MSG)
    status = await wait_for(handle, lambda s: s.counters.destroys >= 1, within=interval * 2 + 60)
    detected = next(t for t in status.transitions if t.to_state == SlotState.TERMINATING)
    mine = [c for c in sim.calls if c.at >= fatal_at and f"/{instance_id}/" in c.path]
    delete = next(c for c in mine if c.endpoint_key == "destroy")
    gone_at = next(i for i in sim.instances() if i.id == instance_id).destroyed_at or delete.at
    confirm = next(
        c for c in mine if c.endpoint_key == "show" and c.at >= delete.at and c.at >= gone_at
    )
    await bench.retire([handle])
    return Run(
        detected=detected.at.timestamp() - fatal_at,
        delete=delete.at - fatal_at,
        confirmed=confirm.at - fatal_at,
    )


async def measure(interval_ms: int, runs: int, vast_rate: float) -> list[Run]:
    settings = {"poll_active_ms": interval_ms, "vast_calls_per_second": vast_rate, **LOOSE_OFFERS}
    async with Simulator(LOADING_FOREVER) as sim, stack(sim, settings) as bench:
        return [await one_run(bench, sim, i, interval_ms / 1000) for i in range(runs)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--intervals-ms", type=int, nargs="+", default=[30_000, 1_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--vast-calls-per-second", type=float, default=2.0, help="provider activity budget"
    )
    args = parser.parse_args()
    rate = args.vast_calls_per_second
    results = {ms: await measure(ms, args.runs, rate) for ms in args.intervals_ms}
    print("\nSeconds from a fatal status_msg to ... (p50 / mean / max over runs)")
    print_table(
        ["poll interval", "runs", "TERMINATING", "DELETE call", "show answers null"],
        [
            [
                f"{ms / 1000:g} s",
                len(runs),
                summary([r.detected for r in runs]),
                summary([r.delete for r in runs]),
                summary([r.confirmed for r in runs]),
            ]
            for ms, runs in results.items()
        ],
    )


if __name__ == "__main__":
    run(main())
