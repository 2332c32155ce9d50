"""Small test helpers: unique task queues and waiting on a workflow's state."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import timedelta

from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from warmpool.models import SlotState, SlotStatus


def new_queue() -> str:
    return f"tq-{uuid.uuid4().hex[:10]}"


async def wait_status(
    env: WorkflowEnvironment,
    handle: WorkflowHandle,  # type: ignore[type-arg]
    predicate: Callable[[SlotStatus], bool],
    *,
    step: timedelta = timedelta(seconds=10),
    attempts: int = 400,
    real_pause: float = 0.02,
) -> SlotStatus:
    """Query until `predicate` holds; on the time-skipping server each step skips `step`."""
    status: SlotStatus | None = None
    for _ in range(attempts):
        status = await handle.query("status", result_type=SlotStatus)
        if predicate(status):
            return status
        if env.supports_time_skipping:
            await env.sleep(step)
        await asyncio.sleep(real_pause)
    raise AssertionError(f"condition not reached; last status: {status}")


def in_state(*states: SlotState) -> Callable[[SlotStatus], bool]:
    return lambda s: s.state in states
