"""How long may each activity take, and how is it retried? Every timeout and RetryPolicy, with why.

Pure data (no I/O), imported by workflows. Vast.ai activities go to the provider task queues of
`warmpool/queues.py` (re-exported here). Failure types are `warmpool.errors.ErrorType`.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityCancellationType

from warmpool.errors import ErrorType
from warmpool.models import ProbeConfig, SlotConfig
from warmpool.queues import CREATE_QUEUE, DESTROY_QUEUE, SEARCH_QUEUE, vast_queue

# Provider calls: a few quick retries inside one call (429, 5xx, timeouts); the workflow decides
# what a final failure means (back off, search again, keep destroying).
VAST_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=8,
    non_retryable_error_types=[ErrorType.VAST_AUTH, ErrorType.CONFIGURATION],
)

# Destroy is retried here a few times and then, forever, by the workflow's own loop, which
# records each failure in status: a destroy that keeps failing is reported, never forgotten.
DESTROY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=6,
)

# The slot observes its instance on every poll and simply polls again after a failure, so a
# failing API hands control back within seconds instead of holding the slot in one activity.
OBSERVE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=5),
    maximum_attempts=3,
    non_retryable_error_types=[ErrorType.VAST_AUTH, ErrorType.CONFIGURATION],
)

TOKENS_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_attempts=3)


def vast(task_queue: str, *, timeout: timedelta = timedelta(seconds=90)) -> dict[str, Any]:
    return {
        "task_queue": vast_queue(task_queue),
        "start_to_close_timeout": timeout,
        "retry_policy": VAST_RETRY,
    }


def search(task_queue: str) -> dict[str, Any]:
    """`vast.search_offers`, on the search queue (one start per 6.5 s across every worker)."""
    return {
        "task_queue": SEARCH_QUEUE.name(task_queue),
        "start_to_close_timeout": timedelta(seconds=90),
        "retry_policy": VAST_RETRY,
    }


def observe(task_queue: str) -> dict[str, Any]:
    """`vast.observe`, called on every poll: few, quick attempts (see OBSERVE_RETRY)."""
    return {
        "task_queue": vast_queue(task_queue),
        "start_to_close_timeout": timedelta(seconds=90),
        "retry_policy": OBSERVE_RETRY,
    }


def rent(task_queue: str) -> dict[str, Any]:
    """The rent may wait for its label to appear (adopt-or-create), so it heartbeats.
    On the create queue: one start per 5 s across every worker."""
    return {
        "task_queue": CREATE_QUEUE.name(task_queue),
        "start_to_close_timeout": timedelta(minutes=3),
        "heartbeat_timeout": timedelta(seconds=60),
        "retry_policy": VAST_RETRY,
    }


def destroy(task_queue: str) -> dict[str, Any]:
    """On the destroy queue: one start per 3.3 s across every worker."""
    return {
        "task_queue": DESTROY_QUEUE.name(task_queue),
        "start_to_close_timeout": timedelta(seconds=90),
        "retry_policy": DESTROY_RETRY,
    }


def stop(task_queue: str) -> dict[str, Any]:
    """`vast.stop` (park): on the shared provider queue, see `activities.vast.VastActivities.stop`.
    Idempotent, so retried like any provider call; the slot then watches `vast.observe`."""
    return {
        "task_queue": vast_queue(task_queue),
        "start_to_close_timeout": timedelta(seconds=90),
        "retry_policy": VAST_RETRY,
    }


def start(task_queue: str) -> dict[str, Any]:
    """`vast.start` (resume): as `stop`; whether the instance runs again is for the slot's
    resume timeout to judge, not for this retry policy."""
    return stop(task_queue)


def tokens() -> dict[str, Any]:
    return {"start_to_close_timeout": timedelta(seconds=60), "retry_policy": TOKENS_RETRY}


def await_ready(cfg: SlotConfig) -> dict[str, Any]:
    """Readiness: the retry policy is the backoff loop; schedule-to-close is the total timeout.

    The activity sets a jittered `next_retry_delay` itself; the policy bounds it and stops at
    the readiness timeout (a TimeoutError the workflow reads as "ComfyUI never ready").
    """
    probe = cfg.probe
    return {
        "schedule_to_close_timeout": probe.readiness_timeout,
        "start_to_close_timeout": _one_probe(probe),
        "retry_policy": RetryPolicy(
            initial_interval=probe.readiness_initial_interval,
            backoff_coefficient=2.0,
            maximum_interval=probe.readiness_max_interval,
            non_retryable_error_types=[
                ErrorType.PORTAL_UNAUTHORIZED,
                ErrorType.FIREWALL,
                ErrorType.CONFIGURATION,
            ],
        ),
    }


def _one_probe(probe: ProbeConfig) -> timedelta:
    """One check of every candidate endpoint (TCP, then HTTP), with room to spare."""
    return probe.tcp_timeout + probe.http_timeout + timedelta(seconds=10)


def validate_ports(cfg: SlotConfig) -> dict[str, Any]:
    return {
        "start_to_close_timeout": _one_probe(cfg.probe),
        "retry_policy": RetryPolicy(maximum_attempts=3),
    }


def check_environment(cfg: SlotConfig) -> dict[str, Any]:
    """One check of the environment (`comfy.check_environment`): `/object_info` (up to 30 s,
    `warmpool.comfy.OBJECT_INFO_TIMEOUT_S`: it describes every node class) and one listing per
    models folder.

    The slot loops over checks with its own timer until its provisioning timeout; this policy
    only rides out a short outage (ComfyUI restarted to import new nodes, a dropped
    connection, a 5xx) within one check. A refused token is the probes' configuration error.
    """
    return {
        "start_to_close_timeout": timedelta(seconds=30) + cfg.probe.http_timeout * 4,
        "schedule_to_close_timeout": timedelta(minutes=5),
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(seconds=1),
            backoff_coefficient=2.0,
            maximum_interval=cfg.probe.readiness_max_interval,
            maximum_attempts=5,
            non_retryable_error_types=[ErrorType.PORTAL_UNAUTHORIZED, ErrorType.CONFIGURATION],
        ),
    }


def warmup(cfg: SlotConfig) -> dict[str, Any]:
    return {
        "start_to_close_timeout": cfg.probe.readiness_timeout,
        "retry_policy": RetryPolicy(
            maximum_attempts=2,
            non_retryable_error_types=[ErrorType.WARMUP_FAILED, ErrorType.CONFIGURATION],
        ),
    }


def watch(cfg: SlotConfig) -> dict[str, Any]:
    """Runs as long as the slot serves; the heartbeat timeout replaces a process watchdog.

    The cancel completes (the slot awaits it in the background, before continue-as-new and
    before it finishes), so no watch outlives its slot; the worker's heartbeat throttle
    bounds that wait.
    """
    beat = cfg.keepalive.interval + cfg.keepalive.timeout
    return {
        "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        "start_to_close_timeout": timedelta(days=3650),
        "heartbeat_timeout": beat * 2 + timedelta(seconds=60),
        # A dead worker's watch resumes on another worker 1 s after its heartbeat timeout.
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=60)
        ),
    }


def clean(cfg: SlotConfig) -> dict[str, Any]:
    return {
        "start_to_close_timeout": cfg.probe.http_timeout * 4,
        "retry_policy": RetryPolicy(maximum_attempts=3),
    }


# The SSH log collector reconnects forever (a dropped connection is routine while an instance
# boots); a rejected or missing key can never succeed, so it fails at once.
SSH_FOLLOW_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=300),
    maximum_attempts=0,
    non_retryable_error_types=[ErrorType.SSH_AUTH],
)


def ssh_follow(cfg: SlotConfig) -> dict[str, Any]:
    """Runs while the slot starts; the retry policy and heartbeat timeout are the watchdog.

    A worker that stops heartbeating for `ssh.heartbeat_timeout` is presumed dead and the attempt
    resumes elsewhere from its heartbeated cursor. An attempt ends only by a fatal line, a lost
    connection or a cancel; its start-to-close bound only backstops a stuck one. The slot waits
    (in the background) for the cancel to complete, so no collector outlives its rental.
    """
    ssh = cfg.ssh
    return {
        "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        "start_to_close_timeout": timedelta(hours=1),
        "heartbeat_timeout": ssh.heartbeat_timeout,
        "retry_policy": dataclasses.replace(
            SSH_FOLLOW_RETRY,
            initial_interval=min(SSH_FOLLOW_RETRY.initial_interval, ssh.retry_max_interval),
            maximum_interval=ssh.retry_max_interval,
            maximum_attempts=ssh.max_attempts,
        ),
    }


def message_slot(cfg: SlotConfig) -> dict[str, Any]:
    """A message from the pool to a slot, retried for minutes (the server may restart).

    An `end_lease` is answered after the slot's clean, which may take its whole budget; a
    retry repeats the message, which the slot answers again (it is idempotent).
    """
    return {
        "start_to_close_timeout": clean(cfg)["start_to_close_timeout"] * 3 + timedelta(seconds=30),
        "schedule_to_close_timeout": timedelta(minutes=10),
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10)
        ),
    }


def exclude_machine() -> dict[str, Any]:
    """A slot telling its pool about a bad machine before releasing it: quick, best effort (the
    slot event repeats it)."""
    return {
        "start_to_close_timeout": timedelta(seconds=10),
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(milliseconds=200), maximum_attempts=3
        ),
    }
