"""Which injected fault applies to this call or this new instance, and what does it answer?

Faults are matched by scope (endpoint, offer, machine, image), fire with their probability from
the simulator's seeded RNG, and are used up after `count` firings.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from vastsim.config import Fault
from vastsim.httpserver import Response, json_response, text_response

# The spec's per-endpoint thresholds, echoed in 429 bodies as Vast.ai does.
_THRESHOLDS = {"create": 4.5, "show": 2.0, "list_v1": 1.0, "destroy": 3.0, "label": 1.0}

SPEC_MIN_INTERVALS: dict[str, float] = {"bundles": 6.0, **_THRESHOLDS}
"""Vast.ai's minimum intervals per endpoint key and API key (vastai-api.md section 1), read as
seconds; search's "10 per minute per IP" is one per 6 s. For `SimConfig(min_intervals=...)`."""


@dataclass(frozen=True, slots=True)
class Scope:
    """What is known about the call or rental a fault is matched against."""

    endpoint: str | None = None
    offer_id: int | None = None
    machine_id: int | None = None
    image: str | None = None


@dataclass(slots=True)
class _Active:
    id: str
    fault: Fault
    remaining: int | None


class FaultBook:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._active: list[_Active] = []
        self._ids = itertools.count(1)
        self.fired: Counter[str] = Counter()
        """Firings per fault id since start, used-up and cleared faults included."""

    def add(self, fault: Fault) -> str:
        fault_id = f"f{next(self._ids)}"
        self._active.append(_Active(fault_id, fault, fault.count))
        return fault_id

    def clear(self) -> None:
        self._active.clear()

    def listing(self) -> list[dict[str, Any]]:
        return [
            {
                "id": a.id,
                "remaining": a.remaining,
                "fired": self.fired[a.id],
                **a.fault.model_dump(exclude_none=True),
            }
            for a in self._active
        ]

    def take(self, kinds: Collection[str], scope: Scope) -> Fault | None:
        """The first matching fault that fires, used up by one."""
        for active in list(self._active):
            if active.fault.kind in kinds and self._fires(active, scope):
                return active.fault
        return None

    def take_all(self, kinds: Collection[str], scope: Scope) -> list[Fault]:
        """Every matching fault that fires (instance faults combine, e.g. bare + firewall)."""
        return [
            active.fault
            for active in list(self._active)
            if active.fault.kind in kinds and self._fires(active, scope)
        ]

    def _fires(self, active: _Active, scope: Scope) -> bool:
        fault = active.fault
        for wanted, actual in (
            (fault.endpoint, scope.endpoint),
            (fault.offer_id, scope.offer_id),
            (fault.machine_id, scope.machine_id),
            (fault.image, scope.image),
        ):
            if wanted is not None and wanted != actual:
                return False
        if fault.probability < 1 and self._rng.random() >= fault.probability:
            return False
        self.fired[active.id] += 1
        if active.remaining is not None:
            active.remaining -= 1
            if active.remaining <= 0:
                self._active.remove(active)
        return True


@dataclass(frozen=True, slots=True)
class InstanceFaults:
    """The faults one instance was born with (fixed at create, like the host it landed on)."""

    kinds: tuple[str, ...] = ()
    no_space: bool = False
    oci_failed: bool = False
    pull_failed: bool = False
    status: str | None = None
    outbid_after: float | None = None
    ports_never: bool = False
    ports_late: float = 0.0
    comfy_never_ready: bool = False
    comfy_dies_after: float | None = None
    firewall: bool = False
    comfy_mode: str | None = None
    prompt_error: bool = False

    @classmethod
    def from_faults(cls, faults: list[Fault]) -> InstanceFaults:
        by_kind: dict[str, Fault] = {f.kind: f for f in faults}

        def seconds(kind: str) -> float | None:
            fault = by_kind.get(kind)
            return None if fault is None else fault.seconds or 0.0

        return cls(
            kinds=tuple(by_kind),
            no_space="no_space" in by_kind,
            oci_failed="oci_failed" in by_kind,
            pull_failed="pull_failed" in by_kind,
            status=by_kind["status"].value if "status" in by_kind else None,
            outbid_after=seconds("outbid"),
            ports_never="ports_never" in by_kind,
            ports_late=seconds("ports_late") or 0.0,
            comfy_never_ready="comfy_never_ready" in by_kind,
            comfy_dies_after=seconds("comfy_dies_after"),
            firewall="firewall" in by_kind,
            comfy_mode=by_kind["comfy_mode"].value if "comfy_mode" in by_kind else None,
            prompt_error="prompt_error" in by_kind,
        )


_HTML_ERROR = (
    "<html><head><title>{code} {reason}</title></head><body><center><h1>{code} {reason}"
    "</h1></center><hr><center>nginx</center></body></html>\n"
)
_REASONS = {
    200: "OK",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}


def answer(fault: Fault, endpoint: str) -> Response:
    """The response an answering fault gives in place of the endpoint's own."""
    if fault.kind == "rate_limit":
        return _rate_limited(fault, endpoint)
    if fault.kind == "bad_key":
        return unauthorized()
    if fault.kind == "success_false":
        error = fault.value or "server_busy"
        return json_response(
            200, {"success": False, "error": error, "msg": "The request could not be completed."}
        )
    if fault.kind == "server_error" and (fault.status_code or 500) == 500:
        return json_response(
            500, {"success": False, "error": "server_error", "msg": "Internal Server Error"}
        )
    code = fault.status_code or (200 if fault.kind == "non_json" else 500)
    html = _HTML_ERROR.format(code=code, reason=_REASONS.get(code, "Error"))
    return text_response(code, html, "text/html")


def unauthorized() -> Response:
    return json_response(401, {"success": False, "error": "auth_error", "msg": "Invalid user key"})


def _rate_limited(fault: Fault, endpoint: str) -> Response:
    response = too_frequent(endpoint, fault.value)
    if fault.with_retry_after is not None:  # the real API never sends one; clients must cope
        response.headers.append(("Retry-After", f"{fault.with_retry_after:g}"))
    return response


def too_frequent(
    endpoint: str, variant: str | None = None, threshold: float | None = None
) -> Response:
    """Vast.ai's 429 (no Retry-After): JSON `detail`, plain text, or destroy's error shape."""
    if threshold is None:
        threshold = _THRESHOLDS.get(endpoint, 1.0)
    message = f"API requests too frequent endpoint threshold={float(threshold)}"
    variant = variant or ("destroy" if endpoint == "destroy" else "json")
    if variant == "text":
        response = text_response(429, message)
    elif variant == "destroy":
        response = json_response(
            429, {"success": False, "error": "rate_limit_exceeded", "msg": message}
        )
    else:
        response = json_response(429, {"detail": message})
    return response
