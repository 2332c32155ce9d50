"""How fast does a pool get past a bad market, and how long does each bad rental bill?

Measures: the 8 cheapest acceptable machines of the simulator are bad, one fault each: three
whose status the slot destroys at once (`no_space` and `oci_failed`, fatal status_msg patterns,
and `outbid`, the contract stopped under us) and five it destroys only after the grace period
(`status:exited`, `status:unknown`, `status:offline`, `status:load_failed`, and `pull_failed`,
an image failure). A pool (--slots, default 3; min_ready = max_slots) starts against them and
runs until all its slots are idle READY. Printed:
- per bad rental: when its bad status first showed at the provider, when the slot's destroy
  call arrived at the simulator, the difference, and the bound it must meet (destroy at once:
  one active poll + 2 s; grace statuses: grace + one poll + 2 s), plus when the slot entered
  TERMINATING (the slot's own transition, where still kept);
- the pool's time to all READY, each bad machine's rental count (0: the pool found enough good
  ones first), the failures by reason, and whether safe mode tripped (it must not: these are
  host failures).

When did the bad status show? The simulator computes an instance's status from the time since
its create (vastsim/instance.py `_times`: created after `provision_s`, loading after
`created_s` more, running after `loading_s` more, all / speed); a fault shows from its phase on:
`oci_failed` from created, `no_space` and `pull_failed` from loading, `status:*` from running,
`outbid` from running + its seconds. So the time is `InstanceInfo.created_at` plus the
configured offsets, exact to the simulator's clock (nothing is added to vastsim for it).

Time runs --scale times faster everywhere (default 10, as bench/api_pacing.py): the simulator's
clock and its per-endpoint rate limits (`SPEC_MIN_INTERVALS`, 429 without Retry-After), the
worker's settings (`scaled_settings`: 3 s active poll, 12 s grace, pacing 1/10). Figures are
printed in real seconds and, where it makes sense, production seconds (x scale).

Worst case in theory: the first poll that sees the status comes up to one poll interval (plus
the shared listing's age, up to half the active poll) after it shows; a destroy-at-once status
is then destroyed by the next destroy start (paced, one per 3.3 s / scale); a grace status is
destroyed at the first poll at least `grace` after the first sighting, i.e. within one more
poll when the grace is not a multiple of the poll (here 12 s = 4 polls).

    .venv/bin/python bench/faulty_market.py [--scale 10] [--slots 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass

from harness import LOOSE_OFFERS, Bench, print_table, run, scaled_settings, stack

from vastsim import Fault, SimConfig, Simulator
from vastsim.faults import SPEC_MIN_INTERVALS
from vastsim.records import CallRecord, InstanceInfo
from warmpool.labels import pool_label_prefix, pool_workflow_id, slot_workflow_id
from warmpool.models import PoolConfig, PoolInput, PoolStatus, SlotState, SlotStatus
from warmpool.vast import VastClient

AT_ONCE = {
    "no_space": Fault(kind="no_space"),
    "oci_failed": Fault(kind="oci_failed"),
    "outbid": Fault(kind="outbid", seconds=0),
}
AFTER_GRACE = {
    "status:exited": Fault(kind="status", value="exited"),
    "status:unknown": Fault(kind="status", value="unknown"),
    "status:offline": Fault(kind="status", value="offline"),
    "status:load_failed": Fault(kind="status", value="load_failed"),
    "pull_failed": Fault(kind="pull_failed"),
}
FAULTS = {**AT_ONCE, **AFTER_GRACE}
SLACK_S = 2.0


@dataclass
class BadRental:
    name: str
    instance: InstanceInfo
    visible_at: float
    destroy: CallRecord | None
    terminating_at: float | None
    bound: float

    @property
    def delay(self) -> float | None:
        return None if self.destroy is None else self.destroy.at - self.visible_at


def visible_at(info: InstanceInfo, fault: Fault, sim: SimConfig) -> float:
    """Epoch seconds from which the simulator shows the fault's bad status (see docstring)."""
    created = info.created_at + sim.scaled(sim.provision_s)
    loading = created + sim.scaled(sim.created_s)
    running = loading + sim.scaled(sim.loading_s)
    if fault.kind == "oci_failed":
        return created
    if fault.kind in ("no_space", "pull_failed"):
        return loading
    if fault.kind == "outbid":
        return running + sim.scaled(fault.seconds or 0.0)
    return running


async def cheapest_machines(sim: Simulator, bench: Bench, n: int) -> list[int]:
    constraints = bench.settings.slot_config().constraints
    async with VastClient(sim.base_url, lambda: sim.api_key) as vast:
        offers = await vast.search_offers(constraints)
    machines: list[int] = []
    for offer in offers:
        if offer.machine_id is not None and offer.machine_id not in machines:
            machines.append(offer.machine_id)
    return machines[:n]


async def terminating_at(bench: Bench, pool: str, info: InstanceInfo) -> float | None:
    """When the slot that rented `info` entered TERMINATING for it (if still in its transitions)."""
    assert info.label is not None
    slot = int(info.label.split(".")[2])
    handle = bench.client.get_workflow_handle(slot_workflow_id(pool, slot))
    status: SlotStatus = await handle.query("status", result_type=SlotStatus)
    for t in status.transitions:
        at = t.at.timestamp()
        if t.to_state == SlotState.TERMINATING and info.created_at <= at:
            if info.destroyed_at is None or at <= info.destroyed_at:
                return at
    return None


async def measure(scale: float, slots: int, seed: int) -> None:
    sim_config = SimConfig(speed=scale, min_intervals=SPEC_MIN_INTERVALS, offers=120, seed=seed)
    settings = scaled_settings(scale, **LOOSE_OFFERS)
    async with Simulator(sim_config) as sim, stack(sim, settings) as bench:
        poll = bench.settings.poll_active_ms / 1000
        grace = bench.settings.fatal_grace_s
        bad = await cheapest_machines(sim, bench, len(FAULTS))
        by_machine = dict(zip(bad, FAULTS, strict=True))
        for machine, name in by_machine.items():
            sim.add_fault(FAULTS[name].model_copy(update={"machine_id": machine}))
        await asyncio.sleep(sim_config.scaled(SPEC_MIN_INTERVALS["bundles"]))  # our search's
        pool = f"bench-{uuid.uuid4().hex[:6]}"
        handle = await bench.client.start_workflow(
            "WarmPoolWorkflow",
            PoolInput(
                pool=pool,
                config=PoolConfig(
                    min_ready=slots, max_slots=slots, slot=bench.settings.slot_config()
                ),
            ),
            id=pool_workflow_id(pool),
            task_queue=bench.queue,
            result_type=PoolStatus,
        )
        started = time.time()
        while True:
            status: PoolStatus = await handle.query("status", result_type=PoolStatus)
            if status.idle_ready == slots:
                break
            if time.time() - started > 900 / scale + 300:
                raise TimeoutError(f"pool not READY: {status.counts}")
            await asyncio.sleep(0.1)
        to_ready = time.time() - started
        rentals = [
            i for i in sim.instances() if (i.label or "").startswith(pool_label_prefix(pool))
        ]
        calls = sim.calls
        rows: list[BadRental] = []
        for info in sorted(rentals, key=lambda i: i.created_at):
            kind = by_machine.get(info.machine_id)
            if kind is None:
                continue
            path = f"/api/v0/instances/{info.id}/"
            destroy = next(
                (c for c in calls if c.endpoint_key == "destroy" and c.path == path), None
            )
            bound = poll + SLACK_S + (grace if kind in AFTER_GRACE else 0.0)
            rows.append(
                BadRental(
                    name=kind,
                    instance=info,
                    visible_at=visible_at(info, FAULTS[kind], sim_config),
                    destroy=destroy,
                    terminating_at=await terminating_at(bench, pool, info),
                    bound=bound,
                )
            )
        await handle.signal("drain")
        await asyncio.wait_for(handle.result(), 120)
        live = sim.live_instances()
    per_machine = Counter(i.machine_id for i in rentals)
    print(
        f"\n{slots} slots, 8 bad machines among the cheapest, scale {scale:g} "
        f"(active poll {poll:g} s, grace {grace:g} s, destroy-at-once bound {poll + SLACK_S:g} s, "
        f"grace bound {grace + poll + SLACK_S:g} s; real seconds)"
    )
    print_table(
        [
            "fault",
            "machine",
            "instance",
            "bad from",
            "TERMINATING",
            "DELETE",
            "bad -> DELETE",
            "bound",
            "met",
        ],
        [
            [
                r.name,
                r.instance.machine_id,
                r.instance.id,
                f"{r.visible_at - started:.2f}",
                "-" if r.terminating_at is None else f"{r.terminating_at - started:.2f}",
                "-" if r.destroy is None else f"{r.destroy.at - started:.2f}",
                "-" if r.delay is None else f"{r.delay:.2f}",
                f"{r.bound:g}",
                "yes" if r.delay is not None and r.delay <= r.bound else "NO",
            ]
            for r in rows
        ],
    )
    print("(bad from / TERMINATING / DELETE: seconds since the pool started)")
    print_table(
        ["bad machine", "fault", "rentals"],
        [[m, name, per_machine[m]] for m, name in by_machine.items()],
    )
    good = [i for i in rentals if i.machine_id not in by_machine]
    print(
        f"pool {slots}/{slots} idle READY after {to_ready:.1f} s ({to_ready * scale:.0f} s at "
        f"production timings); rentals: {len(rentals)} ({len(rows)} bad, {len(good)} good); "
        f"safe mode: {status.safe_mode} ({status.safe_reason or '-'})"
    )
    print(f"failures by reason: {dict(status.stats.failures_by_reason)}")
    print(f"excluded machines: {sorted(m.machine_id for m in status.excluded_machines)}")
    limited = Counter(c.endpoint_key for c in calls if c.status == 429)
    print(f"429 answers (simulator rate limits): {dict(limited) or 0}; left billing: {live}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--slots", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    await measure(args.scale, args.slots, args.seed)


if __name__ == "__main__":
    run(main())
