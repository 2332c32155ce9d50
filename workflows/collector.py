"""Who follows a starting instance's logs for its slot? `SshCollector`: one `ssh.follow_logs`.

Workflow code (it starts and cancels an activity), used by `workflows/slot.py` only. The slot
asks it, once per loop step, for a fatal line (`take_fatal`) and then to follow the right
instance (`sync`); which instance that is, is the pure rule `slot_core.collector_target`.
At most one collector runs per slot, for one instance id:

- `sync` starts one for the target (resuming from the log positions the slot already holds) and
  stops one that follows another instance, or none any more;
- a collector that ended by itself is read once: a fatal line is kept for the slot, an error
  (e.g. the key rejected) is noted in `log_error` and that instance is never followed again;
- `stop` cancels without waiting: the cancel completes in the background (`settle_later`, which
  the slot awaits before continue-as-new and before it finishes), and a stopped collector that
  had already returned a fatal line still reports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.ssh import SshFollowInput, SshFollowResult, SshLogActivities
    from warmpool import slot_core as core
    from warmpool.models import InstanceView, SlotConfig, SlotRuntime
    from warmpool.ssh import LogCursor
    from workflows import options

SettleLater = Callable[[Coroutine[None, None, None]], None]


class SshCollector:
    """The SSH log collector of one slot: its activity handle and the instance it follows."""

    def __init__(
        self, rt: SlotRuntime, cfg: SlotConfig, settle_later: SettleLater, name: str
    ) -> None:
        """`rt` and `cfg` are the slot's own (the collector notes `log_error` in `rt`);
        `settle_later` runs a cancelled collector's settling in the background."""
        self._rt = rt
        self._cfg = cfg
        self._settle_later = settle_later
        self._name = name
        self._handle: workflow.ActivityHandle[SshFollowResult] | None = None
        self._instance_id: int | None = None
        self._fatal: tuple[int, SshFollowResult] | None = None
        """A fatal line a collector returned for an instance, not taken by the slot yet."""

    def take_fatal(self) -> SshFollowResult | None:
        """Read a collector that ended by itself; then the fatal line a collector returned for
        the slot's current instance, once (one about an instance the slot left is dropped)."""
        handle = self._handle
        if handle is not None and handle.done() and self._instance_id is not None:
            self._handle = None
            self._ended(handle, self._instance_id)
        fatal, self._fatal = self._fatal, None
        instance = self._rt.instance
        if fatal is None or instance is None or instance.id != fatal[0]:
            return None
        return fatal[1]

    def fatal_pending(self) -> bool:
        """A collector returned a fatal line that the slot has not taken yet."""
        handle = self._handle
        return self._fatal is not None or (
            handle is not None
            and handle.done()
            and not handle.cancelled()
            and handle.exception() is None
            and handle.result().fatal_line is not None
        )

    def sync(self) -> None:
        """Follow the instance `core.collector_target` names now: stop or start accordingly."""
        target = core.collector_target(self._rt, self._cfg)
        running = self._handle is not None and not self._handle.done()
        if running and (target is None or target.id != self._instance_id):
            self.stop()
        if target is not None and self._handle is None:
            self._start(target)

    def stop(self) -> None:
        """Cancel the collector; the cancel completes in the background."""
        handle, self._handle = self._handle, None
        if handle is None or self._instance_id is None:
            return
        handle.cancel()
        self._settle_later(self._reap(handle, self._instance_id))

    def _start(self, inst: InstanceView) -> None:
        rt = self._rt
        assert inst.ssh_host is not None and inst.ssh_port is not None
        held = rt.log_positions if rt.log_instance_id == inst.id else {}
        rt.log_error = None
        self._instance_id = inst.id
        self._handle = workflow.start_activity_method(
            SshLogActivities.follow_logs,
            SshFollowInput(
                workflow_id=workflow.info().workflow_id,
                instance_id=inst.id,
                host=inst.ssh_host,
                port=inst.ssh_port,
                ssh=self._cfg.ssh,
                resume_from=LogCursor(
                    offsets={path: end for path, (_, end) in held.items()},
                    epochs={path: epoch for path, (epoch, _) in held.items()},
                ),
            ),
            **options.ssh_follow(self._cfg),
        )

    def _ended(self, handle: workflow.ActivityHandle[SshFollowResult], instance_id: int) -> None:
        """A fatal line is kept to act on; a collector error (e.g. key rejected) is only noted."""
        rt = self._rt
        if handle.cancelled():
            return
        error = handle.exception()
        if error is not None:
            cause = error.cause if isinstance(error, ActivityError) else error
            rt.log_error = f"SSH log collection stopped: {cause or error}"[:500]
            rt.log_failed_instance = instance_id
            workflow.logger.warning("%s: %s", self._name, rt.log_error)
            return
        result = handle.result()
        if result.fatal_line is not None:
            self._fatal = (instance_id, result)

    async def _reap(
        self, handle: workflow.ActivityHandle[SshFollowResult], instance_id: int
    ) -> None:
        """Await a cancelled collector: one that returned a fatal line first still counts."""
        try:
            result = await handle
        except (ActivityError, asyncio.CancelledError):
            return
        if result.fatal_line is not None:
            self._fatal = (instance_id, result)
