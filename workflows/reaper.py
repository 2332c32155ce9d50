"""Who destroys instances that no slot owns? OrphanReaperWorkflow, run by a Temporal Schedule.

One run per period (`warmpool/<pool>/reaper`, overlap SKIP): list the instances carrying the
pool's label prefix, ask the slots their labels name what they hold, decide (pure rule in
`warmpool.reaper`: unowned, verified, older than the grace period), destroy each orphan until
the provider confirms, and return a report of what went and what that saves per hour.

Orphans come from a slot workflow terminated by hand, a create whose answer was lost and
whose slot moved on, or anything else that escapes the slots' own bookkeeping (DESIGN
invariant 2: no orphan bills).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.reaper import ReaperActivities, SlotClaimsInput
    from activities.vast import VastActivities
    from warmpool.reaper import (
        Reaped,
        ReaperInput,
        ReaperReport,
        ReapFailure,
        Verdict,
        decide,
        saved_per_hour,
        slots_named,
    )
    from workflows import options

CLAIMS_OPTIONS: dict[str, Any] = {
    # Reads of Temporal itself; heartbeats per slot, so a dead worker's read moves on quickly.
    "start_to_close_timeout": timedelta(minutes=5),
    "heartbeat_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_attempts=3),
}


@workflow.defn(name="OrphanReaperWorkflow")
class OrphanReaperWorkflow:
    @workflow.run
    async def run(self, input: ReaperInput) -> ReaperReport:
        queue = workflow.info().task_queue
        candidates = await workflow.execute_activity_method(
            ReaperActivities.list_candidates, input.pool, **options.vast(queue)
        )
        claims = await workflow.execute_activity_method(
            ReaperActivities.slot_claims,
            SlotClaimsInput(pool=input.pool, indices=slots_named(candidates, input.pool)),
            **CLAIMS_OPTIONS,
        )
        now = workflow.now()
        decisions = decide(candidates, claims, pool=input.pool, now=now, grace=input.grace)
        destroyed: list[Reaped] = []
        failed: list[ReapFailure] = []
        for decision in decisions:
            c = decision.candidate
            if decision.verdict != Verdict.ORPHAN or input.dry_run:
                continue
            try:
                result = await workflow.execute_activity_method(
                    VastActivities.destroy, c.instance_id, **options.destroy(queue)
                )
            except ActivityError as err:
                failed.append(
                    ReapFailure(
                        instance_id=c.instance_id, label=c.label, error=str(err.cause or err)[:300]
                    )
                )
                continue
            destroyed.append(
                Reaped(
                    instance_id=c.instance_id,
                    label=c.label,
                    dph_total=c.dph_total or 0.0,
                    already_gone=result.already_gone,
                )
            )
        report = ReaperReport(
            pool=input.pool,
            checked_at=now,
            grace=input.grace,
            dry_run=input.dry_run,
            listed=len(candidates),
            decisions=decisions,
            destroyed=destroyed,
            failed=failed,
            saved_per_hour=saved_per_hour(destroyed),
        )
        orphans = [d.candidate.instance_id for d in report.orphans]
        workflow.logger.info(
            "reaper %s: %d labelled, orphans %s, destroyed %s (saves $%.4f/h), failed %s",
            input.pool,
            len(candidates),
            orphans,
            [r.instance_id for r in destroyed],
            report.saved_per_hour,
            [f.instance_id for f in failed],
        )
        return report
