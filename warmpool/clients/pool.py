"""How does a caller (CLI, gateway, chaos, bench) talk to a pool? Typed calls, transients retried.

An update can be refused for reasons that say nothing about the request: more than 10 updates
in flight on one workflow (RESOURCE_EXHAUSTED), or an update racing the pool's continue-as-new
(WorkflowNotReady). Those are retried with jittered backoff; a real answer (a grant, or an
ApplicationError such as NoCapacity) is returned or raised at once.

An update that reaches the server while the pool's continue-as-new task completes is aborted,
and the SDK's client asks again after a backoff of about a second, whatever its retry settings
(measured: 0.8-1.2 s with a 10 ms or 100 ms initial interval, ~2 s with 2 s). So each attempt
here gets FIRST_ATTEMPT_S, doubling up to MAX_ATTEMPT_S, and a late one is asked again at once
under the same update id: the server attaches a repeat to the update it already has (or answers
it, if it is done), so nothing is applied twice; on the new run the pool's own idempotency
(request id, lease id) answers the repeat.

A caller's deadline bounds all of it (an `asyncio.timeout` around the call): transient refusals
are retried until then, with backoff capped at MAX_BACKOFF_S so that a pool back from a failover
(a dead worker's sticky queue) is asked again within a second. When the deadline passes without
an answer, the lease may still be granted once the pool runs: the caller tells the pool with
`abandon_request` (signal `lease_unanswered`), and the pool releases a grant nobody claims. Each
`acquire` call uses an update id of its own, so a caller's retry with the same request id reaches
the pool (which answers it with the same lease and clears the unclaimed mark) instead of
attaching, unseen by the pool, to the first call's update.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.client import Client, WorkflowHandle, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from warmpool.environment import Environment
from warmpool.labels import pool_workflow_id
from warmpool.models import (
    LeaseGrant,
    LeaseLookup,
    LeaseRequest,
    PoolLease,
    PoolStatus,
    RenewRequest,
    ResizeRequest,
)
from warmpool.names import Pool

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 8
"""Updates this process keeps in flight per pool: the server admits at most 10 per workflow."""
_gates: dict[str, asyncio.Semaphore] = {}


def _gate(pool: str) -> asyncio.Semaphore:
    return _gates.setdefault(pool, asyncio.Semaphore(MAX_IN_FLIGHT))


TRANSIENT = {
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.FAILED_PRECONDITION,
    RPCStatusCode.ABORTED,
}


MAX_BACKOFF_S = 1.0
"""The longest pause between two tries of a transient refusal: a failover (the pool's next task
moved off a dead worker's sticky queue) then costs at most this much beyond its own length."""


async def retry_transient(
    call: Callable[[], Awaitable[T]], *, attempts: int = 12, base: float = 0.02
) -> T:
    """`call()`, a transient RPC refusal retried with jittered backoff (capped at
    MAX_BACKOFF_S), `attempts` tries in all; the caller's deadline or cancel ends it sooner."""
    for attempt in range(attempts):
        try:
            return await call()
        except RPCError as exc:
            if exc.status not in TRANSIENT or attempt == attempts - 1:
                raise
            await asyncio.sleep(random.uniform(0, min(MAX_BACKOFF_S, base * 2**attempt)))
    raise AssertionError("unreachable")


FIRST_ATTEMPT_S = 0.25
"""Far above a quiet lease (p99 ~20 ms), within the p99 under 10 concurrent callers (0.21-0.48 s):
a late attempt costs only an RPC that attaches to the same update."""
MAX_ATTEMPT_S = 8.0


async def update_pool(
    handle: WorkflowHandle[Any, Any],
    name: str,
    arg: object,
    result_type: type[T],
    update_id: str,
) -> T:
    """Execute the pool update `name`: transient refusals retried (`retry_transient`, for up to
    about UPDATE_RETRY_S), and a late attempt asked again under `update_id`.

    The caller's own deadline or cancel ends it (as CancelledError, which the caller's
    `asyncio.timeout` turns into TimeoutError), never a retry.
    """
    return await retry_transient(
        lambda: _ask(handle, name, arg, result_type, update_id), attempts=UPDATE_ATTEMPTS
    )


UPDATE_ATTEMPTS = 40
"""Tries of an update refused as transient: about 20-35 s of backoff, beyond any caller's
deadline (the gateway's is 10 s), so the deadline, not a count, ends a long failover."""


async def _ask(
    handle: WorkflowHandle[Any, Any], name: str, arg: object, result_type: type[T], update_id: str
) -> T:
    attempt_s = FIRST_ATTEMPT_S
    while True:
        try:
            async with asyncio.timeout(attempt_s):
                result: T = await handle.execute_update(
                    name, arg, id=update_id, result_type=result_type
                )
            return result
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from None
            attempt_s = min(attempt_s * 2, MAX_ATTEMPT_S)


def pool_handle(client: Client, pool: str) -> WorkflowHandle[object, PoolStatus]:
    return client.get_workflow_handle(pool_workflow_id(pool), result_type=PoolStatus)


async def acquire(client: Client, pool: str, request: LeaseRequest) -> LeaseGrant:
    """Lease now (or NoCapacity). The update id is this call's own (`lease/<request id>/<n>`):
    its re-asks attach to one update, and a later call with the same request id reaches the
    pool, which answers it with the lease that request id already holds."""
    handle = pool_handle(client, pool)
    update_id = f"lease/{request.request_id}/{uuid.uuid4().hex[:12]}"
    async with _gate(pool):
        return await update_pool(handle, Pool.LEASE, request, LeaseGrant, update_id)


ABANDON_TIMEOUT_S = 3.0
"""How long `abandon_request` tries to reach the pool before it gives up (and logs)."""


async def abandon_request(
    handle: WorkflowHandle[Any, Any], request_id: str, *, timeout_s: float = ABANDON_TIMEOUT_S
) -> bool:
    """Tell the pool that the caller of `request_id` never got an answer (signal
    `lease_unanswered`): a lease granted for it is released unless the caller claims it (asks
    again with the same request id) within the pool's claim window; a request still waiting is
    dropped. Best effort: a failure is logged, never raised. True when the pool has the signal.

    Await it before answering the caller: a retry that follows then reaches the pool after the
    signal, and claims the lease instead of being undone by it.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await retry_transient(lambda: handle.signal(Pool.LEASE_UNANSWERED, request_id))
    except Exception as exc:  # noqa: BLE001 - best effort: the pool's own expiry is the backstop
        log.warning(
            "could not tell pool %s that lease request %s went unanswered: %s",
            handle.id,
            request_id,
            exc if str(exc) else type(exc).__name__,
        )
        return False
    return True


class LeaseNotGranted(Exception):
    """A waited-on request ended without a lease: its wait ran out, or the pool refused it."""


WAIT_GRACE_S = 5.0
"""How long past `wait_for` a waiter keeps asking, for the pool's own deadline to be seen."""


async def acquire_waiting(
    client: Client, pool: str, request: LeaseRequest, *, poll_s: float = 0.5
) -> LeaseGrant:
    """Wait for capacity through the `request_lease` signal and the `lease_request` query.

    No update is held open while waiting: a workflow admits at most 10 in-flight updates, and
    a wait can last minutes. A request the pool still has waiting past the wait (and grace) is
    abandoned (`abandon_request`), so the pool drops it instead of granting it to nobody.
    """
    handle = pool_handle(client, pool)
    await retry_transient(lambda: handle.signal(Pool.REQUEST_LEASE, request))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + request.wait_for.total_seconds() + WAIT_GRACE_S
    while True:
        lookup: LeaseLookup = await retry_transient(
            lambda: handle.query(Pool.LEASE_REQUEST, request.request_id, result_type=LeaseLookup)
        )
        if lookup.status == "granted" and lookup.grant is not None:
            return lookup.grant
        if lookup.status == "expired":
            raise LeaseNotGranted(lookup.reason or "no capacity before the deadline")
        if loop.time() >= deadline:
            await abandon_request(handle, request.request_id)
            raise LeaseNotGranted("still waiting at the deadline")
        await asyncio.sleep(poll_s)


async def renew(client: Client, pool: str, request: RenewRequest) -> LeaseGrant:
    handle = pool_handle(client, pool)
    update_id = f"renew/{request.lease_id}/{uuid.uuid4().hex}"
    return await update_pool(handle, Pool.RENEW, request, LeaseGrant, update_id)


async def release(client: Client, pool: str, lease_id: str) -> PoolLease:
    handle = pool_handle(client, pool)
    return await update_pool(handle, Pool.RELEASE, lease_id, PoolLease, f"release/{lease_id}")


async def show(client: Client, pool: str, lease_id: str) -> PoolLease | None:
    handle = pool_handle(client, pool)
    result: PoolLease | None = await handle.query(
        Pool.LEASE_INFO,
        lease_id,
        result_type=PoolLease | None,  # type: ignore[arg-type]
    )
    return result


async def query_status(
    handle: WorkflowHandle[Any, Any], *, rpc_timeout: timedelta | None = None
) -> PoolStatus:
    """The pool's `status` query, typed."""
    status: PoolStatus = await handle.query(
        Pool.STATUS, result_type=PoolStatus, rpc_timeout=rpc_timeout
    )
    return status


async def status(client: Client, pool: str) -> PoolStatus:
    return await query_status(pool_handle(client, pool))


async def resize(client: Client, pool: str, request: ResizeRequest) -> PoolStatus:
    """The `resize` update, transient refusals retried; a refusal raises."""
    handle = pool_handle(client, pool)
    result: PoolStatus = await retry_transient(
        lambda: handle.execute_update(Pool.RESIZE, request, result_type=PoolStatus)
    )
    return result


async def set_environment(client: Client, pool: str, env: Environment) -> PoolStatus:
    """The `set_environment` update: `env` becomes the pool's target and slots on another
    version are replaced a surge at a time (`pool_core._roll_out`). Answers the pool's status
    right after (before any slot moved); a refusal (a draining pool) raises. Applying the
    version that is already the target changes nothing but the order of applied versions."""
    handle = pool_handle(client, pool)
    update_id = f"set-env/{env.version}/{uuid.uuid4().hex[:12]}"
    return await update_pool(handle, Pool.SET_ENVIRONMENT, env, PoolStatus, update_id)
