"""How does a caller (worker, CLI, gateway) reach the token watch? Start it, ask it, wait for it.

`ensure_token_watch` starts `TokenWatchWorkflow` unless it runs (workers and the run command call
it at start); `notify_watch` asks a running watch for a round now; `wait_for_round` waits for the
first round that started after every request seen so far. A watch that is not running or does not
answer raises `TokenWatchUnavailable` (the CLI prints it, the gateway answers 503).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from warmpool.names import TokenWatch
from warmpool.settings import Settings
from warmpool.tokens import TokenService, TokenWatchInput, TokenWatchStatus

WATCH_ID = TokenWatch.WORKFLOW_ID
POLL_SECONDS = 0.2

WatchHandle = WorkflowHandle[Any, None]


class TokenWatchUnavailable(Exception):
    """The token watch is not running, or did not answer (one line for an operator)."""


def watch_input(settings: Settings) -> TokenWatchInput:
    return TokenWatchInput(
        interval=timedelta(milliseconds=settings.token_check_ms),
        required=[TokenService(s) for s in settings.require_tokens],
    )


async def ensure_token_watch(
    client: Client, settings: Settings, *, workflow_id: str = WATCH_ID, check_now: bool = False
) -> WatchHandle:
    """Start the token watch unless it runs; with `check_now`, also ask it for a round at once
    (one signal-with-start call)."""
    if check_now:
        return await client.start_workflow(
            TokenWatch.WORKFLOW,
            watch_input(settings),
            id=workflow_id,
            task_queue=settings.task_queue,
            start_signal=TokenWatch.CHECK_NOW,
        )
    return await client.start_workflow(
        TokenWatch.WORKFLOW,
        watch_input(settings),
        id=workflow_id,
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )


async def watch_status(handle: WatchHandle) -> TokenWatchStatus:
    """The watch's `status` query, typed."""
    try:
        status: TokenWatchStatus = await handle.query(
            TokenWatch.STATUS, result_type=TokenWatchStatus
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise TokenWatchUnavailable(
                f"no token watch {handle.id} is running: start a worker, or run "
                "`starter.py tokens check-now`"
            ) from None
        raise TokenWatchUnavailable(
            f"token watch {handle.id} did not answer: {exc.message}"
        ) from None
    return status


async def wait_for_round(handle: WatchHandle) -> TokenWatchStatus:
    """The first status whose last round started after every `check_now` seen so far."""
    wanted = (await watch_status(handle)).requests
    while True:
        status = await watch_status(handle)
        if status.served >= wanted:
            return status
        await asyncio.sleep(POLL_SECONDS)


async def notify_watch(client: Client, workflow_id: str = WATCH_ID) -> bool:
    """Ask a running watch to re-check; False when none runs (nothing to tell)."""
    try:
        await client.get_workflow_handle(workflow_id).signal(TokenWatch.CHECK_NOW)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise TokenWatchUnavailable(
            f"cannot signal token watch {workflow_id}: {exc.message}"
        ) from None
    return True
