"""An update that meets the pool's continue-as-new: `pool_client.update_pool` asks again at once.

The server aborts an update admitted while a workflow's continue-as-new task completes; the
SDK's client re-sends it only after about a second. `Closing` holds its continue-as-new task
open (a blocking sleep in the workflow code, unsandboxed) until the test has sent an update,
so the update is admitted during that task every time.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import uuid

import pytest
from temporalio import workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.helpers import new_queue
from warmpool.clients import pool as pool_client
from warmpool.clients.pool import update_pool

SDK_BACKOFF_S = 0.75
"""Below the SDK's re-send (0.8-1.2 s measured), above update_pool's first attempt (0.25 s)."""
CLOSING_TASK_STARTED = threading.Event()
UPDATE_SENT = threading.Event()


@workflow.defn(name="Closing", sandboxed=False)
class Closing:
    """Answers `ask` with its run number; on `close`, continues-as-new in a task held open."""

    @workflow.init
    def __init__(self, run_number: int) -> None:
        self._run = run_number
        self._closing = False

    @workflow.run
    async def run(self, run_number: int) -> None:
        await workflow.wait_condition(lambda: self._closing)
        CLOSING_TASK_STARTED.set()
        UPDATE_SENT.wait(timeout=5)  # blocks this workflow task: the update arrives meanwhile
        time.sleep(0.05)  # noqa: ASYNC251 (and is admitted before the task completes)
        workflow.continue_as_new(run_number + 1)

    @workflow.signal
    def close(self) -> None:
        self._closing = True

    @workflow.update
    def ask(self, value: str) -> str:
        return f"{value} on run {self._run}"


async def update_during_continue_as_new(client: Client, *, re_ask: bool) -> tuple[str, float]:
    """Send `ask` while the run's continue-as-new task is open; its answer and seconds taken."""
    CLOSING_TASK_STARTED.clear()
    UPDATE_SENT.clear()
    queue = new_queue()
    async with Worker(client, task_queue=queue, workflows=[Closing]):
        handle: WorkflowHandle[object, object] = await client.start_workflow(
            "Closing", 1, id=f"closing-{queue}", task_queue=queue
        )
        await handle.signal("close")
        await asyncio.to_thread(CLOSING_TASK_STARTED.wait, 5)
        started = time.monotonic()
        if re_ask:
            answer = update_pool(handle, "ask", "hello", str, f"ask/{uuid.uuid4().hex}")
        else:
            answer = handle.execute_update("ask", "hello", result_type=str)
        pending = asyncio.ensure_future(answer)
        await asyncio.sleep(0.1)  # the update reaches the server
        UPDATE_SENT.set()
        result = await asyncio.wait_for(pending, 10)
        return result, time.monotonic() - started


async def test_update_pool_answers_an_update_that_met_a_continue_as_new_at_once(
    dev_env: WorkflowEnvironment,
) -> None:
    answer, took = await update_during_continue_as_new(dev_env.client, re_ask=True)
    assert answer == "hello on run 2"
    assert took < SDK_BACKOFF_S, f"{took:.2f} s"


async def test_a_plain_update_waits_for_the_sdks_backoff_the_case_update_pool_exists_for(
    dev_env: WorkflowEnvironment,
) -> None:
    """The control: without update_pool the same update takes the SDK's ~1 s backoff. If this
    starts failing, the SDK no longer waits, and update_pool's re-asking can go."""
    answer, took = await update_during_continue_as_new(dev_env.client, re_ask=False)
    assert answer == "hello on run 2"
    assert took > SDK_BACKOFF_S, f"{took:.2f} s"


async def test_retry_transient_pauses_at_most_max_backoff_between_tries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pool back from a failover is asked again within MAX_BACKOFF_S, however long it took."""
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    refusals = iter(range(30))

    async def call() -> str:
        if next(refusals) < 29:
            raise RPCError("busy", RPCStatusCode.RESOURCE_EXHAUSTED, b"")
        return "answer"

    assert await pool_client.retry_transient(call, attempts=40) == "answer"
    assert len(pauses) == 29 and max(pauses) == pool_client.MAX_BACKOFF_S


async def test_abandon_request_signals_the_pool_and_never_raises(
    dev_env: WorkflowEnvironment, caplog: pytest.LogCaptureFixture
) -> None:
    queue = new_queue()
    handle: WorkflowHandle[object, object] = await dev_env.client.start_workflow(
        "Unpolled", id=f"unpolled-{queue}", task_queue=queue
    )
    try:
        assert await pool_client.abandon_request(handle, "req-1") is True
        signals = [
            e.workflow_execution_signaled_event_attributes
            async for e in handle.fetch_history_events()
            if e.HasField("workflow_execution_signaled_event_attributes")
        ]
        assert [s.signal_name for s in signals] == ["lease_unanswered"]
    finally:
        await handle.terminate("test over")
    gone = dev_env.client.get_workflow_handle(f"no-such-pool-{queue}")
    with caplog.at_level(logging.WARNING, logger="warmpool.clients.pool"):
        assert await pool_client.abandon_request(gone, "req-2") is False
    assert "req-2" in caplog.text and "went unanswered" in caplog.text


async def test_abandon_request_gives_up_within_its_timeout_when_temporal_is_silent() -> None:
    hung = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    try:
        port = hung.sockets[0].getsockname()[1]
        nowhere = await Client.connect(f"127.0.0.1:{port}", lazy=True)
        started = time.monotonic()
        assert not await pool_client.abandon_request(
            nowhere.get_workflow_handle("warmpool/x"), "req-3", timeout_s=0.5
        )
        assert time.monotonic() - started < 2
    finally:
        hung.close()
