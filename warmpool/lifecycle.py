"""What does an instance's provider status mean for its slot? The incident rules of DESIGN.md.

Pure functions over `InstanceView`, shared by the slot workflow (during provisioning) and the
watch activity (while READY or LEASED), so both apply exactly the same rules.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel

from warmpool.models import FailureReason, InstanceView

FAILURE_STATUSES = frozenset({"exited", "unknown", "offline", "load_failed"})
"""`actual_status` values that never reach running (Vast.ai docs), plus the seeds' load_failed."""

IMAGE_FAILURE_PATTERNS = (
    "failed to register layer",
    "pull access denied",
    "manifest unknown",
    "error pulling image",
    "failed to pull image",
    "no space left on device",
)
"""status_msg fragments that mean the image could not be pulled or extracted: the next attempt
of the slot uses the fallback image when one is configured."""


class StatusVerdict(StrEnum):
    """What the provider's status of an instance means for its slot (`assess`); not the
    reaper's `warmpool.reaper.Verdict` (whose an instance is)."""

    WAIT = "wait"
    RUNNING = "running"
    DESTROY = "destroy"
    GONE = "gone"


class Assessment(BaseModel):
    verdict: StatusVerdict
    reason: FailureReason | None = None
    detail: str = ""
    bad_since: datetime | None = None
    image_failure: bool = False


def has_comfy_mapping(instance: InstanceView, comfy_port: int, internal_port: int) -> bool:
    """A running instance is probe-able only once its ComfyUI port is mapped (DESIGN)."""
    if not instance.public_ip:
        return False
    if instance.direct_port_start is not None and instance.direct_port_start < 0:
        return False
    return f"{comfy_port}/tcp" in instance.ports or f"{internal_port}/tcp" in instance.ports


def is_outbid(instance: InstanceView) -> bool:
    return instance.cur_state == instance.intended_status == instance.next_state == "stopped"


def assess(
    instance: InstanceView | None,
    *,
    gone: bool,
    now: datetime,
    bad_since: datetime | None,
    grace: timedelta,
    fatal_patterns: list[str],
    comfy_port: int,
    internal_port: int,
) -> Assessment:
    """Decide what a slot does with one observation of its instance.

    `bad_since` is when a failure status was first seen (carried by the caller), so that
    a status like `unknown` (one missed host heartbeat) gets the grace period and no more.
    """
    if gone or instance is None:
        return Assessment(
            verdict=StatusVerdict.GONE,
            reason=FailureReason.INSTANCE_GONE,
            detail="the provider no longer knows the instance",
        )
    msg = (instance.status_msg or "").lower()
    image_failure = any(p in msg for p in IMAGE_FAILURE_PATTERNS)
    for pattern in fatal_patterns:
        if pattern and pattern.lower() in msg:
            reason = (
                FailureReason.NO_SPACE
                if "no space left" in pattern.lower()
                else FailureReason.FATAL_STATUS
            )
            return Assessment(
                verdict=StatusVerdict.DESTROY,
                reason=reason,
                detail=f"status_msg: {instance.status_msg}",
                image_failure=image_failure,
            )
    if instance.cur_state == "unloaded":
        return Assessment(
            verdict=StatusVerdict.GONE,
            reason=FailureReason.INSTANCE_GONE,
            detail="contract unloaded",
        )
    if is_outbid(instance):
        return Assessment(
            verdict=StatusVerdict.DESTROY,
            reason=FailureReason.OUTBID,
            detail="outbid: cur_state, intended_status and next_state are stopped",
        )
    status = instance.actual_status
    if status in FAILURE_STATUSES or image_failure:
        since = bad_since or now
        label = status if status in FAILURE_STATUSES else "image failure"
        if now - since >= grace:
            reason = (
                FailureReason.LOAD_FAILED if status == "load_failed" else FailureReason.FATAL_STATUS
            )
            return Assessment(
                verdict=StatusVerdict.DESTROY,
                reason=reason,
                detail=f"{label} for {(now - since).total_seconds():.0f}s "
                f"(grace {grace.total_seconds():.0f}s): {instance.status_msg}",
                bad_since=since,
                image_failure=image_failure,
            )
        return Assessment(
            verdict=StatusVerdict.WAIT,
            detail=f"{label}, within grace",
            bad_since=since,
            image_failure=image_failure,
        )
    if status == "running" and has_comfy_mapping(instance, comfy_port, internal_port):
        return Assessment(verdict=StatusVerdict.RUNNING, detail="running with ComfyUI port mapped")
    detail = "provisioning" if status is None else f"actual_status {status}"
    if status == "running":
        detail = "running, ComfyUI port not mapped yet"
    return Assessment(verdict=StatusVerdict.WAIT, detail=detail)


def backoff_delay(
    consecutive_failures: int, initial: timedelta, maximum: timedelta, jitter: float
) -> timedelta:
    """Exponential backoff with jitter in [0.5, 1.0) of the step: `jitter` is a random in [0, 1).

    The exponent is capped so that hours of failures never overflow a timedelta.
    """
    exponent = min(max(0, consecutive_failures - 1), 32)
    step = min(initial.total_seconds() * 2.0**exponent, maximum.total_seconds())
    return timedelta(seconds=step * (0.5 + jitter / 2))
