"""Are the service tokens still valid, and since when? TokenWatchWorkflow re-checks them.

One long-running workflow per namespace (id `warmpool/tokens`) replaces a process-local re-check
loop: a durable timer runs the `tokens.check` activity (force=True, so the worker's cache is
refreshed too) every `TOKEN_PERIODIC_CHECK_MS` for Vast.ai, Hugging Face and Civitai. It keeps the
last result per service and when its health last changed, warns when a token turns invalid, and
answers the `status` query; the `check_now` signal (sent by `starter.py tokens set|check-now`)
runs a round at once, so a rotation or a revocation is reported without waiting for the timer.

Results carry only a fingerprint of the token (`TokenCheck.version`), never the token itself.
Slots do not depend on this workflow: their preflight checks tokens on its own.
"""

from __future__ import annotations

import builtins
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import Field
from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.tokens import TokenActivities, TokenCheckInput
    from warmpool.models import Model
    from warmpool.tokens import TokenCheck, TokenService
    from workflows import options

WATCH_ID = "warmpool/tokens"
ALL_SERVICES = list(TokenService)


class TokenHealth(StrEnum):
    """What a check means for an operator; `UNKNOWN` is a check that could not be made."""

    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN = "unknown"
    UNSET = "unset"


def health_of(check: TokenCheck) -> TokenHealth:
    if not check.configured:
        return TokenHealth.UNSET
    if check.ok:
        return TokenHealth.VALID
    return TokenHealth.UNKNOWN if check.transient else TokenHealth.INVALID


class ServiceRecord(Model):
    """The last check of one service and when its health last changed."""

    service: TokenService
    required: bool
    health: TokenHealth
    since: datetime
    last: TokenCheck

    @property
    def problem(self) -> bool:
        """A required token that is not valid, or any token that is set but rejected."""
        return self.health == TokenHealth.INVALID or (
            self.required and self.health != TokenHealth.VALID
        )


class TokenWatchState(Model):
    """Everything a run carries across continue-as-new."""

    records: dict[TokenService, ServiceRecord] = Field(default_factory=dict)
    rounds: int = 0
    last_round_at: datetime | None = None
    next_check_at: datetime | None = None
    last_error: str | None = None
    requests: int = 0
    """`check_now` signals received."""
    served: int = 0
    """The value of `requests` when the last completed round started: a caller that saw
    `requests >= n` after signalling knows its request is served once `served >= n`."""


class TokenWatchInput(Model):
    interval: timedelta = Field(gt=timedelta(0))
    required: list[TokenService] = Field(default_factory=list)
    services: list[TokenService] = Field(default_factory=lambda: list(ALL_SERVICES))
    state: TokenWatchState | None = None


class TokenWatchStatus(Model):
    """The `status` query's answer, services in `input.services` order."""

    services: list[ServiceRecord]
    interval: timedelta
    rounds: int
    last_round_at: datetime | None
    next_check_at: datetime | None
    last_error: str | None
    requests: int
    served: int


@workflow.defn(name="TokenWatchWorkflow")
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

    @workflow.query
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

    @workflow.signal
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
            for check in checks:
                self._record(check)
        state.rounds += 1
        state.last_round_at = workflow.now()
        state.served = request_mark

    def _record(self, check: TokenCheck) -> None:
        """Keep the check; log when a service's health changes or its token is rotated."""
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
