"""Which failures are one host's, and which would no other host fix? The pool's market rules.

On Vast.ai bad hosts are common, and a host that failed once will likely fail again: every
failure a machine causes excludes that machine for every slot of the pool for a while
(`PoolConfig.exclude_for`, 24 h by default), and the pool keeps renting elsewhere with backoff.

Safe mode (stop renting until an operator acts) is only for what no other host would fix:
- at once, for a rejected provider key or a portal that refuses our instance token;
- for the same image failing the same way (image pull or extraction, ComfyUI never ready,
  warm-up failed) on `PoolConfig.safe_mode_after` distinct machines since that image was last
  READY: a broken image or model URL, not a bad market.
Host-specific failures on distinct machines (a fatal status, outbid, firewall, a failed create,
keepalive lost, ...) never trip it, however many.

Pure functions over the pool's plain runtime model; the pool workflow calls them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from warmpool.models import ExcludedMachine, FailureReason, PoolRuntime, SlotEvent

SYSTEMIC_AT_ONCE = frozenset(
    {FailureReason.PROVIDER_KEY_REJECTED, FailureReason.PORTAL_UNAUTHORIZED}
)
"""A configuration error: every host would answer the same."""
IMAGE_SUSPECTS = frozenset({FailureReason.COMFY_NEVER_READY, FailureReason.WARMUP_FAILED})
"""Failures that may be the image's (or its models') rather than the host's."""
MAX_EXCLUDED = 1_000
"""Bound on the pool's exclusion list (it travels in every search): the oldest go first."""


def suspect_key(event: SlotEvent) -> str | None:
    """The (image, failure) a failure counts against, or None if it cannot be the image's."""
    if event.failure is None or event.image is None or event.machine_id is None:
        return None
    if event.image_failure or event.failure in IMAGE_SUSPECTS:
        return f"{event.image}|{event.failure.value}"
    return None


def record_failure(
    rt: PoolRuntime, event: SlotEvent, *, now: datetime, exclude_for: timedelta, threshold: int
) -> str | None:
    """Exclude the machine a host failure came from; return why the pool must enter safe
    mode, or None when the failure is the market's."""
    failure = event.failure
    if failure is None:
        return None
    if event.host_fault and event.machine_id is not None:
        exclude(
            rt,
            event.machine_id,
            now=now,
            until=now + exclude_for,
            reason=failure.value,
            slot=event.index,
        )
    if failure in SYSTEMIC_AT_ONCE:
        return f"{failure.value}: {event.reason}"
    if failure == FailureReason.ENVIRONMENT_INCOMPLETE:
        return _missing_everywhere(rt, event, threshold)
    key = suspect_key(event)
    if key is None or event.machine_id is None:
        return None
    machines = rt.suspects.setdefault(key, [])
    if event.machine_id not in machines:
        machines.append(event.machine_id)
    if len(machines) < threshold:
        return None
    listed = ", ".join(str(m) for m in machines[-threshold:])
    return (
        f"image {event.image} failed with {failure.value} on {len(machines)} distinct machines "
        f"({listed}); last: {event.reason}"
    )


ENV_PREFIX = "environment|"


def _missing_everywhere(rt: PoolRuntime, event: SlotEvent, threshold: int) -> str | None:
    """The same node or model missing on `threshold` distinct machines is not the hosts'
    fault but the environment's (a wrong URL, a refused token): safe mode, naming it."""
    if event.machine_id is None:
        return None
    for item in event.missing:
        machines = rt.suspects.setdefault(f"{ENV_PREFIX}{event.env_version}|{item}", [])
        if event.machine_id not in machines:
            machines.append(event.machine_id)
        if len(machines) >= threshold:
            listed = ", ".join(str(m) for m in machines[-threshold:])
            return (
                f"environment {event.env_version}: {item} missing on {len(machines)} distinct "
                f"machines ({listed}): check its URL and the token it needs"
            )
    return None


def image_ready(rt: PoolRuntime, image: str | None, env_version: str | None = None) -> None:
    """A READY proves its image and environment work: forget the failures counted against
    them."""
    prefixes = []
    if image is not None:
        prefixes.append(f"{image}|")
    if env_version is not None:
        prefixes.append(f"{ENV_PREFIX}{env_version}|")
    for key in [k for k in rt.suspects if k.startswith(tuple(prefixes))]:
        del rt.suspects[key]


def exclude(
    rt: PoolRuntime, machine_id: int, *, now: datetime, until: datetime, reason: str, slot: int
) -> None:
    """Exclude a machine until `until` (a later failure extends it, never shortens it)."""
    known = rt.excluded.get(machine_id)
    if known is not None and known.until >= until:
        return
    rt.excluded[machine_id] = ExcludedMachine(
        machine_id=machine_id, until=until, reason=reason, slot=slot, at=now
    )
    if len(rt.excluded) > MAX_EXCLUDED:
        oldest = min(rt.excluded.values(), key=lambda m: m.at)
        del rt.excluded[oldest.machine_id]


def prune(rt: PoolRuntime, now: datetime) -> None:
    """Forget exclusions whose time is up."""
    for machine_id in [m for m, x in rt.excluded.items() if x.until <= now]:
        del rt.excluded[machine_id]


def excluded_ids(rt: PoolRuntime, now: datetime) -> list[int]:
    """The machines no slot of the pool may rent now."""
    return sorted(m for m, x in rt.excluded.items() if x.until > now)
