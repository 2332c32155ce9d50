"""What keeps a pool of slots warm and hands them out? WarmPoolWorkflow, one per named pool.

The pool is the lease authority: a `lease` update picks an idle READY slot from the pool's
own mirror of its slots and answers at once (no activity, no await), so two leases can never
land on one slot and a lease costs one update round trip. Slots are child workflows with
ParentClosePolicy.ABANDON (they survive the pool's continue-as-new) and report their
transitions with a `slot_event` signal, except the two lease churn causes: the LEASED the
pool marks itself, and the READY after a clean, which answers the pool's `end_lease` update
(see activities/slots.py). Callers that want to wait for capacity send a
`request_lease` signal and read its outcome with the `lease_request` query, so no update is
held open for minutes (a workflow admits at most 10 in-flight updates).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.slots import EXCLUDE_SIGNAL, MachineExclusion, message_slot
    from warmpool import market
    from warmpool.labels import pool_workflow_id, slot_workflow_id
    from warmpool.models import (
        FailureReason,
        Lease,
        LeaseEndRequest,
        LeaseGrant,
        LeaseLookup,
        LeaseRequest,
        PoolFailure,
        PoolInput,
        PoolLease,
        PoolRuntime,
        PoolStatus,
        RenewRequest,
        ResizeRequest,
        SlotConfig,
        SlotEvent,
        SlotInput,
        SlotMessage,
        SlotState,
        SlotView,
        WaitingRequest,
    )
    from workflows import options
    from workflows.slot import WarmSlotWorkflow

S = SlotState
STARTING = {
    S.PREFLIGHT,
    S.SEARCHING,
    S.RENTING,
    S.PROVISIONING,
    S.PROBING,
    S.VALIDATING_PORTS,
    S.BACKOFF,
}
SERVING = {S.READY, S.LEASED, S.DRAINING}
"""States in which a slot still serves its lease: a retiring slot waits for the lease to end."""
GONE = {S.DONE}
KEEP_FAILURES = 20
KEEP_ENDED_LEASES = 50
KEEP_REQUEST_IDS = 2_000
MAX_WAIT = timedelta(minutes=30)
CONTINUE_AS_NEW_EVENTS = 1_000


def no_capacity(message: str) -> ApplicationError:
    return ApplicationError(message, type="NoCapacity", non_retryable=True)


@workflow.defn(name="WarmPoolWorkflow")
class WarmPoolWorkflow:
    @workflow.init
    def __init__(self, input: PoolInput) -> None:
        self._pool = input.pool
        self._cfg = input.config
        self._rt = input.runtime or PoolRuntime()
        self._dirty = True
        self._outbox: set[asyncio.Task[None]] = set()
        self._last_message: dict[str, asyncio.Task[None]] = {}
        self._closing = False
        self._timer: asyncio.Task[None] | None = None
        self._wake_at: datetime | None = None

    # ---- run loop -------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: PoolInput) -> PoolStatus:
        self._send_unsent()
        while True:
            self._dirty = False
            market.prune(self._rt, self._now())
            self._expire(self._now())
            self._grant_waiting()
            await self._reconcile()
            if self._rt.draining and not self._rt.slots:
                return self.status()
            if self._should_continue_as_new():
                # New slot messages wait in `unsent`, so the outbox drains even under load.
                self._closing = True
                await workflow.wait_condition(
                    lambda: workflow.all_handlers_finished() and not self._outbox
                )
                workflow.continue_as_new(
                    PoolInput(pool=self._pool, config=self._cfg, runtime=self._rt)
                )
            self._arm_timer()
            await workflow.wait_condition(
                lambda: self._dirty or self._woken() or self._should_continue_as_new()
            )

    def _should_continue_as_new(self) -> bool:
        """At the server's suggestion, or after CONTINUE_AS_NEW_EVENTS events.

        A slot event arriving while the continue-as-new task completes fails that task, and
        the worker replays the whole run before trying again (temporalio/temporal#1289);
        leases wait meanwhile. Replaying 4,100 events took 1.3 s; a short run keeps that short.
        """
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= CONTINUE_AS_NEW_EVENTS
        )

    def _arm_timer(self) -> None:
        """Wake at the nearest lease expiry or waiting-request deadline (at most 1 h away).

        A running timer that fires no later than needed is kept: restarting it on every
        workflow task would add two events to each lease and release.
        """
        now = self._now()
        times = [lease.leased_until for lease in self._active_leases()]
        times += [w.deadline for w in self._rt.waiting]
        times += self._rt.unclaimed.values()
        wake = min(times, default=now + timedelta(hours=1))
        if not self._woken() and self._wake_at is not None and self._wake_at <= wake:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._wake_at = wake
        self._timer = asyncio.create_task(
            workflow.sleep(max(wake - now, timedelta(milliseconds=1)))
        )

    def _woken(self) -> bool:
        return self._timer is None or self._timer.done()

    # ---- helpers --------------------------------------------------------------------------

    def _now(self) -> datetime:
        return workflow.now()

    def _active_leases(self) -> list[PoolLease]:
        return [lease for lease in self._rt.leases.values() if lease.ended_at is None]

    def _idle_ready(self) -> list[SlotView]:
        return sorted(
            (
                v
                for v in self._rt.slots.values()
                if v.state == S.READY
                and v.lease_id is None
                and not v.cleaning
                and not v.retiring
                and v.connection_url
            ),
            key=lambda v: v.since,
        )

    def _spend(self) -> float:
        return sum(v.dph_total or 0.0 for v in self._rt.slots.values() if v.instance_id)

    def _message_slot(self, index: int, name: str, arg: object) -> None:
        """Message a slot; held in `unsent` for the next run once continue-as-new is due."""
        message = SlotMessage.model_validate(
            {"workflow_id": slot_workflow_id(self._pool, index), name: arg}
        )
        if self._closing:
            self._rt.unsent.append(message)
            return
        self._send_unsent()
        self._send(message)

    def _send_unsent(self) -> None:
        """Send what the previous run held back, first: an update handled before `run` starts
        (a release, say) must not overtake the `assign_lease` of its lease."""
        unsent, self._rt.unsent = self._rt.unsent, []
        for message in unsent:
            self._send(message)

    def _send(self, message: SlotMessage) -> None:
        """Deliver through the `pool.message_slot` activity; awaited before continue-as-new.

        An activity, not `get_external_workflow_handle().signal()`: see activities/slots.py.
        Messages to one slot go out one after another, each once the previous is answered, so
        an `end_lease` never overtakes its `assign_lease` (which would leave the slot LEASED
        to nobody).
        """
        slot = message.workflow_id
        previous = self._last_message.get(slot)

        async def send() -> None:
            if previous is not None:
                await previous
            try:
                answer = await workflow.execute_activity(
                    message_slot, message, **options.message_slot(self._cfg.slot)
                )
            except ActivityError as exc:  # a failing message must not fail the pool
                workflow.logger.warning("message to %s failed: %s", slot, exc)
                return
            if answer is not None:  # the slot's answer to an update
                self.slot_event(answer)

        task = asyncio.create_task(send())
        self._outbox.add(task)
        self._last_message[slot] = task

        def done(task: asyncio.Task[None]) -> None:
            self._outbox.discard(task)
            if self._last_message.get(slot) is task:
                del self._last_message[slot]

        task.add_done_callback(done)

    def _end_lease(self, lease: PoolLease, reason: str, *, tell_slot: bool = True) -> None:
        if lease.ended_at is not None:
            return
        lease.ended_at = self._now()
        lease.end_reason = reason
        view = self._rt.slots.get(lease.slot)
        if view is not None and view.lease_id == lease.lease_id:
            view.lease_id = None
            view.cleaning = True
        if tell_slot:
            self._message_slot(
                lease.slot, "end_lease", LeaseEndRequest(lease_id=lease.lease_id, reason=reason)
            )
        ended = sorted(
            (x for x in self._rt.leases.values() if x.ended_at),
            key=lambda x: x.ended_at or self._now(),
        )
        for old in ended[:-KEEP_ENDED_LEASES]:
            del self._rt.leases[old.lease_id]
        self._dirty = True

    def _known(self, request: LeaseRequest) -> PoolLease | None:
        """The lease an earlier call with this request id got (same id, same lease)."""
        return self._known_id(request.request_id)

    def _known_id(self, request_id: str) -> PoolLease | None:
        lease_id = self._rt.request_ids.get(request_id)
        return self._rt.leases.get(lease_id) if lease_id is not None else None

    def _refusal(self, idle: list[SlotView]) -> str | None:
        """Why no new lease can be granted now, or None; reads state only (validators ask)."""
        if self._rt.draining:
            return "pool is draining"
        if self._rt.safe_mode:
            return f"pool in safe mode: {self._rt.safe_reason}"
        if not idle:
            return "no idle READY slot; a replacement is being prepared"
        return None

    def _grant(self, request: LeaseRequest) -> LeaseGrant | None:
        """Lease the longest-idle READY slot, or None; synchronous, so never two per slot."""
        known = self._known(request)
        if known is not None:
            self._rt.unclaimed.pop(request.request_id, None)  # its caller has it now
            return self._grant_of(known)
        idle = self._idle_ready()
        if self._refusal(idle) is not None:
            self._dirty = True  # replenish now
            return None
        view = idle[0]
        assert view.connection_url is not None
        now = self._now()
        duration = request.duration or self._cfg.default_lease
        lease = PoolLease(
            lease_id=str(workflow.uuid4()),
            holder=request.holder,
            request_id=request.request_id,
            slot=view.index,
            connection_url=view.connection_url,
            granted_at=now,
            leased_until=now + duration,
        )
        self._rt.leases[lease.lease_id] = lease
        self._rt.request_ids[request.request_id] = lease.lease_id
        if len(self._rt.request_ids) > KEEP_REQUEST_IDS:
            oldest = next(iter(self._rt.request_ids))
            del self._rt.request_ids[oldest]
        self._rt.granted_total += 1
        view.lease_id = lease.lease_id
        view.state = S.LEASED  # the slot does not report this transition back
        return self._tell_slot(lease)

    def _tell_slot(self, lease: PoolLease) -> LeaseGrant:
        """Send a granted or renewed lease to its slot (the slot's copy is for status only)."""
        self._message_slot(
            lease.slot,
            "assign_lease",
            Lease(
                lease_id=lease.lease_id,
                holder=lease.holder,
                request_id=lease.request_id,
                granted_at=lease.granted_at,
                leased_until=lease.leased_until,
            ),
        )
        self._dirty = True
        return self._grant_of(lease)

    def _grant_of(self, lease: PoolLease) -> LeaseGrant:
        return LeaseGrant(
            lease_id=lease.lease_id,
            slot_id=slot_workflow_id(self._pool, lease.slot),
            slot=lease.slot,
            holder=lease.holder,
            request_id=lease.request_id,
            connection_url=lease.connection_url,
            granted_at=lease.granted_at,
            leased_until=lease.leased_until,
        )

    def _expire(self, now: datetime) -> None:
        for lease in self._active_leases():
            if lease.leased_until <= now:
                self._end_lease(lease, "expired")
        for waiting in list(self._rt.waiting):
            if waiting.deadline <= now:
                self._rt.waiting.remove(waiting)
                self._rt.expired_waits[waiting.request.request_id] = "no capacity before deadline"
        for request_id, deadline in list(self._rt.unclaimed.items()):
            if deadline <= now:
                del self._rt.unclaimed[request_id]
                unclaimed = self._known_id(request_id)
                if unclaimed is not None:
                    self._end_lease(unclaimed, "unclaimed: the caller never received the grant")

    def _grant_waiting(self) -> None:
        while self._rt.waiting and self._idle_ready():
            waiting = self._rt.waiting.pop(0)
            self._grant(waiting.request)

    def _check_lease_request(self, request: LeaseRequest) -> None:
        duration = request.duration or self._cfg.default_lease
        if duration <= timedelta(0):
            raise ValueError(f"lease duration must be positive, got {duration}")
        if duration > self._cfg.max_lease:
            raise ValueError(f"lease duration {duration} exceeds the maximum {self._cfg.max_lease}")

    # ---- reconcile ------------------------------------------------------------------------

    async def _reconcile(self) -> None:
        """Start, or retire, slots so that `min_ready` are idle and READY within the limits."""
        views = [v for v in self._rt.slots.values() if not v.retiring]
        idle = len(self._idle_ready())
        # A slot terminating after a failure replaces itself: it still counts as starting.
        starting = sum(1 for v in views if v.state in STARTING | {S.BLOCKED, S.TERMINATING})
        if self._rt.draining:
            for v in views:
                self._retire(v, "pool draining")
            return
        # Shrink: idle READY slots first, then starting ones; never a leased slot.
        excess_total = len(views) - self._cfg.max_slots
        excess_idle = idle + starting - self._cfg.min_ready
        for v in sorted(views, key=lambda v: (v.state != S.READY, -v.index)):
            if excess_total <= 0 and excess_idle <= 0:
                break
            if v.lease_id is None and (v.state == S.READY or v.state in STARTING):
                self._retire(v, "pool shrinking")
                excess_total -= 1
                excess_idle -= 1
        if self._rt.safe_mode:
            return
        wanted = self._cfg.min_ready - (idle + starting)
        room = self._cfg.max_slots - len([v for v in views if not v.retiring])
        starts = []
        for _ in range(max(0, min(wanted, room))):
            if self._budget_limited():
                break
            starts.append(self._start_slot())
        await asyncio.gather(*starts)

    def _budget_limited(self) -> bool:
        """Would one more slot at the price cap exceed the hourly budget?"""
        budget = self._cfg.budget_dph
        if budget is None:
            return False
        pending = sum(1 for v in self._rt.slots.values() if not v.instance_id and not v.retiring)
        projected = self._spend() + (pending + 1) * self._cfg.slot.constraints.max_dph
        return projected > budget

    def _start_slot(self) -> Awaitable[object]:
        """Reserve the slot now (so the budget sees it); the start completes when awaited."""
        index = self._rt.next_index
        self._rt.next_index += 1
        now = self._now()
        self._rt.slots[index] = SlotView(
            index=index, state=S.PREFLIGHT, since=now, reason="starting"
        )
        return workflow.start_child_workflow(
            WarmSlotWorkflow.run,
            SlotInput(
                pool=self._pool,
                index=index,
                config=self._slot_config(),
                report_to=pool_workflow_id(self._pool),
            ),
            id=slot_workflow_id(self._pool, index),
            parent_close_policy=workflow.ParentClosePolicy.ABANDON,
        )

    def _slot_config(self) -> SlotConfig:
        return self._cfg.slot.model_copy(
            update={"recycle_after_lease": self._cfg.recycle_after_lease}
        )

    def _retire(self, view: SlotView, reason: str) -> None:
        if view.retiring:
            return
        view.retiring = True
        self._message_slot(view.index, "retire", reason)

    # ---- messages -------------------------------------------------------------------------

    @workflow.signal
    def slot_event(self, event: SlotEvent) -> None:
        view = self._rt.slots.get(event.index)
        if view is None:
            return  # a slot this pool no longer tracks
        if event.at < view.since and event.state != S.DONE:
            # An older event delivered late: its state is stale, its rental and failure happened.
            self._count(view, event, late=True)
            if event.failure is not None and event.state != S.READY:
                self._record_failure(event, event.failure)
            return
        self._count(view, event)
        view.state = event.state
        view.since = event.at
        view.reason = event.reason
        view.connection_url = event.connection_url
        view.instance_id = event.instance_id
        view.dph_total = event.dph_total
        lease = self._rt.leases.get(view.lease_id) if view.lease_id else None
        if lease is not None and event.connection_url and event.state in SERVING:
            lease.connection_url = event.connection_url  # the slot re-validated a moved port
        refused = event.lease_id is not None and event.reason.startswith("lease refused")
        if refused and event.lease_id in self._rt.leases:
            self._end_lease(self._rt.leases[event.lease_id], event.reason, tell_slot=False)
        elif lease is not None:
            ended = event.ended_lease
            why = ended.reason if ended and ended.lease_id == lease.lease_id else None
            if why is not None or event.state not in SERVING:
                self._end_lease(lease, why or f"slot lost: {event.reason}", tell_slot=False)
        if event.state == S.READY:
            view.cleaning = False
            market.image_ready(self._rt, event.image)
        elif event.failure is not None:
            self._record_failure(event, event.failure)
        if event.state in GONE:
            del self._rt.slots[event.index]
        self._dirty = True

    def _count(self, view: SlotView, event: SlotEvent, *, late: bool = False) -> None:
        """Keep the cumulative provisioning figures (attempts, READY, time to READY, failures).

        A `late` event (older than the slot's last) counts its rental and its failure; the
        attempt's start is taken from it only while that attempt is still provisioning.
        """
        stats = self._rt.stats
        if event.state == S.RENTING and (late or view.state != S.RENTING):
            stats.provisions_started += 1
            if not late or (view.state in STARTING and view.attempt_started is None):
                view.attempt_started = event.at
        elif event.state == S.READY and view.attempt_started is not None and not late:
            stats.observe_ready((event.at - view.attempt_started).total_seconds())
            view.attempt_started = None
        if event.failure is not None and event.state != S.READY:
            stats.observe_failure(event.failure.value)
            if not late:
                view.attempt_started = None

    def _record_failure(self, event: SlotEvent, failure: FailureReason) -> None:
        """Keep the failure for the status, exclude the machine a host failure came from, and
        enter safe mode only for a systemic failure (`warmpool.market`)."""
        rt = self._rt
        reason = f"{failure.value}: {event.reason}"
        rt.failures.append(PoolFailure(at=self._now(), slot=event.index, reason=reason))
        del rt.failures[:-KEEP_FAILURES]
        systemic = market.record_failure(
            rt,
            event,
            now=self._now(),
            exclude_for=self._cfg.exclude_for,
            threshold=self._cfg.safe_mode_after,
        )
        if systemic is None or rt.safe_mode:
            return
        rt.safe_mode = True
        rt.safe_reason = systemic
        workflow.logger.warning("pool %s in safe mode: %s", self._pool, rt.safe_reason)
        for v in rt.slots.values():
            if v.state in STARTING and v.lease_id is None:
                self._retire(v, "pool in safe mode")

    @workflow.update
    def lease(self, request: LeaseRequest) -> LeaseGrant:
        grant = self._grant(request)
        if grant is None:  # the validator refuses first; kept for the type checker
            reason = self._refusal(self._idle_ready())
            raise no_capacity(f"no capacity in pool {self._pool}: {reason}")
        return grant

    @lease.validator
    def _validate_lease(self, request: LeaseRequest) -> None:
        """Refuse here, not in the handler: a refused update leaves nothing in history.

        No prewarm kick is needed: the pool reconciles after every change, so replacements
        for leased slots are already starting unless max_slots, the budget or safe mode stop
        them (and then a kick would start nothing either).
        """
        self._check_lease_request(request)
        if self._known(request) is None and (reason := self._refusal(self._idle_ready())):
            raise no_capacity(f"no capacity in pool {self._pool}: {reason}")

    @workflow.signal
    def request_lease(self, request: LeaseRequest) -> None:
        """Lease when capacity allows, up to `wait_for`; the outcome is read by `lease_request`."""
        try:
            self._check_lease_request(request)
        except ValueError as exc:
            self._rt.expired_waits[request.request_id] = str(exc)
            return
        if request.request_id in self._rt.request_ids or any(
            w.request.request_id == request.request_id for w in self._rt.waiting
        ):
            return
        if self._grant(request) is None:
            deadline = self._now() + min(request.wait_for, MAX_WAIT)
            self._rt.waiting.append(
                WaitingRequest(request=request, since=self._now(), deadline=deadline)
            )
            self._dirty = True

    @workflow.query
    def lease_request(self, request_id: str) -> LeaseLookup:
        lease_id = self._rt.request_ids.get(request_id)
        if lease_id is not None and lease_id in self._rt.leases:
            return LeaseLookup(
                request_id=request_id,
                status="granted",
                grant=self._grant_of(self._rt.leases[lease_id]),
            )
        if any(w.request.request_id == request_id for w in self._rt.waiting):
            return LeaseLookup(request_id=request_id, status="pending")
        if request_id in self._rt.expired_waits:
            return LeaseLookup(
                request_id=request_id, status="expired", reason=self._rt.expired_waits[request_id]
            )
        return LeaseLookup(request_id=request_id, status="unknown")

    @workflow.update
    def renew(self, request: RenewRequest) -> LeaseGrant:
        lease = self._rt.leases[request.lease_id]
        lease.leased_until = self._now() + (request.duration or self._cfg.default_lease)
        return self._tell_slot(lease)

    @renew.validator
    def _validate_renew(self, request: RenewRequest) -> None:
        lease = self._rt.leases.get(request.lease_id)
        if lease is None:
            raise ValueError(f"unknown lease {request.lease_id}")
        if lease.ended_at is not None:
            raise ValueError(f"lease {request.lease_id} ended: {lease.end_reason}")
        duration = request.duration or self._cfg.default_lease
        if duration <= timedelta(0) or duration > self._cfg.max_lease:
            raise ValueError(f"lease duration must be in (0, {self._cfg.max_lease}]")

    @workflow.update
    def release(self, lease_id: str) -> PoolLease:
        """Idempotent: releasing an ended lease answers it as it ended."""
        lease = self._rt.leases[lease_id]
        self._end_lease(lease, "released")
        return lease

    @release.validator
    def _validate_release(self, lease_id: str) -> None:
        if lease_id not in self._rt.leases:
            raise ValueError(f"unknown lease {lease_id}")

    @workflow.query
    def lease_info(self, lease_id: str) -> PoolLease | None:
        return self._rt.leases.get(lease_id)

    @workflow.signal
    def lease_unanswered(self, request_id: str) -> None:
        """A caller gave up waiting for this request's answer: a lease granted to it is ended
        unless the request is asked again within the claim window (same id, same lease), and
        a request still waiting is dropped. Nothing stays leased to nobody."""
        for waiting in list(self._rt.waiting):
            if waiting.request.request_id == request_id:
                self._rt.waiting.remove(waiting)
                self._rt.expired_waits[request_id] = "abandoned by the caller"
        lease = self._known_id(request_id)
        if lease is None or lease.ended_at is None:  # granted, or maybe still on its way
            self._rt.unclaimed[request_id] = self._now() + self._cfg.claim_window
            self._dirty = True

    @workflow.signal(name=EXCLUDE_SIGNAL)
    def exclude_machine(self, exclusion: MachineExclusion) -> None:
        """A slot saw this machine fail (sent before it releases the machine)."""
        now = self._now()
        market.exclude(
            self._rt,
            exclusion.machine_id,
            now=now,
            until=now + self._cfg.exclude_for,
            reason=exclusion.reason,
            slot=exclusion.slot,
        )

    @workflow.query
    def excluded_machines(self) -> list[int]:
        """Machines no slot of this pool may rent now (slots' searches ask for them)."""
        return market.excluded_ids(self._rt, self._now())

    @workflow.signal
    def prewarm(self) -> None:
        """Bring the pool to its target now (also lifts nothing else)."""
        self._dirty = True

    @workflow.update
    def resize(self, request: ResizeRequest) -> PoolStatus:
        update = request.model_dump(exclude_none=True)
        self._cfg = self._cfg.model_copy(update=update)
        self._dirty = True
        return self.status()

    @resize.validator
    def _validate_resize(self, request: ResizeRequest) -> None:
        min_ready = self._cfg.min_ready if request.min_ready is None else request.min_ready
        max_slots = self._cfg.max_slots if request.max_slots is None else request.max_slots
        if min_ready > max_slots:
            raise ValueError(f"min_ready {min_ready} exceeds max_slots {max_slots}")

    @workflow.signal
    def drain(self) -> None:
        """Retire every slot once its lease ends; the pool finishes when none is left."""
        self._rt.draining = True
        self._dirty = True

    @workflow.signal
    def resume(self) -> None:
        """Lift safe mode (and a drain) after an operator acted."""
        self._rt.safe_mode = False
        self._rt.safe_reason = None
        self._rt.suspects.clear()
        self._rt.draining = False
        self._dirty = True

    @workflow.query
    def status(self) -> PoolStatus:
        views = sorted(self._rt.slots.values(), key=lambda v: v.index)
        counts: dict[str, int] = {}
        for v in views:
            counts[v.state.value] = counts.get(v.state.value, 0) + 1
        ended = [x for x in self._rt.leases.values() if x.ended_at is not None]
        return PoolStatus(
            pool=self._pool,
            config=self._cfg,
            slots=views,
            counts=counts,
            idle_ready=len(self._idle_ready()),
            spend_per_hour=round(self._spend(), 4),
            budget_limited=self._budget_limited(),
            safe_mode=self._rt.safe_mode,
            safe_reason=self._rt.safe_reason,
            draining=self._rt.draining,
            active_leases=self._active_leases(),
            recent_leases=ended[-10:],
            waiting=len(self._rt.waiting),
            failures=self._rt.failures,
            granted_total=self._rt.granted_total,
            stats=self._rt.stats,
            excluded_machines=sorted(self._rt.excluded.values(), key=lambda m: m.at),
        )
