"""What does one slot of the pool do, from preflight to READY and back? WarmSlotWorkflow.

One workflow per slot (`warmpool/<pool>/slot-<k>`), living as long as the slot: it rents an
instance, watches it come up, validates its ports, serves it, and replaces it when it fails.
Every side effect is an activity; every wait is a durable timer or a long-running activity
with heartbeats. The loop runs one short step per iteration so that continue-as-new can
happen at any state boundary, carrying the whole `SlotRuntime`.

While an instance starts (PROVISIONING to VALIDATING_PORTS) an `ssh.follow_logs` activity may
follow its logs and signal new lines (`ssh_log`) into a bounded tail; a fatal line cuts any wait
short and destroys the instance at once. Becoming READY, terminating or continuing as new
cancels the collector.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from activities.comfy import (
        CleanInput,
        ComfyActivities,
        ProbeInput,
        WarmupInput,
        WatchInput,
        WatchResult,
    )
    from activities.slots import MachineExclusion, exclude_machine
    from activities.tokens import TokenActivities, TokenCheckInput
    from activities.vast import RentInput, SearchInput, VastActivities
    from warmpool import search_attributes as sa
    from warmpool import slot_core as core
    from warmpool.environment import (
        EnvironmentCheckInput,
        provisioning_progress,
        required_checks,
    )
    from warmpool.errors import ErrorType
    from warmpool.labels import slot_label, slot_workflow_id
    from warmpool.lifecycle import Assessment, StatusVerdict, assess, backoff_delay
    from warmpool.models import (
        FailureReason,
        InstanceView,
        Lease,
        LeaseEndRequest,
        Observation,
        PortReport,
        SlotEvent,
        SlotInput,
        SlotRuntime,
        SlotState,
        SlotStatus,
        SshLogBatch,
    )
    from warmpool.names import Pool, Slot
    from warmpool.slot_core import COLLECTING, FailureNote, LeaseAnswer, ProbeFailure, RentOutcome
    from warmpool.tokens import TokenService
    from workflows import options
    from workflows.collector import SshCollector

T = TypeVar("T")

S = SlotState
VISIBILITY_GRACE = timedelta(minutes=2)
"""A new contract can be invisible to show/list for a while (vastai-api.md §3): not "gone"."""
BLOCKED_RECHECK = timedelta(minutes=10)
OFFER_SPREAD = 5
MAX_HISTORY_EVENTS = 8_000


def error_type(err: ActivityError) -> str | None:
    """The `type` of the ApplicationError an activity failed with (activities/errors.py)."""
    return err.cause.type if isinstance(err.cause, ApplicationError) else None


class Interrupted(Exception):
    """Raised inside a step that must stop waiting: a retire, or a fatal log line."""


@workflow.defn(name=Slot.WORKFLOW)
class WarmSlotWorkflow:
    @workflow.init
    def __init__(self, input: SlotInput) -> None:
        self._input = input
        self._cfg = core.with_environment_wait(input.config)
        self._rt = input.runtime or SlotRuntime()
        self._resume_requested = False
        self._failure: FailureNote | None = None
        self._exclusion: MachineExclusion | None = None
        """A bad machine to tell the pool about before the next step releases it."""
        self._outbox: set[asyncio.Task[None]] = set()
        self._stopping: set[asyncio.Task[None]] = set()
        self._collector = SshCollector(
            self._rt, self._cfg, self._settle_later, name=f"slot {input.index}"
        )
        self._cleaning = False
        self._report_clean = False
        """A clean the pool did not ask for (an overdue lease): report the READY after it."""
        self._phases: dict[SlotState, Callable[[], Awaitable[None]]] = {
            S.PREFLIGHT: self._preflight,
            S.BLOCKED: self._blocked,
            S.SEARCHING: self._search,
            S.RENTING: self._rent,
            S.PROVISIONING: self._provision,
            S.PROBING: self._probe,
            S.VALIDATING_PORTS: self._validate,
            S.INSTALLING: self._install,
            S.READY: self._serve,
            S.LEASED: self._serve,
            S.DRAINING: self._drain,
            S.TERMINATING: self._terminate,
            S.BACKOFF: self._backoff,
            S.STOPPING: self._park,
            S.STOPPED: self._parked,
            S.RESUMING: self._resume,
        }

    # ---- run loop -------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: SlotInput) -> SlotStatus:
        if self._rt.state_since is None:
            self._enter(self._rt.state, "slot started")
        else:
            self._upsert()
        while self._rt.state != S.DONE:
            if self._rt.retiring and self._rt.state not in (S.TERMINATING, S.DRAINING):
                self._enter(S.DRAINING, "retire requested")
            self._collect_logs()
            if self._should_continue_as_new():
                self._collector.stop()
                await workflow.wait_condition(
                    lambda: (
                        self._clean_pending()
                        or (
                            workflow.all_handlers_finished()
                            and not self._outbox
                            and not self._stopping
                        )
                    )
                )
                if self._collector.fatal_pending() or self._clean_pending():
                    # A stopping collector returned a fatal line, or a release came in (its
                    # `end_lease` update waits for the clean): act on it first.
                    continue
                workflow.continue_as_new(
                    SlotInput(
                        pool=input.pool,
                        index=input.index,
                        config=self._cfg,
                        runtime=self._rt,
                        report_to=input.report_to,
                    )
                )
            try:
                await self._tell_pool_exclusion()
                await self._phases[self._rt.state]()
            except Interrupted:
                continue
            except ActivityError as err:
                await self._activity_failed(err)
        # The pool hears DONE; the collector was cancelled on leaving the starting states.
        await workflow.wait_condition(lambda: not self._outbox and not self._stopping)
        return self.status()

    async def _activity_failed(self, err: ActivityError) -> None:
        """An activity gave up after its retries: never fail the slot while it holds money.

        A provider call that failed says nothing about the instance (DESIGN: an API error never
        destroys one): the slot waits and asks again, counting no failure. A rejected key is
        systemic: the pool hears it once (safe mode), and a slot without an instance blocks.
        """
        rt = self._rt
        cause = err.cause
        detail = f"{err.activity_type} failed: {cause or err}"
        rt.last_failure = detail[:500]
        workflow.logger.warning("slot %s: %s", self._input.index, detail)
        if rt.state == S.TERMINATING:
            return  # the destroy loop handles its own failures
        if err.activity_type.startswith("vast."):
            rejected = error_type(err) == ErrorType.VAST_AUTH
            if rejected:
                self._key_rejected(detail)
            if rt.instance is not None:
                await self._sleep(self._cfg.polling.active)
            elif rejected:
                rt.blocked_reason = f"provider key rejected: {detail}"[:500]
                self._enter(S.BLOCKED, rt.blocked_reason)
            else:
                self._enter(S.BACKOFF, f"provider API: {detail}")
            return
        if rt.instance is not None:
            self._fail(FailureReason.FATAL_STATUS, detail, exclude=False)
            self._enter(S.TERMINATING, detail)
        else:
            rt.counters.consecutive_failures += 1
            self._enter(S.BACKOFF, detail)

    def _key_rejected(self, detail: str) -> None:
        """Count a rejected key once per episode (the pool enters safe mode on it); a slot
        holding an instance tells the pool now, since it makes no transition."""
        rt = self._rt
        if rt.provider_refused:
            return
        rt.provider_refused = True
        self._fail(FailureReason.PROVIDER_KEY_REJECTED, detail, exclude=False)
        if rt.instance is not None:
            self._report(rt.last_failure or detail, failure=self._take_failure())

    def _should_continue_as_new(self) -> bool:
        """Not while a released lease is being cleaned: its `end_lease` update waits for that."""
        if self._clean_pending():
            return False
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() > MAX_HISTORY_EVENTS
        )

    def _clean_pending(self) -> bool:
        return core.clean_pending(self._rt, cleaning=self._cleaning)

    # ---- messages -------------------------------------------------------------------------

    @workflow.query(name=Slot.STATUS)
    def status(self) -> SlotStatus:
        rt = self._rt
        return SlotStatus(
            workflow_id=slot_workflow_id(self._input.pool, self._input.index),
            pool=self._input.pool,
            index=self._input.index,
            state=rt.state,
            attempt=rt.attempt,
            instance=rt.instance,
            offer=rt.offer,
            image_used=rt.image_used,
            connection_url=rt.connection_url,
            port_report=rt.port_report,
            lease=rt.lease,
            last_lease_end=rt.last_lease_end,
            counters=rt.counters,
            transitions=rt.transitions,
            last_failure=rt.last_failure,
            blocked_reason=rt.blocked_reason,
            retiring=rt.retiring,
            state_since=rt.state_since,
            ready_since=rt.ready_since,
            time_to_ready_s=rt.time_to_ready_s,
            warmup_seconds=rt.warmup_seconds,
            environment_version=self._env_version(),
            env_missing=rt.env_missing,
            env_progress=provisioning_progress(rt.log_tail, env=self._cfg.environment),
            excluded_machines=rt.excluded_machines,
            log_tail=rt.log_tail,
            log_lines_total=rt.log_lines_total,
            log_error=rt.log_error,
        )

    @workflow.signal(name=Slot.RETIRE)
    def retire(self, reason: str) -> None:
        """Destroy the instance (after any lease ends) and finish."""
        if not self._rt.retiring:
            workflow.logger.info("slot retiring: %s", reason)
        self._rt.retiring = True

    @workflow.signal(name=Slot.SSH_LOG)
    def ssh_log(self, batch: SshLogBatch) -> None:
        """New log lines from the collector; re-sent batches overlap, so keep only unseen lines."""
        core.merge_log_batch(self._rt, batch, keep=self._cfg.ssh.tail_lines)

    @workflow.signal(name=Slot.RESUME)
    def resume(self, reason: str = "") -> None:
        """Lift BLOCKED (e.g. after an operator fixed a token): preflight runs again at once.
        Sent by an operator (`slot resume`) or by the pool's own `resume`, with why."""
        self._resume_requested = True

    @workflow.signal(name=Slot.PARK)
    def park(self, reason: str = "") -> None:
        """The pool parks this idle READY slot: stop the instance (disk kept and billed, GPU
        not). Anything else answers with the slot's state, which corrects the pool's mirror."""
        rt = self._rt
        if rt.state == S.READY and rt.lease is None and not rt.retiring:
            rt.park_requested = True
        else:
            self._report(f"not parked: slot is {rt.state.value}")

    @workflow.signal(name=Slot.UNPARK)
    def unpark(self, reason: str = "") -> None:
        """The pool wants this parked slot warm again: resume the instance."""
        rt = self._rt
        if rt.state in (S.STOPPING, S.STOPPED) and not rt.retiring:
            rt.unpark_requested = True
        else:
            self._report(f"not resumed: slot is {rt.state.value}")

    @workflow.update(name=Slot.ASSIGN_LEASE)
    def assign_lease(self, lease: Lease) -> SlotEvent:
        """The pool (the lease authority) leased this slot, or renewed its lease; answered
        with the slot's state then, a refusal ("lease refused: ...") if it is not READY.

        An update, as `end_lease` is: the pool sends a slot's messages one after another, so
        a lease's end never reaches the slot before the lease does.
        """
        answer = core.assign_lease(self._rt, lease)
        if answer == LeaseAnswer.ENDED:
            return self._event(f"lease {lease.lease_id} has ended")
        if answer == LeaseAnswer.REFUSED:
            return self._event(
                f"lease refused: slot is {self._rt.state.value}",
                lease_id=lease.lease_id,
                refused=True,
            )
        if answer == LeaseAnswer.ACCEPTED:
            # The pool marked the slot LEASED when it granted the lease: no slot event.
            self._enter(S.LEASED, f"leased to {lease.holder} ({lease.lease_id})", report=False)
        return self._event(self._last_reason())

    @workflow.update  # Slot.END_LEASE: `name=` would lose the SDK's typing of an async update
    async def end_lease(self, request: LeaseEndRequest) -> SlotEvent:
        """Release or expiry: clean ComfyUI (or recycle) before serving anyone else.

        Answered once the clean is over, with the slot's state then: the pool reads READY from
        the answer, not from a slot event that could race its continue-as-new. A repeat, or a
        lease this slot does not hold, waits for any clean in progress and answers the same way.
        """
        rt = self._rt
        if rt.lease is not None and rt.lease.lease_id == request.lease_id:
            self._end_lease(request.reason)
            rt.needs_clean = True
        await workflow.wait_condition(lambda: not self._clean_pending())
        return self._event(self._last_reason())

    # ---- helpers --------------------------------------------------------------------------

    def _now(self) -> datetime:
        return workflow.now()

    def _last_reason(self) -> str:
        return self._rt.transitions[-1].reason if self._rt.transitions else ""

    def _enter(self, state: SlotState, reason: str, *, report: bool = True) -> None:
        core.record_transition(
            self._rt, state, reason, now=self._now(), keep=self._cfg.transitions_kept
        )
        workflow.logger.info("slot %s -> %s: %s", self._input.index, state, reason[:300])
        self._upsert()
        failure = self._take_failure()
        if report:
            self._report(reason, failure=failure)

    def _take_failure(self) -> FailureNote | None:
        failure, self._failure = self._failure, None
        return failure

    def _report(
        self, reason: str, *, failure: FailureNote | None = None, lease_id: str | None = None
    ) -> None:
        """Tell the pool (if any) about this slot; fire-and-forget, awaited before CAN."""
        if not self._input.report_to:
            return
        event = self._event(reason, failure=failure, lease_id=lease_id)
        task = asyncio.create_task(self._send(event))
        self._outbox.add(task)
        task.add_done_callback(self._outbox.discard)

    def _event(
        self,
        reason: str,
        *,
        failure: FailureNote | None = None,
        lease_id: str | None = None,
        refused: bool = False,
    ) -> SlotEvent:
        rt = self._rt
        machine = rt.instance.machine_id if rt.instance else None
        return SlotEvent(
            index=self._input.index,
            state=rt.state,
            at=self._now(),
            reason=reason[:300],
            connection_url=rt.connection_url,
            instance_id=rt.instance.id if rt.instance else None,
            dph_total=(
                core.stopped_dph(rt, self._cfg)
                if rt.state in (S.STOPPING, S.STOPPED)
                else rt.instance.dph_total
                if rt.instance
                else None
            ),
            failure=failure.reason if failure else None,
            machine_id=failure.machine_id if failure else machine,
            image=rt.image_used,
            host_fault=failure.host_fault if failure else False,
            image_failure=failure.image_failure if failure else False,
            env_version=self._env_version(),
            missing=(
                rt.env_missing
                if failure and failure.reason == FailureReason.ENVIRONMENT_INCOMPLETE
                else []
            ),
            lease_id=lease_id or (rt.lease.lease_id if rt.lease else None),
            lease_refused=refused,
            ended_lease=(
                LeaseEndRequest(lease_id=end.lease_id, reason=end.reason)
                if (end := rt.last_lease_end)
                else None
            ),
        )

    async def _send(self, event: SlotEvent) -> None:
        assert self._input.report_to is not None
        pool = workflow.get_external_workflow_handle(self._input.report_to)
        try:
            await pool.signal(Pool.SLOT_EVENT, event)
        except Exception as exc:  # a missing pool must not fail the slot
            workflow.logger.warning("cannot report to %s: %s", self._input.report_to, exc)

    def _env_version(self) -> str | None:
        env = self._cfg.environment
        return env.version if env is not None else None

    def _upsert(self) -> None:
        instance_id = self._rt.instance.id if self._rt.instance else 0
        workflow.upsert_search_attributes(
            [
                sa.POOL_NAME.value_set(self._input.pool),
                sa.SLOT_STATE.value_set(self._rt.state.value),
                sa.INSTANCE_ID.value_set(instance_id),
                sa.ENV_VERSION.value_set(self._env_version() or "none"),
            ]
        )

    def _fail(
        self,
        reason: FailureReason,
        detail: str,
        *,
        exclude: bool = True,
        image_failure: bool = False,
    ) -> None:
        """Record a failed attempt (reported with the next transition); a machine the host
        failed on is told to the pool before the next step releases it."""
        note = core.record_failure(
            self._rt, self._cfg, reason, detail, exclude=exclude, image_failure=image_failure
        )
        self._failure = note
        if note.host_fault and note.machine_id is not None and self._input.report_to:
            self._exclusion = MachineExclusion(
                pool_workflow_id=self._input.report_to,
                machine_id=note.machine_id,
                reason=reason.value,
                slot=self._input.index,
            )

    async def _tell_pool_exclusion(self) -> None:
        """Exclude a failed machine pool-wide before it is destroyed or searched past: the
        slot event that also says so may arrive after another slot's search."""
        exclusion, self._exclusion = self._exclusion, None
        if exclusion is None:
            return
        try:
            await workflow.execute_activity(
                exclude_machine, exclusion, **options.exclude_machine()
            )
        except ActivityError as err:  # best effort: the slot event carries it too
            workflow.logger.warning("could not tell the pool to exclude: %s", err.cause)

    async def _wait(self, condition: Callable[[], bool], limit: timedelta) -> bool:
        """A durable timer cut short by `condition`; True if the condition ended the wait."""
        try:
            await workflow.wait_condition(condition, timeout=limit)
        except builtins.TimeoutError:
            return False
        return True

    def _interrupted(self) -> bool:
        return self._rt.retiring or self._collector.fatal_pending()

    async def _sleep(self, delay: timedelta) -> None:
        """A durable timer that a retire or a fatal log line cuts short."""
        if await self._wait(self._interrupted, delay):
            raise Interrupted()

    async def _interruptible(self, handle: workflow.ActivityHandle[T]) -> T:
        """Await an activity, cancelling it on a retire or a fatal log line meanwhile."""
        await workflow.wait_condition(lambda: handle.done() or self._interrupted())
        if not handle.done():
            handle.cancel()
            try:
                await handle
            except (ActivityError, asyncio.CancelledError):
                pass
            raise Interrupted()
        return await handle

    # ---- SSH log collector ----------------------------------------------------------------

    def _collect_logs(self) -> None:
        """Act on a fatal line a collector returned, then start or stop the collector."""
        fatal = self._collector.take_fatal()
        if fatal is not None and self._rt.state in COLLECTING:
            # once READY, the watch decides the instance's fate
            self._fail(FailureReason.FATAL_LOG, f"{fatal.path}: {fatal.fatal_line}")
            self._enter(S.TERMINATING, f"fatal log line: {fatal.fatal_line}")
        self._collector.sync()

    def _stop_watch(self, handle: workflow.ActivityHandle[WatchResult]) -> None:
        """Cancel a watch without waiting for it; the cancel completes before CAN or DONE.

        The cancel reaches the activity at its next heartbeat, up to the worker's heartbeat
        throttle (20 s) later: waiting here would leave a leased slot unwatched, and a released
        one not READY, for that long. Until then the old watch may still ping; its result is
        ignored.
        """
        handle.cancel()

        async def settle() -> None:
            try:
                await handle
            except (ActivityError, asyncio.CancelledError):
                pass

        self._settle_later(settle())

    def _settle_later(self, stopping: Coroutine[None, None, None]) -> None:
        """Run a cancelled activity's settling in the background; awaited before CAN/DONE."""
        task = asyncio.create_task(stopping)
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    @property
    def _queue(self) -> str:
        return workflow.info().task_queue

    @property
    def _label(self) -> str:
        return slot_label(self._input.pool, self._input.index, self._rt.attempt)

    def _probe_input(self, instance: InstanceView) -> ProbeInput:
        return ProbeInput(label=self._label, instance=instance, probe=self._cfg.probe)

    # ---- phases ---------------------------------------------------------------------------

    async def _preflight(self) -> None:
        """Check the required tokens before any money is spent."""
        services = [TokenService(s) for s in self._cfg.require_tokens]
        if not services:
            self._enter(S.SEARCHING, "no token required")
            return
        checks = await workflow.execute_activity_method(
            TokenActivities.check, TokenCheckInput(services=services), **options.tokens()
        )
        invalid = [c for c in checks if not c.ok and not c.transient]
        unknown = [c for c in checks if not c.ok and c.transient]
        if invalid:
            reason = "; ".join(f"{c.service.value}: {c.detail}" for c in invalid)
            self._rt.blocked_reason = f"required token invalid: {reason}"
            self._enter(S.BLOCKED, self._rt.blocked_reason)
        elif unknown:
            self._rt.last_failure = "token check inconclusive: " + "; ".join(
                f"{c.service.value}: {c.detail}" for c in unknown
            )
            await self._sleep(self._cfg.retry_backoff_initial)
        else:
            self._rt.blocked_reason = None
            self._rt.provider_refused = False
            self._enter(S.SEARCHING, "tokens valid: " + ", ".join(s.value for s in services))

    async def _blocked(self) -> None:
        """Spend nothing until an operator resumes the slot or the periodic re-check passes."""
        self._resume_requested = False
        await self._wait(lambda: self._resume_requested or self._rt.retiring, BLOCKED_RECHECK)
        if not self._rt.retiring:
            self._enter(
                S.PREFLIGHT, "resume requested" if self._resume_requested else "periodic re-check"
            )

    async def _search(self) -> None:
        rt = self._rt
        rt.attempt += 1
        rt.counters.attempts += 1
        offers = await workflow.execute_activity_method(
            VastActivities.search_offers,
            SearchInput(
                constraints=self._cfg.constraints,
                exclude_machines=rt.excluded_machines,
                pool_workflow_id=self._input.report_to,
            ),
            **options.search(self._queue),
        )
        if not offers:
            rt.offer = None
            self._fail(FailureReason.NO_OFFERS, "no offer matches the constraints", exclude=False)
            self._enter(S.BACKOFF, "no offers")
            return
        # Spread slots that search together over the cheapest few offers: if all took the
        # cheapest, all but one would lose the race and search again (O(n^2) searches).
        rt.offer = offers[workflow.random().randrange(min(len(offers), OFFER_SPREAD))]
        self._enter(
            S.RENTING,
            f"offer {rt.offer.id} on machine {rt.offer.machine_id} at ${rt.offer.dph_total}/h",
        )

    async def _rent(self) -> None:
        rt = self._rt
        cfg = self._cfg
        assert rt.offer is not None
        image = rt.image_used = core.image_for(rt, cfg)
        label = self._label
        try:
            result = await workflow.execute_activity_method(
                VastActivities.rent,
                RentInput(
                    offer_id=rt.offer.id,
                    label=label,
                    image=image,
                    disk_gb=cfg.disk_gb,
                    runtype=cfg.runtype,
                    onstart=cfg.onstart,
                    environment=cfg.environment,
                    ports=[cfg.probe.comfy_port],
                    machine_id=rt.offer.machine_id,
                    pool_workflow_id=self._input.report_to,
                    slot=self._input.index,
                ),
                **options.rent(self._queue),
            )
        except ActivityError as err:
            outcome = core.rent_outcome(error_type(err))
            detail = str(err.cause or err)
            if outcome == RentOutcome.ASK_AGAIN:
                # The API did not answer: the create may have landed, so the same label is
                # asked again (adopt-or-create); no failure is counted.
                rt.last_failure = f"rent: provider API: {detail}"[:500]
                await self._sleep(cfg.polling.active)
                return
            rt.use_fallback_image = False
            if outcome == RentOutcome.SEARCH_AGAIN:
                self._enter(S.SEARCHING, f"offer {rt.offer.id} vanished: search again")
            elif outcome == RentOutcome.KEY_REJECTED:
                self._key_rejected(detail)
                rt.blocked_reason = f"provider key rejected: {detail}"[:500]
                self._enter(S.BLOCKED, rt.blocked_reason)
            else:  # a host that refused the create is excluded; a rejected request is not
                exclude = outcome == RentOutcome.HOST_REFUSED
                self._fail(FailureReason.RENT_FAILED, detail, exclude=exclude)
                self._enter(S.BACKOFF, "rent failed")
            return
        rt.use_fallback_image = False
        if not result.adopted:
            rt.counters.rents += 1
        rt.instance = InstanceView(
            id=result.instance_id,
            label=label,
            machine_id=rt.offer.machine_id,
            dph_total=rt.offer.dph_total,
            image=image,
        )
        rt.rented_at = self._now()
        rt.provision_started = self._now()
        rt.bad_since = None
        how = "adopted" if result.adopted else "rented"
        self._enter(S.PROVISIONING, f"{how} instance {result.instance_id} ({label}, {image})")

    async def _provision(self) -> None:
        rt = self._rt
        cfg = self._cfg
        assert rt.instance is not None
        obs = await workflow.execute_activity_method(
            VastActivities.observe, rt.instance.id, **options.observe(self._queue)
        )
        rt.provider_refused = False
        now = self._now()
        if obs.instance is not None:
            rt.instance = obs.instance.model_copy(update={"image": rt.image_used})
            self._collector.sync()  # as soon as the provider tells where SSH listens
        verdict = self._assess(obs, now)
        rt.bad_since = verdict.bad_since
        rented_at = rt.rented_at or now
        timeout = cfg.provisioning.timeout
        if verdict.verdict == StatusVerdict.GONE and now - rented_at < VISIBILITY_GRACE:
            await self._sleep(cfg.polling.active)
        elif verdict.verdict in (StatusVerdict.GONE, StatusVerdict.DESTROY):
            assert verdict.reason is not None
            self._fail(verdict.reason, verdict.detail, image_failure=verdict.image_failure)
            self._enter(S.TERMINATING, f"{verdict.reason.value}: {verdict.detail}")
        elif verdict.verdict == StatusVerdict.RUNNING:
            self._enter(S.PROBING, "instance running, ComfyUI port mapped")
        elif rt.provision_started and now - rt.provision_started > timeout:
            self._fail(
                FailureReason.PROVISION_TIMEOUT, f"not running after {timeout}: {verdict.detail}"
            )
            self._enter(S.TERMINATING, "provisioning timeout")
        else:
            await self._sleep(cfg.polling.active)

    def _assess(self, obs: Observation, now: datetime) -> Assessment:
        """What the provider's answer means for this instance (`warmpool.lifecycle.assess`)."""
        cfg = self._cfg
        return assess(
            obs.instance,
            gone=obs.gone,
            now=now,
            bad_since=self._rt.bad_since,
            grace=cfg.provisioning.fatal_grace,
            fatal_patterns=cfg.provisioning.fatal_patterns,
            comfy_port=cfg.probe.comfy_port,
            internal_port=cfg.probe.internal_port,
        )

    async def _probe(self) -> None:
        """Wait for ComfyUI: exponential backoff with jitter up to the readiness timeout."""
        rt = self._rt
        assert rt.instance is not None
        try:
            report = await self._await_ready(rt.instance)
        except ActivityError as err:
            self._probe_failed(err)
            return
        rt.port_report = report
        self._enter(S.VALIDATING_PORTS, f"ComfyUI answered on {report.url}")

    async def _await_ready(self, instance: InstanceView) -> PortReport:
        """The readiness wait on the instance's mapped endpoints (a retire cuts it short)."""
        handle = workflow.start_activity_method(
            ComfyActivities.await_ready,
            self._probe_input(instance),
            **options.await_ready(self._cfg),
        )
        return await self._interruptible(handle)

    def _probe_failed(self, err: ActivityError) -> None:
        cause = err.cause
        kind = error_type(err)
        if isinstance(cause, ApplicationError) and cause.details:
            self._rt.port_report = PortReport.model_validate(cause.details[0])
        self._untrusted(
            core.readiness_failure(
                kind,
                str(cause or err),
                timed_out=isinstance(cause, TimeoutError),
                timeout=self._cfg.probe.readiness_timeout,
            )
        )

    def _untrusted(self, failure: ProbeFailure) -> None:
        """No endpoint of the instance can be trusted: destroy it (and block after that on a
        configuration error)."""
        self._fail(failure.reason, failure.detail, exclude=failure.exclude)
        if failure.block is not None:
            self._rt.block_after_terminate = failure.block
        self._enter(S.TERMINATING, self._rt.last_failure or failure.detail)

    async def _validate(self) -> None:
        """Every candidate, TCP then HTTP; the URL comes only from one that passed both."""
        rt = self._rt
        cfg = self._cfg
        assert rt.instance is not None
        report = await workflow.execute_activity_method(
            ComfyActivities.validate_ports,
            self._probe_input(rt.instance),
            **options.validate_ports(cfg),
        )
        rt.port_report = report
        failure = core.validation_failure(report)
        if failure is not None:
            self._untrusted(failure)
            return
        assert report.url is not None
        env = cfg.environment
        if env is not None and not required_checks(env).empty:
            rt.env_missing = []
            self._enter(S.INSTALLING, f"ComfyUI answers on {report.url}; checking {env.version}")
            return
        await self._ready(report.url)

    async def _install(self) -> None:
        """Check that the studio's required nodes and models are there, on the validated
        endpoint only; READY once they all are. Still missing when `environment_timeout` (from
        the rent) runs out: destroyed, naming what was missing; the pool excludes the machine,
        and the same item missing on several machines is systemic (safe mode)."""
        rt = self._rt
        cfg = self._cfg
        assert cfg.environment is not None and rt.port_report and rt.port_report.url
        url = rt.port_report.url
        try:
            report = await workflow.execute_activity_method(
                ComfyActivities.check_environment,
                EnvironmentCheckInput(
                    label=self._label, url=url, checks=required_checks(cfg.environment)
                ),
                **options.check_environment(cfg),
            )
        except ActivityError as err:
            if error_type(err) == ErrorType.PORTAL_UNAUTHORIZED:
                self._probe_failed(err)
                return
            rt.last_failure = f"environment check: {err.cause or err}"[:500]
        else:
            if report.complete:
                rt.env_missing = []
                await self._ready(url)
                return
            rt.env_missing = report.missing
        started = rt.provision_started or self._now()
        if self._now() - started > cfg.environment_timeout:
            missing = ", ".join(rt.env_missing) or rt.last_failure or "unknown"
            self._fail(
                FailureReason.ENVIRONMENT_INCOMPLETE,
                f"still missing after {cfg.environment_timeout.total_seconds():g} s: {missing}",
            )
            self._enter(S.TERMINATING, rt.last_failure or "environment incomplete")
            return
        await self._sleep(cfg.environment_poll)

    async def _ready(self, url: str) -> None:
        """The warm-up workflow if any, then READY on the validated URL."""
        rt = self._rt
        cfg = self._cfg
        if cfg.warmup_workflow:
            warmup = workflow.start_activity_method(
                ComfyActivities.warmup,
                WarmupInput(
                    label=self._label,
                    url=url,
                    workflow_path=cfg.warmup_workflow,
                    timeout=cfg.probe.readiness_timeout,
                ),
                **options.warmup(cfg),
            )
            try:
                rt.warmup_seconds = await self._interruptible(warmup)
            except ActivityError as err:
                self._fail(FailureReason.WARMUP_FAILED, str(err.cause or err))
                self._enter(S.TERMINATING, rt.last_failure or "warm-up failed")
                return
        rt.connection_url = url
        rt.ready_since = self._now()
        if rt.provision_started is not None:
            rt.time_to_ready_s = (self._now() - rt.provision_started).total_seconds()
        rt.counters.consecutive_failures = 0
        version = self._env_version()
        self._enter(S.READY, f"ports validated: {url}" + (f", {version}" if version else ""))

    async def _serve(self) -> None:
        """READY or LEASED: a long-running watch (keepalive + provider status) until lost."""
        rt = self._rt
        cfg = self._cfg
        assert rt.instance is not None and rt.connection_url is not None
        if self._rt.needs_clean:
            await self._after_lease()
            return
        if rt.park_requested:
            rt.park_requested = False
            if rt.state == S.READY and rt.lease is None:
                self._enter(S.STOPPING, "parking: the pool has surplus capacity")
                return
        mode = rt.state
        poll = cfg.polling.active if mode == S.LEASED else cfg.polling.idle
        handle = workflow.start_activity_method(
            ComfyActivities.watch,
            WatchInput(
                label=self._label,
                url=rt.connection_url,
                instance_id=rt.instance.id,
                poll_interval=poll,
                keepalive=cfg.keepalive,
                provisioning=cfg.provisioning,
                probe=cfg.probe,
            ),
            **options.watch(cfg),
        )
        while True:
            try:
                await workflow.wait_condition(
                    lambda: (
                        handle.done()
                        or rt.state != mode
                        or rt.retiring
                        or self._rt.needs_clean
                        or rt.park_requested
                        or self._should_continue_as_new()
                    ),
                    timeout=self._lease_overdue_in(),
                )
                break
            except builtins.TimeoutError:  # the lease is overdue
                self._end_overdue_lease()
        if not handle.done():
            self._stop_watch(handle)
            return
        try:
            result = await handle
        except ActivityError as err:
            result = WatchResult(reason=FailureReason.KEEPALIVE_LOST, detail=str(err.cause or err))
        if result.reason == FailureReason.PORTS_CHANGED and result.instance is not None:
            await self._revalidate(result.instance, result.detail)
            return
        if result.instance is not None:
            rt.instance = result.instance.model_copy(update={"image": rt.image_used})
        if result.reason == FailureReason.KEEPALIVE_LOST:
            rt.counters.keepalive_losses += 1
        self._end_lease(f"slot lost: {result.reason.value}: {result.detail}")
        self._fail(result.reason, result.detail)
        self._enter(S.TERMINATING, f"{result.reason.value}: {result.detail}")

    async def _revalidate(self, instance: InstanceView, why: str) -> None:
        """The provider mapped ComfyUI elsewhere: trust the new endpoint only once it proves
        itself as the first one did (a lease is kept; its holder gets the new URL)."""
        rt = self._rt
        rt.instance = instance.model_copy(update={"image": rt.image_used})
        try:
            report = await self._await_ready(rt.instance)
        except ActivityError as err:
            self._end_lease(f"slot lost: {FailureReason.PORTS_CHANGED.value}: {why}")
            self._probe_failed(err)
            return
        rt.port_report = report
        rt.connection_url = report.url
        self._report(f"{why}; validated {report.url}")

    async def _after_lease(self) -> None:
        """Clear the queue, interrupt, free memory and check it answers; or recycle.

        READY is not reported (the `end_lease` update waiting for this clean answers it),
        unless the slot ended an overdue lease itself.
        """
        rt = self._rt
        self._rt.needs_clean = False
        assert rt.connection_url is not None
        if self._cfg.recycle_after_lease:
            self._enter(S.TERMINATING, "recycling after lease")
            return
        self._cleaning = True
        try:
            await workflow.execute_activity_method(
                ComfyActivities.clean,
                CleanInput(label=self._label, url=rt.connection_url),
                **options.clean(self._cfg),
            )
        except ActivityError as err:
            self._fail(FailureReason.KEEPALIVE_LOST, f"clean after lease failed: {err.cause}")
            self._enter(S.TERMINATING, rt.last_failure or "clean failed")
            return
        finally:
            self._cleaning = False
        self._enter(S.READY, "cleaned after lease", report=self._report_clean)
        self._report_clean = False

    def _lease_overdue_in(self) -> timedelta | None:
        overdue = core.lease_overdue_at(self._rt, self._cfg)
        return None if overdue is None else max(overdue - self._now(), timedelta(milliseconds=1))

    def _end_overdue_lease(self) -> None:
        """The pool's `end_lease` never came: end the lease here, clean, and report READY."""
        overdue, lease = core.lease_overdue_at(self._rt, self._cfg), self._rt.lease
        if overdue is None or lease is None or self._now() < overdue:
            return  # renewed meanwhile
        workflow.logger.warning("lease %s overdue: the slot ends it", lease.lease_id)
        self._end_lease(f"overdue: no end from the pool by {lease.leased_until.isoformat()}")
        self._rt.needs_clean = True
        self._report_clean = True

    def _end_lease(self, reason: str) -> None:
        core.end_lease(self._rt, reason, now=self._now())

    async def _drain(self) -> None:
        """Retiring: let a lease run out, then destroy."""
        await workflow.wait_condition(lambda: self._rt.lease is None)
        self._enter(S.TERMINATING, "retired")

    async def _terminate(self) -> None:
        """Destroy until the provider confirms; a failing destroy is retried and reported."""
        rt = self._rt
        failures = 0
        while rt.instance is not None:
            try:
                result = await workflow.execute_activity_method(
                    VastActivities.destroy, rt.instance.id, **options.destroy(self._queue)
                )
            except ActivityError as err:
                failures += 1
                rt.last_failure = f"destroy of {rt.instance.id} failing ({failures}x): {err.cause}"
                workflow.logger.warning(rt.last_failure)
                await workflow.sleep(min(timedelta(seconds=30) * failures, timedelta(minutes=10)))
                continue
            rt.counters.destroys += 1
            workflow.logger.info(
                "instance %s destroyed (confirmed=%s)", result.instance_id, result.confirmed
            )
            rt.instance = None
        self._end_lease("slot terminated")
        self._enter(*core.after_terminate(rt))

    # ---- the stopped tier -------------------------------------------------------------------

    async def _park(self) -> None:
        """Stop the instance; its disk (models, nodes) stays, so a resume skips the download."""
        rt = self._rt
        assert rt.instance is not None
        result = await workflow.execute_activity_method(
            VastActivities.stop, rt.instance.id, **options.stop(self._queue)
        )
        if result.gone:
            self._lost_while_parked()
            return
        rt.connection_url = None  # a stopped container has no ports; a resume maps new ones
        rt.ready_since = None
        self._enter(S.STOPPED, f"instance {rt.instance.id} stopped (disk kept)")

    async def _parked(self) -> None:
        """Parked: wait for the pool to want it again (or retire it), looking now and then that
        the provider still has the instance."""
        rt = self._rt
        assert rt.instance is not None
        if rt.unpark_requested:
            rt.unpark_requested = False
            rt.resume_started = None
            self._enter(S.RESUMING, "resuming: the pool wants capacity")
            return
        woken = await self._wait(
            lambda: rt.unpark_requested or rt.retiring, self._cfg.polling.idle * 10
        )
        if woken:
            return
        obs = await workflow.execute_activity_method(
            VastActivities.observe, rt.instance.id, **options.observe(self._queue)
        )
        if obs.gone:
            self._lost_while_parked()

    def _lost_while_parked(self) -> None:
        """The provider no longer has the parked instance: nothing is left to bill or park,
        so the slot ends; the pool rents anew if it needs capacity."""
        rt = self._rt
        rt.instance = None
        rt.retiring = True
        self._enter(S.TERMINATING, "parked instance no longer listed by the provider")

    async def _resume(self) -> None:
        """Ask the provider to run the instance again; READY follows the usual checks (the
        ports are new). Not running within `resume_timeout`: the host's GPU was taken, so it
        is destroyed and the slot rents fresh, without blaming the machine."""
        rt = self._rt
        cfg = self._cfg
        assert rt.instance is not None
        if rt.resume_started is None:
            result = await workflow.execute_activity_method(
                VastActivities.start, rt.instance.id, **options.start(self._queue)
            )
            if result.gone:
                self._lost_while_parked()
                return
            rt.resume_started = rt.provision_started = self._now()
            rt.bad_since = None
        obs = await workflow.execute_activity_method(
            VastActivities.observe, rt.instance.id, **options.observe(self._queue)
        )
        now = self._now()
        instance = obs.instance
        if instance is not None:
            rt.instance = instance.model_copy(update={"image": rt.image_used})
        verdict = self._assess(obs, now)
        stopped = instance is not None and instance.actual_status == "stopped"
        if verdict.verdict == StatusVerdict.RUNNING:
            rt.resume_started = None
            self._enter(S.PROBING, "instance running again, ComfyUI port mapped")
        elif verdict.verdict == StatusVerdict.GONE or (
            verdict.verdict == StatusVerdict.DESTROY and not stopped
        ):
            rt.resume_started = None
            reason = verdict.reason or FailureReason.INSTANCE_GONE
            self._fail(reason, verdict.detail)
            self._enter(S.TERMINATING, f"{reason.value}: {verdict.detail}")
        elif rt.resume_started is not None and now - rt.resume_started > cfg.resume_timeout:
            rt.resume_started = None
            self._fail(
                FailureReason.RESUME_FAILED,
                f"not running {cfg.resume_timeout.total_seconds():g} s after resume "
                f"(its GPU was taken?): {verdict.detail}",
                exclude=False,
            )
            self._enter(S.TERMINATING, rt.last_failure or "resume failed")
        else:
            await self._sleep(cfg.polling.active)

    async def _backoff(self) -> None:
        cfg = self._cfg
        delay = backoff_delay(
            self._rt.counters.consecutive_failures,
            cfg.retry_backoff_initial,
            cfg.retry_backoff_max,
            workflow.random().random(),
        )
        await self._sleep(delay)
        self._enter(S.PREFLIGHT, f"backoff of {delay.total_seconds():.0f}s done")
