"""Are the service tokens still valid, and since when? TokenWatchWorkflow re-checks them.

One long-running workflow per namespace (id `warmpool/tokens`) replaces a process-local re-check
loop: a durable timer runs the `tokens.check` activity (force=True, so the worker's cache is
refreshed too) every `TOKEN_PERIODIC_CHECK_MS` for Vast.ai, Hugging Face and Civitai. It keeps the
last result per service and when its health last changed, warns when a token turns invalid, and
answers the `status` query; the `check_now` signal (sent by `starter.py tokens set|check-now`)
runs a round at once, so a rotation or a revocation is reported without waiting for the timer.

Results carry only a fingerprint of the token (`TokenCheck.version`), never the token itself.
Slots do not depend on this workflow: their preflight checks tokens on its own. Its models are in
`warmpool/tokens.py`, its names in `warmpool/names.py`; its client is
`warmpool/clients/token_watch.py`.
"""

from __future__ import annotations

import builtins

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.slots import resume_blocked
    from activities.tokens import TokenActivities, TokenCheckInput
    from warmpool.names import TokenWatch
    from warmpool.tokens import (
        ServiceRecord,
        TokenCheck,
        TokenWatchInput,
        TokenWatchState,
        TokenWatchStatus,
        health_of,
    )
    from workflows import options


@workflow.defn(name=TokenWatch.WORKFLOW)
class TokenWatchWorkflow:
    @workflow.init
    def __init__(self, input: TokenWatchInput) -> None:
        self._input = input
        self._state = input.state or TokenWatchState()

    @workflow.run
    async def run(self, input: TokenWatchInput) -> None:
        state = self._state
        while True:
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(input.model_copy(update={"state": state}))
            now = workflow.now()
            due = state.next_check_at
            if due is None or now >= due or self._requested():
                await self._round()
                state.next_check_at = workflow.now() + input.interval
                continue
            try:
                await workflow.wait_condition(
                    lambda: self._requested() or workflow.info().is_continue_as_new_suggested(),
                    timeout=due - now,
                )
            except builtins.TimeoutError:
                pass

    @workflow.query(name=TokenWatch.STATUS)
    def status(self) -> TokenWatchStatus:
        state = self._state
        return TokenWatchStatus(
            services=[state.records[s] for s in self._input.services if s in state.records],
            interval=self._input.interval,
            rounds=state.rounds,
            last_round_at=state.last_round_at,
            next_check_at=state.next_check_at,
            last_error=state.last_error,
            requests=state.requests,
            served=state.served,
        )

    @workflow.signal(name=TokenWatch.CHECK_NOW)
    def check_now(self) -> None:
        """Re-check every token at once (after a rotation, or to confirm a revocation)."""
        self._state.requests += 1

    def _requested(self) -> bool:
        """A `check_now` arrived since the last round started."""
        return self._state.requests > self._state.served

    async def _round(self) -> None:
        state = self._state
        request_mark = state.requests
        try:
            checks = await workflow.execute_activity_method(
                TokenActivities.check,
                TokenCheckInput(services=self._input.services, force=True),
                **options.tokens(),
            )
        except ActivityError as err:
            state.last_error = f"tokens.check failed: {err.cause or err}"[:300]
            workflow.logger.warning("token watch: %s", state.last_error)
        else:
            state.last_error = None
            fixed = [check.service.value for check in checks if self._record(check)]
            if fixed:
                await self._wake_blocked_slots(f"token valid again: {', '.join(fixed)}")
        state.rounds += 1
        state.last_round_at = workflow.now()
        state.served = request_mark

    async def _wake_blocked_slots(self, reason: str) -> None:
        """A BLOCKED slot waits for a token that is now valid: wake it (best effort; its own
        periodic re-check stays the fallback)."""
        try:
            woken = await workflow.execute_activity(resume_blocked, reason, **options.tokens())
        except ActivityError as err:
            workflow.logger.warning("could not wake BLOCKED slots: %s", err.cause or err)
            return
        if woken:
            workflow.logger.info("%s: woke %d BLOCKED slot(s)", reason, woken)

    def _record(self, check: TokenCheck) -> bool:
        """Keep the check; log when a service's health changes or its token is rotated. True
        when the token is valid and was not (or was not known) before: BLOCKED slots may now
        proceed."""
        health = health_of(check)
        required = check.service in self._input.required
        previous = self._state.records.get(check.service)
        same = previous if previous is not None and previous.health == health else None
        record = ServiceRecord(
            service=check.service,
            required=required,
            health=health,
            since=same.since if same else workflow.now(),
            last=check,
        )
        self._state.records[check.service] = record
        kind = "required" if required else "optional"
        name = check.service.value
        if same is None and record.problem:
            workflow.logger.warning(
                "%s token %s is %s (version %s): %s",
                kind,
                name,
                health.value,
                check.version,
                check.detail,
            )
        elif same is None:
            workflow.logger.info("%s token %s is %s: %s", kind, name, health.value, check.detail)
        elif same.last.version != check.version:
            workflow.logger.info(
                "%s token %s rotated (%s -> %s), still %s",
                kind,
                name,
                same.last.version,
                check.version,
                health.value,
            )
        return same is None and not record.problem
