"""Which activity streams an instance's provisioning logs to its slot, and stops it on a fatal line?

`ssh.follow_logs` follows the log files with `warmpool.ssh.LogFollower` and sends each batch of
new lines to the slot workflow as an `ssh_log` signal, *then* heartbeats the cursor past it. A crash
between the two re-sends that batch, and heartbeats are throttled by the SDK, so a resumed attempt
may re-send a few batches: every batch carries its lines' byte positions and the receiver keeps
only `SshLogBatch.unseen()` lines. Nothing is lost (the cursor only moves after a signal went out)
and nothing is kept twice.

Failure handling is Temporal's, not ours (`workflows.options.ssh_follow`): a dropped or silent
connection raises `SshConnectError` and the retry policy reconnects with capped exponential
backoff, forever; a dead worker stops heartbeating and the heartbeat timeout moves the attempt
elsewhere. A rejected or missing key is `ApplicationError(type=ErrorType.SSH_AUTH,
non_retryable=True)`. The activity returns only on a fatal line; the slot cancels it when the
instance is READY or destroyed. A first attempt starts from `resume_from` (what the slot already
holds, e.g. after its continue-as-new); a retried one from its last heartbeat.

The private key comes from `key_provider` at call time (the worker's secret store, rotatable),
never from the input.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from itertools import groupby
from typing import Any

import paramiko
from pydantic import Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from warmpool.errors import ErrorType
from warmpool.models import Model, SshConfig, SshLogBatch
from warmpool.names import Slot
from warmpool.ssh import (
    LogCursor,
    LogFollower,
    LogLine,
    SshAuthError,
    match_fatal,
)


class SshFollowInput(Model):
    workflow_id: str
    instance_id: int
    host: str
    port: int
    ssh: SshConfig = Field(default_factory=SshConfig)
    """The slot's `SlotConfig.ssh`: who logs in, which files, fatal patterns, timings."""
    batch_lines: int = Field(default=50, ge=1)
    resume_from: LogCursor = Field(default_factory=LogCursor)
    """Where a first attempt starts: the positions the slot already holds lines up to."""


class SshFollowResult(Model):
    fatal_line: str | None
    path: str | None
    lines_seen: int


class SshFollowProgress(Model):
    """The heartbeat details: where to resume, and how many lines all attempts have delivered."""

    cursor: LogCursor = Field(default_factory=LogCursor)
    lines_seen: int = 0


class SshLogActivities:
    """The SSH activities; one instance per worker, holding only how to get the key."""

    def __init__(
        self,
        key_provider: Callable[[], str | None],
        redact: Callable[[str], str] = lambda line: line,
        host_key_policy: paramiko.MissingHostKeyPolicy | None = None,
    ) -> None:
        """`redact` scrubs every line before it leaves the worker (signals, result)."""
        self._key_provider = key_provider
        self._redact = redact
        self._host_key_policy = host_key_policy

    @activity.defn(name="ssh.follow_logs")
    async def follow_logs(self, input: SshFollowInput) -> SshFollowResult:
        """Stream new log lines to the slot until a fatal line (returned) or cancellation."""
        follower = self._follower(input)
        progress = _Progress(activity.info().heartbeat_details, input.resume_from)
        poll_interval_s = input.ssh.poll_interval.total_seconds()
        beating = asyncio.create_task(progress.beat_while_blocked(poll_interval_s))
        try:
            while True:
                try:
                    lines, polled = await follower.poll(progress.current.cursor)
                except SshAuthError as exc:
                    raise _auth_failure(exc) from None
                fatal = await self._deliver(input, lines, progress)
                if fatal is not None:
                    return SshFollowResult(
                        fatal_line=self._redact(fatal.text),
                        path=fatal.path,
                        lines_seen=progress.current.lines_seen,
                    )
                progress.move(polled, 0)  # also the idle heartbeat
                await asyncio.sleep(poll_interval_s)
        finally:
            beating.cancel()
            await follower.close()

    def _follower(self, input: SshFollowInput) -> LogFollower:
        pem = self._key_provider()
        if not pem:
            raise ApplicationError(
                "no SSH private key is configured for this pool",
                type=ErrorType.SSH_AUTH,
                non_retryable=True,
            )
        try:
            return LogFollower(
                input.host,
                input.port,
                pem,
                input.ssh.paths,
                username=input.ssh.username,
                host_key_policy=self._host_key_policy,
                keepalive_interval_s=input.ssh.keepalive_interval.total_seconds(),
                keepalive_max_missed=input.ssh.keepalive_max_miss,
            )
        except SshAuthError as exc:
            raise _auth_failure(exc) from None

    async def _deliver(
        self, input: SshFollowInput, lines: list[LogLine], progress: _Progress
    ) -> LogLine | None:
        """Signal `lines` in batches, moving `progress` after each; stop at the first fatal line."""
        if not lines:
            return None
        handle = activity.client().get_workflow_handle(input.workflow_id)
        patterns = input.ssh.fatal_patterns
        for batch in _batches(lines, input.batch_lines):
            fatal_at = next(
                (i for i, line in enumerate(batch) if match_fatal(line.text, patterns)), None
            )
            if fatal_at is not None:
                batch = batch[: fatal_at + 1]
            await handle.signal(Slot.SSH_LOG, self._payload(input.instance_id, batch))
            progress.move(progress.current.cursor.after(batch[-1]), len(batch))
            if fatal_at is not None:
                return batch[-1]
        return None

    def _payload(self, instance_id: int, batch: list[LogLine]) -> dict[str, object]:
        return SshLogBatch(
            instance_id=instance_id,
            path=batch[0].path,
            epoch=batch[0].epoch,
            offset=batch[0].offset,
            end=batch[-1].end,
            line_offsets=[line.offset for line in batch],
            lines=[self._redact(line.text) for line in batch],
        ).model_dump(mode="json")


def _batches(lines: list[LogLine], size: int) -> Iterator[list[LogLine]]:
    """Runs of at most `size` consecutive lines of the same file and epoch."""
    for _, same_file in groupby(lines, key=lambda line: (line.path, line.epoch)):
        run = list(same_file)
        for start in range(0, len(run), size):
            yield run[start : start + size]


class _Progress:
    """The delivered position: heartbeated each time it moves, and while a poll blocks."""

    def __init__(self, details: Sequence[Any], start: LogCursor) -> None:
        """Resume from the last heartbeat (a dict after the data converter), else from `start`."""
        if details:
            self.current = SshFollowProgress.model_validate(details[0])
        else:
            self.current = SshFollowProgress(cursor=start)

    def move(self, cursor: LogCursor, delivered: int) -> None:
        self.current = SshFollowProgress(
            cursor=cursor, lines_seen=self.current.lines_seen + delivered
        )
        self.beat()

    def beat(self) -> None:
        activity.heartbeat(self.current.model_dump(mode="json"))

    async def beat_while_blocked(self, fallback_interval_s: float) -> None:
        """Heartbeat while a poll waits on a slow or silent host.

        The connection's own deadline (keepalive interval x max missed) may exceed the heartbeat
        timeout; without this the server would time out an attempt that is merely waiting.
        """
        timeout = activity.info().heartbeat_timeout
        every = timeout.total_seconds() / 3 if timeout else fallback_interval_s
        while True:
            await asyncio.sleep(every)
            self.beat()


def _auth_failure(exc: SshAuthError) -> ApplicationError:
    return ApplicationError(str(exc), type=ErrorType.SSH_AUTH, non_retryable=True)
