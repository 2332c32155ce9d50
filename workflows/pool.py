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
    from activities.slots import MachineExclusion, message_slot
    from warmpool import market, scaling
    from warmpool import pool_core as core
    from warmpool.environment import Environment
    from warmpool.errors import ErrorType
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
    from warmpool.names import Pool
    from workflows import options
    from workflows.slot import WarmSlotWorkflow

S = SlotState
KEEP_FAILURES = 20
KEEP_REQUEST_IDS = 2_000
MAX_WAIT = timedelta(minutes=30)
CONTINUE_AS_NEW_EVENTS = 1_000


def seconds(duration: timedelta) -> str:
    """A duration in the product's words (`3600 s`), never Python's `1:00:00` repr."""
    return f"{duration.total_seconds():g} s"


def no_capacity(message: str) -> ApplicationError:
    return ApplicationError(message, type=ErrorType.NO_CAPACITY, non_retryable=True)


@workflow.defn(name=Pool.WORKFLOW)
class WarmPoolWorkflow:
    @workflow.init
    def __init__(self, input: PoolInput) -> None:
        self._pool = input.pool
        self._cfg = input.config
        self._rt = input.runtime or PoolRuntime()
        if input.runtime is None and input.config.environment is not None:
            core.apply_environment(self._rt, input.config.environment)  # started with one
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
            scaling.account(self._rt, self._now())
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
        times += scaling.wake_times(self._rt, self._cfg, now)
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
        return core.idle_ready(self._rt)

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
        scaling.account(self._rt, self._now())
        if not core.end_lease(self._rt, lease, reason, now=self._now()):
            return
        if tell_slot:
            self._message_slot(
                lease.slot, "end_lease", LeaseEndRequest(lease_id=lease.lease_id, reason=reason)
            )
        self._dirty = True

    def _known(self, request: LeaseRequest) -> PoolLease | None:
        """The lease an earlier call with this request id got (same id, same lease)."""
        return self._known_id(request.request_id)

    def _known_id(self, request_id: str) -> PoolLease | None:
        lease_id = self._rt.request_ids.get(request_id)
        return self._rt.leases.get(lease_id) if lease_id is not None else None

    def _refusal(self, idle: list[SlotView]) -> str | None:
        """Why no new lease can be granted now, or None; reads state only (validators ask)."""
        return core.refusal(self._rt, idle)

    def _grant(self, request: LeaseRequest) -> LeaseGrant | None:
        """Lease the longest-idle READY slot, or None; synchronous, so never two per slot."""
        known = self._known(request)
        if known is not None:
            self._rt.unclaimed.pop(request.request_id, None)  # its caller has it now
            return self._grant_of(known)
        idle = core.matching(self._rt, self._idle_ready(), request)
        if self._refusal(idle) is not None:
            self._dirty = True  # replenish now
            return None
        view = idle[0]
        assert view.connection_url is not None
        now = self._now()
        scaling.account(self._rt, now)
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
        """Grant waiting requests in order; one whose environment no idle slot has waits on
        without holding up the others."""
        for waiting in list(self._rt.waiting):
            if not self._idle_ready():
                return
            if self._grant(waiting.request) is not None:
                self._rt.waiting.remove(waiting)
                scaling.observe_wait(self._rt, (self._now() - waiting.since).total_seconds())

    def _check_lease_request(self, request: LeaseRequest) -> None:
        duration = request.duration or self._cfg.default_lease
        if duration <= timedelta(0):
            raise ValueError(f"lease duration must be positive, got {seconds(duration)}")
        if duration > self._cfg.max_lease:
            raise ValueError(
                f"lease duration {seconds(duration)} exceeds the maximum "
                f"{seconds(self._cfg.max_lease)}"
            )

    # ---- reconcile ------------------------------------------------------------------------

    async def _reconcile(self) -> None:
        """Start, resume, park or retire slots as the scaling policy asks (`core.plan`)."""
        now = self._now()
        plan = core.plan(self._rt, self._cfg, now)
        for decision in plan.decisions:
            self._announce(decision.describe())
        for index, reason in plan.retire:
            self._retire(self._rt.slots[index], reason)
        for index in plan.park:
            self._move(index, S.STOPPING, "park", "surplus: parked in the stopped tier")
        for index in plan.unpark:
            self._move(index, S.RESUMING, "unpark", "capacity wanted: resuming")
        await asyncio.gather(*(self._start_slot() for _ in range(plan.start)))

    def _announce(self, text: str) -> None:
        """A scaling decision, in the status and in the pool's history (its memo)."""
        workflow.logger.info("pool %s %s", self._pool, text)
        workflow.upsert_memo({"scaling": text})

    def _move(self, index: int, state: SlotState, message: str, reason: str) -> None:
        """Park or resume a slot; the pool marks the new state itself (as it marks LEASED) so
        that no lease is granted on a slot that is leaving, and counts it at once."""
        view = self._rt.slots[index]
        view.state = state
        view.since = self._now()
        view.reason = reason
        self._message_slot(index, message, reason)

    def _start_slot(self) -> Awaitable[object]:
        """Reserve the slot now (so the budget sees it); the start completes when awaited."""
        index = self._rt.next_index
        self._rt.next_index += 1
        now = self._now()
        env = self._cfg.environment
        self._rt.slots[index] = SlotView(
            index=index,
            state=S.PREFLIGHT,
            since=now,
            reason="starting",
            env_version=env.version if env else None,
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
        """The slot settings, with the pool's target environment (and its images)."""
        update: dict[str, object] = {"recycle_after_lease": self._cfg.recycle_after_lease}
        env = self._cfg.environment
        if env is not None:
            update |= {
                "environment": env,
                "image": env.image,
                "fallback_image": env.fallback_image or self._cfg.slot.fallback_image,
            }
        return self._cfg.slot.model_copy(update=update)

    def _retire(self, view: SlotView, reason: str) -> None:
        if view.retiring:
            return
        view.retiring = True
        self._message_slot(view.index, "retire", reason)

    # ---- messages -------------------------------------------------------------------------

    @workflow.signal(name=Pool.SLOT_EVENT)
    def slot_event(self, event: SlotEvent) -> None:
        scaling.account(self._rt, self._now())
        if core.merge_event(self._rt, event, now=self._now()) and event.failure is not None:
            self._record_failure(event, event.failure)
        if event.state == S.READY:
            market.image_ready(self._rt, event.image, event.env_version)
        self._dirty = True

    def _record_failure(self, event: SlotEvent, failure: FailureReason) -> None:
        """Keep the failure for the status, exclude the machine a host failure came from, and
        enter safe mode only for a systemic failure (`warmpool.market`)."""
        rt = self._rt
        reason = event.reason
        if not reason.startswith(failure.value):
            reason = f"{failure.value}: {reason}"
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

    @workflow.update(name=Pool.LEASE)
    async def lease(self, request: LeaseRequest) -> LeaseGrant:
        """Grant an idle READY slot at once, or wait (`clean_wait` at most) for one that is only
        being cleaned after its last lease. A refusal for lack of capacity counts as demand:
        the policy grows the pool for it (`warmpool.scaling.target`)."""
        repeat = self._known(request) is not None
        grant = self._grant(request)
        if repeat and grant is not None:
            return grant
        asked = self._now()
        if grant is None and self._cleaning_soon():
            self._rt.refused[request.request_id] = asked  # demand while it waits
            self._dirty = True
            try:
                await workflow.wait_condition(
                    lambda: bool(self._idle_ready()) or not self._cleaning_soon(),
                    timeout=self._cfg.clean_wait,
                )
            except TimeoutError:
                pass
            grant = self._grant(request)
        if grant is None:
            self._rt.costs.refusals += 1
            reason = self._refusal(core.matching(self._rt, self._idle_ready(), request))
            if self._idle_ready() and (request.min_environment or request.node_class):
                reason = f"no capacity with that environment ({core.wanted_env(request)})"
            self._rt.refused[request.request_id] = self._now()
            self._dirty = True
            raise no_capacity(f"no capacity in pool {self._pool}: {reason}")
        scaling.observe_wait(self._rt, (self._now() - asked).total_seconds())
        return grant

    def _cleaning_soon(self) -> bool:
        """A slot is only cleaning after its last lease: capacity is seconds away."""
        if self._rt.draining or self._rt.safe_mode:
            return False
        return any(
            v.cleaning and v.lease_id is None and not v.retiring and v.state in core.SERVING
            for v in self._rt.slots.values()
        )

    @lease.validator
    def _validate_lease(self, request: LeaseRequest) -> None:
        """Refuse here what no capacity would change (a bad duration, a draining pool, safe
        mode): a refused update leaves nothing in history. Lack of capacity is refused by the
        handler, which records it as demand."""
        self._check_lease_request(request)
        if self._known(request) is not None:
            return
        if self._rt.draining or self._rt.safe_mode:
            reason = self._refusal(self._idle_ready())
            raise no_capacity(f"no capacity in pool {self._pool}: {reason}")

    @workflow.signal(name=Pool.REQUEST_LEASE)
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
        if self._grant(request) is not None:
            scaling.observe_wait(self._rt, 0.0)
        else:
            deadline = self._now() + min(request.wait_for, MAX_WAIT)
            self._rt.waiting.append(
                WaitingRequest(request=request, since=self._now(), deadline=deadline)
            )
            self._dirty = True

    @workflow.query(name=Pool.LEASE_REQUEST)
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

    @workflow.update(name=Pool.RENEW)
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
            raise ValueError(f"lease duration must be in (0, {seconds(self._cfg.max_lease)}]")

    @workflow.update(name=Pool.RELEASE)
    def release(self, lease_id: str) -> PoolLease:
        """Idempotent: releasing an ended lease answers it as it ended."""
        lease = self._rt.leases[lease_id]
        self._end_lease(lease, "released")
        return lease

    @release.validator
    def _validate_release(self, lease_id: str) -> None:
        if lease_id not in self._rt.leases:
            raise ValueError(f"unknown lease {lease_id}")

    @workflow.query(name=Pool.LEASE_INFO)
    def lease_info(self, lease_id: str) -> PoolLease | None:
        return self._rt.leases.get(lease_id)

    @workflow.signal(name=Pool.LEASE_UNANSWERED)
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

    @workflow.signal(name=Pool.EXCLUDE_MACHINE)
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

    @workflow.query(name=Pool.EXCLUDED_MACHINES)
    def excluded_machines(self) -> list[int]:
        """Machines no slot of this pool may rent now (slots' searches ask for them)."""
        return market.excluded_ids(self._rt, self._now())

    @workflow.signal(name=Pool.PREWARM)
    def prewarm(self) -> None:
        """Bring the pool to its target now (also lifts nothing else)."""
        self._dirty = True

    @workflow.update(name=Pool.RESIZE)
    def resize(self, request: ResizeRequest) -> PoolStatus:
        self._cfg = core.resized(self._cfg, request)
        self._dirty = True
        return self.status()

    @resize.validator
    def _validate_resize(self, request: ResizeRequest) -> None:
        core.resized(self._cfg, request)

    @workflow.update(name=Pool.SET_ENVIRONMENT)
    def set_environment(self, env: Environment) -> PoolStatus:
        """Make `env` the pool's target: slots on another version are replaced a few at a
        time (`core.plan`), never dropping capacity. Re-applying a previous file rolls back."""
        core.apply_environment(self._rt, env)
        self._cfg = self._cfg.model_copy(update={"environment": env})
        self._announce(f"environment {env.version} is the target")
        self._dirty = True
        return self.status()

    @set_environment.validator
    def _validate_set_environment(self, env: Environment) -> None:
        if self._rt.draining:
            raise ValueError("pool is draining")

    @workflow.signal(name=Pool.DRAIN)
    def drain(self) -> None:
        """Retire every slot once its lease ends; the pool finishes when none is left."""
        self._rt.draining = True
        self._dirty = True

    @workflow.signal(name=Pool.RESUME)
    def resume(self) -> None:
        """Lift safe mode (and a drain) after an operator acted; BLOCKED slots re-check their
        tokens now instead of at their periodic re-check."""
        for view in self._rt.slots.values():
            if view.state == S.BLOCKED and not view.retiring:
                self._message_slot(view.index, "resume", "pool resumed")
        self._rt.safe_mode = False
        self._rt.safe_reason = None
        self._rt.suspects.clear()
        self._rt.draining = False
        self._dirty = True

    @workflow.query(name=Pool.STATUS)
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
            spend_per_hour=round(core.spend(self._rt), 4),
            budget_limited=core.budget_limited(self._rt, self._cfg),
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
            scaling=core.scaling_view(self._rt, self._cfg, self._now()),
            costs=scaling.cost_view(self._rt),
            environment_version=self._cfg.environment.version if self._cfg.environment else None,
            slots_by_environment=core.slots_by_environment(self._rt),
        )
