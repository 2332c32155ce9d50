"""How does the pool talk to Vast.ai? An async client for the eight calls it needs, and models.

The facts come from docs/reference/vastai-api.md. One method is one HTTP request (pages of the list
aside): there are no retry loops here, because Temporal activities retry. Every answer is
checked, and anything unexpected raises a `warmpool.errors.VastError`; an answer is never guessed
into "nothing there", since a list misread as empty once made a controller launch replacements
while the unseen instances kept billing.

The API key is read from a callable on every request (so a rotated key is used at once) and is
sent only as a bearer header; it never enters a log line, a repr or an exception message.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Any, TypeVar

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from warmpool.errors import (
    VastAuthError,
    VastCreateFailed,
    VastError,
    VastMalformedResponse,
    VastNotFound,
    VastOfferUnavailable,
    VastRateLimited,
    VastRequestRejected,
    VastServerError,
    VastTransportError,
)
from warmpool.models import InstanceView, OfferConstraints, OfferSummary

DEFAULT_BASE_URL = "https://console.vast.ai/api/v0"
LIST_PAGE_MAX = 25  # the v1 list caps a page at 25 rows
MAX_LIST_PAGES = 400  # 10 000 instances, far beyond any pool: a cursor that never ends is an error
MAX_PORTS = 64  # Vast.ai maps at most 64 ports per instance

# Vast.ai limits each endpoint to a minimum interval between calls, per key and per IP. The spec
# gives thresholds without a unit (create 4.5 with a 12 penalty, show 2.0, v1 list 1.0, destroy
# 3.0, state/label 1.0: the stop and start calls) and search as "10 per minute per IP", i.e. one
# per 6 s: the same range, so we read them as seconds. Each gets about 10 % headroom because the
# server measures arrivals, not our sends; create gets more since a violation costs the 12 s
# penalty. The account call has no published threshold and is rare, so it gets the cheapest
# read's. These pace one client only: the limits are per key, so calls from several workers are
# kept under them by the task-queue rate limit.
VAST_DEFAULT_MIN_INTERVALS: Mapping[str, float] = MappingProxyType(
    {
        "bundles": 6.5,
        "create": 5.0,
        "show": 2.2,
        "list": 1.1,
        "destroy": 3.3,
        "state": 1.1,
        "user": 1.1,
    }
)

_ENDPOINT_KEYS = frozenset(VAST_DEFAULT_MIN_INTERVALS)

# After a 429 (Vast.ai sends no Retry-After) the endpoint's next call in this client waits a
# jittered backoff: 2**n intervals after n consecutive 429s, times a random 0.5-1.0, at least one
# interval, at most RATE_LIMIT_BACKOFF_GROWTH intervals and RATE_LIMIT_BACKOFF_MAX_S (below the
# rent's 60 s heartbeat timeout). Any other answer of that endpoint resets the count.
RATE_LIMIT_BACKOFF_GROWTH = 16.0
RATE_LIMIT_BACKOFF_MAX_S = 30.0


def scaled_min_intervals(scale: float) -> dict[str, float]:
    """The default intervals times `scale` (0 turns pacing and the 429 backoff off)."""
    if scale < 0 or not math.isfinite(scale):
        raise ValueError(f"pacing scale must be a finite number >= 0, not {scale}")
    return {key: interval * scale for key, interval in VAST_DEFAULT_MIN_INTERVALS.items()}


_GONE_CODES = frozenset({"no_such_instance", "not_found"})
HOURS_PER_MONTH = 720.0  # Vast.ai prices disk in $/GB/month of 30 days (the CLI's month)
_OFFER_GONE_PHRASES = ("unavailable", "no longer rentable", "already rented")
_MIN_ECHOED_SECRET = 8  # env values this long are scrubbed from create errors; "1" is not a secret

_log = structlog.get_logger(__name__)


# --- models of the raw API -------------------------------------------------------------------


class _ApiModel(BaseModel):
    """Provider answers: unknown fields ignored (Vast.ai adds fields), numbers accepted as text."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, validate_by_name=True)


def _stripped(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _optional_int(value: Any) -> int | None:
    """A port as Docker reports it: "41234", 41234, or something unusable (None)."""
    if isinstance(value, bool):
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


class PortBinding(_ApiModel):
    """One Docker mapping of a container port; Vast.ai sends HostPort as a string."""

    host_ip: str | None = Field(default=None, alias="HostIp")
    host_port: int | None = Field(default=None, alias="HostPort")

    _port = field_validator("host_port", mode="before")(_optional_int)


class Instance(_ApiModel):
    """A rented instance as Vast.ai reports it; any field can be null (the SDK types all so)."""

    id: int | None = None
    machine_id: int | None = None
    host_id: int | None = None
    label: str | None = None
    actual_status: str | None = None
    intended_status: str | None = None
    cur_state: str | None = None
    next_state: str | None = None
    status_msg: str | None = None
    public_ipaddr: str | None = None
    ports: dict[str, list[PortBinding]] = Field(default_factory=dict)
    direct_port_start: int | None = None
    direct_port_end: int | None = None
    direct_port_count: int | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    ssh_idx: str | None = None
    dph_total: float | None = None
    storage_cost: float | None = None  # $/GB/month of disk, what a stopped instance still bills
    storage_total_cost: float | None = None  # $/h of this instance's disk
    disk_space: float | None = None
    gpu_name: str | None = None
    num_gpus: int | None = None
    geolocation: str | None = None
    image_uuid: str | None = None
    image_runtype: str | None = None
    start_date: float | None = None
    end_date: float | None = None
    duration: float | None = None
    uptime_mins: float | None = None
    local_ipaddrs: str | None = None
    # The instance's env holds tokens (HF, portal): kept out of reprs.
    extra_env: list[tuple[str, str]] = Field(default_factory=list, repr=False)

    _strip = field_validator("public_ipaddr", mode="before")(_stripped)

    @field_validator("ports", mode="before")
    @classmethod
    def _ports(cls, value: Any) -> Any:
        """Keep only the documented dict of lists of objects; null or the "array of integers"
        variant of the show spec yield no mapping rather than a malformed instance."""
        if not isinstance(value, dict):
            return {}
        return {
            str(name): [b for b in bindings if isinstance(b, dict)]
            for name, bindings in value.items()
            if isinstance(bindings, list)
        }

    @field_validator("local_ipaddrs", mode="before")
    @classmethod
    def _local_ipaddrs(cls, value: Any) -> Any:
        if isinstance(value, list):
            return " ".join(str(v) for v in value)
        return value.strip() if isinstance(value, str) else None

    @field_validator("extra_env", mode="before")
    @classmethod
    def _extra_env(cls, value: Any) -> Any:
        """Documented as [[key, value], ...]; specs disagree, so a dict is read too and other
        shapes give nothing (this field never decides anything)."""
        items: Iterable[Any]
        if isinstance(value, dict):
            items = value.items()
        elif isinstance(value, list):
            items = value
        else:
            return []
        return [
            (str(pair[0]), "" if pair[1] is None else str(pair[1]))
            for pair in items
            if isinstance(pair, list | tuple) and len(pair) == 2
        ]


class Offer(_ApiModel):
    """One rentable offer (an "ask") from a search. Units: gpu_ram and cpu_ram MB, disk GB."""

    id: int
    machine_id: int | None = None
    host_id: int | None = None
    gpu_name: str | None = None
    num_gpus: int | None = None
    gpu_ram: float | None = None
    cpu_cores: int | None = None
    cpu_cores_effective: float | None = None
    cpu_ram: float | None = None
    disk_space: float | None = None
    dph_base: float | None = None
    dph_total: float | None = None
    min_bid: float | None = None
    storage_cost: float | None = None
    inet_down: float | None = None
    inet_up: float | None = None
    reliability: float | None = None
    reliability2: float | None = None
    score: float | None = None
    direct_port_count: int | None = None
    public_ipaddr: str | None = None
    static_ip: bool | None = None
    geolocation: str | None = None
    verification: str | None = None
    rentable: bool | None = None
    rented: bool | None = None
    external: bool | None = None
    is_bid: bool | None = None

    _strip = field_validator("public_ipaddr", mode="before")(_stripped)


class VastUser(_ApiModel):
    """The account behind the key. The raw answer also carries `api_key`: it is never kept."""

    id: int | None = None
    key_id: int | None = None
    username: str | None = None
    email: str | None = None
    credit: float | None = None
    balance: float | None = None
    can_pay: bool | None = None
    has_billing: bool | None = None


class CreateRequest(BaseModel):
    """What to run on a rented offer. `price` None rents on-demand; `env` is a JSON object
    (variables and `port_env` port requests) and may hold tokens, so it stays out of reprs."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(min_length=1, max_length=1024)
    disk: float = Field(gt=0)
    label: str
    env: dict[str, str] = Field(default_factory=dict, repr=False)
    onstart: str | None = Field(default=None, repr=False)
    runtype: str | None = None
    price: float | None = None
    # Fail the rent instead of getting a stopped instance that still bills for its disk.
    cancel_unavail: bool = True

    def api_body(self) -> dict[str, Any]:
        """The PUT /asks/{id}/ body; optional keys are omitted (a present price means a bid)."""
        body: dict[str, Any] = {
            "client_id": "me",
            "image": self.image,
            "disk": self.disk,
            "label": self.label,
            "env": dict(self.env),
            "cancel_unavail": self.cancel_unavail,
        }
        if self.onstart is not None:
            body["onstart"] = self.onstart
        if self.runtype is not None:
            body["runtype"] = self.runtype
        if self.price is not None:
            body["price"] = self.price
        return body


def port_env(ports: Iterable[int]) -> dict[str, str]:
    """Port requests as env entries, the dict form dstack sends: {"-p 8188:8188": "1"}."""
    env: dict[str, str] = {}
    for port in ports:
        if port <= 0:
            raise ValueError(f"invalid port {port}")
        env[f"-p {port}:{port}"] = "1"
    if len(env) > MAX_PORTS:
        raise ValueError(f"{len(env)} ports requested; Vast.ai maps at most {MAX_PORTS}")
    return env


# --- translation to the boundary models ------------------------------------------------------


def to_view(instance: Instance) -> InstanceView:
    """The workflow's view: ports flattened to {"8188/tcp": 41234}, no env, no secrets."""
    if instance.id is None:
        raise ValueError("an instance without an id has no view")
    ports: dict[str, int] = {}
    for name, bindings in instance.ports.items():
        host_port = next((b.host_port for b in bindings if b.host_port is not None), None)
        if host_port is not None:
            ports[name] = host_port
    return InstanceView(
        id=instance.id,
        label=instance.label,
        machine_id=instance.machine_id,
        actual_status=instance.actual_status,
        intended_status=instance.intended_status,
        cur_state=instance.cur_state,
        next_state=instance.next_state,
        status_msg=instance.status_msg,
        public_ip=instance.public_ipaddr or None,
        ports=ports,
        direct_port_start=instance.direct_port_start,
        direct_port_end=instance.direct_port_end,
        dph_total=instance.dph_total,
        image=instance.image_uuid,
        ssh_host=instance.ssh_host,
        ssh_port=instance.ssh_port,
    )


def to_summary(offer: Offer) -> OfferSummary:
    return OfferSummary(
        id=offer.id,
        machine_id=offer.machine_id,
        gpu_name=offer.gpu_name,
        num_gpus=offer.num_gpus,
        dph_total=offer.dph_total,
        storage_cost=offer.storage_cost,
        disk_space=offer.disk_space,
        direct_port_count=offer.direct_port_count,
        geolocation=offer.geolocation,
    )


# --- what an instance bills ------------------------------------------------------------------


def is_stopped(instance: Instance) -> bool:
    """The container is stopped (parked, outbid, or not resumed yet): its GPU bills nothing."""
    if instance.actual_status is not None:
        return instance.actual_status == "stopped"
    return instance.cur_state == "stopped"


def storage_per_hour(instance: Instance) -> float | None:
    """$/h of the instance's disk: `storage_total_cost`, else disk GB x `storage_cost` / month."""
    if instance.storage_total_cost is not None:
        return instance.storage_total_cost
    if instance.storage_cost is None or instance.disk_space is None:
        return None
    return instance.disk_space * instance.storage_cost / HOURS_PER_MONTH


def billing_per_hour(instance: Instance) -> float | None:
    """What the instance bills now, $/h: its disk only while stopped (vastai-api.md section 5),
    else `dph_total`. Vast.ai may keep showing the contract's `dph_total` on a stopped
    instance, so that figure is never taken for a stopped one's cost."""
    return storage_per_hour(instance) if is_stopped(instance) else instance.dph_total


# --- search query and its client-side re-check -----------------------------------------------


def _gpu_name(name: str) -> str:
    """Vast.ai names GPUs with spaces ("RTX 4090"); the CLI turns "_" into spaces too."""
    return " ".join(name.replace("_", " ").split())


def search_query(
    constraints: OfferConstraints, exclude_machines: Collection[int] = ()
) -> dict[str, Any]:
    """The POST /bundles/ body: filters, cheapest first, disk priced at the size we rent."""
    c = constraints
    query: dict[str, Any] = {
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "external": {"eq": False},
        "disk_space": {"gte": c.min_disk_gb},
        "direct_port_count": {"gte": c.min_direct_ports},
        "dph_total": {"lte": c.max_dph},
        "inet_down": {"gte": c.min_inet_down},
        "reliability": {"gte": c.min_reliability},
        "num_gpus": {"eq": c.num_gpus},
        "order": [["dph_total", "asc"]],
        "type": "on-demand",
        "limit": c.limit,
        "allocated_storage": c.min_disk_gb,
    }
    if c.verified_only:
        query["verified"] = {"eq": True}
    if c.gpu_names:
        query["gpu_name"] = {"in": [_gpu_name(n) for n in c.gpu_names]}
    if c.min_gpu_ram_mb > 0:
        query["gpu_ram"] = {"gte": c.min_gpu_ram_mb}
    if exclude_machines:
        query["machine_id"] = {"notin": sorted(exclude_machines)}
    return query


def _at_least(value: float | None, bound: float) -> bool:
    return bound <= 0 or (value is not None and value >= bound)


def offer_acceptable(
    offer: Offer, constraints: OfferConstraints, exclude_machines: Collection[int] = ()
) -> bool:
    """Whether an offer meets the constraints, checked here because a server may ignore a filter.

    A missing value fails a numeric bound (an unknown disk size is the incident we guard
    against); a missing status flag passes, since only a contradicting one is evidence.
    """
    c = constraints
    if exclude_machines and (offer.machine_id is None or offer.machine_id in exclude_machines):
        return False
    if c.gpu_names:
        wanted = {_gpu_name(n).casefold() for n in c.gpu_names}
        if offer.gpu_name is None or _gpu_name(offer.gpu_name).casefold() not in wanted:
            return False
    if c.verified_only and offer.verification not in (None, "verified"):
        return False
    return (
        offer.dph_total is not None
        and offer.dph_total <= c.max_dph
        and offer.num_gpus == c.num_gpus
        and _at_least(offer.disk_space, c.min_disk_gb)
        and _at_least(offer.direct_port_count, c.min_direct_ports)
        and _at_least(offer.inet_down, c.min_inet_down)
        and _at_least(offer.reliability, c.min_reliability)
        and _at_least(offer.gpu_ram, c.min_gpu_ram_mb)
        and offer.rentable is not False
        and offer.rented is not True
        and offer.external is not True
    )


# --- answer classification -------------------------------------------------------------------

_NOT_JSON = object()
_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class _Answer:
    """One HTTP answer, with what is needed to describe it safely."""

    endpoint: str
    status: int
    body: Any  # parsed JSON, or _NOT_JSON
    text: str
    retry_after: str | None
    secrets: tuple[str, ...]

    @property
    def fields(self) -> dict[str, Any]:
        return self.body if isinstance(self.body, dict) else {}

    @property
    def code(self) -> str | None:
        code = self.fields.get("error")
        return code if isinstance(code, str) else None

    @property
    def message(self) -> str | None:
        """The provider's words: `msg`, `message` or `detail`, else the raw body (non-JSON)."""
        for key in ("msg", "message", "detail"):
            value = self.fields.get(key)
            if isinstance(value, str) and value:
                return value
        return None if isinstance(self.body, dict) else self.text

    def malformed(self, problem: str) -> VastMalformedResponse:
        return VastMalformedResponse(
            problem, endpoint=self.endpoint, status=self.status, redact=self.secrets
        )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or HTTP-date), or None."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = parsedate_to_datetime(value.strip())
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _new_contract(fields: Mapping[str, Any]) -> int | None:
    """The instance id of a create answer, if it names one (an int, or digits as text)."""
    value = fields.get("new_contract")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _offer_gone(code: str | None, msg: str | None) -> bool:
    """Vanished offer, matched as dstack and SkyPilot do (vastai-api.md section 3)."""
    text = f"{code or ''} {msg or ''}".lower()
    if "no_such_ask" in text:
        return True
    return "offer" in text and any(phrase in text for phrase in _OFFER_GONE_PHRASES)


def _rejection(answer: _Answer, *, create: bool = False) -> VastError:
    """The exception for an answer that is not a success, most specific first."""
    status, code, msg, secrets = answer.status, answer.code, answer.message, answer.secrets
    where = answer.endpoint
    if create and (contract := _new_contract(answer.fields)) is not None:
        # An instance exists despite the failure: the caller must destroy it.
        return VastCreateFailed(
            msg, endpoint=where, status=status, code=code, redact=secrets, new_contract=contract
        )
    error_type: type[VastError]
    if status in (401, 403) or code == "auth_error":
        error_type = VastAuthError
    elif status == 429 or code == "rate_limit_exceeded":
        return VastRateLimited(
            msg,
            endpoint=where,
            status=status,
            code=code,
            redact=secrets,
            retry_after=parse_retry_after(answer.retry_after),
        )
    elif status >= 500:
        error_type = VastServerError
    elif _offer_gone(code, msg) or (create and status == 410):
        error_type = VastOfferUnavailable
    elif create:
        error_type = VastCreateFailed
    elif status == 404:
        error_type = VastNotFound
    else:
        error_type = VastRequestRejected
    return error_type(msg, endpoint=where, status=status, code=code, redact=secrets)


def _success(answer: _Answer, *, create: bool = False) -> dict[str, Any]:
    """The JSON object of a successful answer; any other answer raises."""
    if not 200 <= answer.status < 300:
        raise _rejection(answer, create=create)
    if not isinstance(answer.body, dict):
        kind = "a non-JSON body" if answer.body is _NOT_JSON else "JSON that is not an object"
        raise answer.malformed(f"expected a JSON object, got {kind}: {answer.text}")
    if answer.body.get("success") is False:
        raise _rejection(answer, create=create)
    return answer.body


def _parse(model: type[_M], data: Any, answer: _Answer, what: str) -> _M:
    """Validate one provider object; a mismatch is malformed, described without input values
    (they may hold tokens) and raised outside the except so the ValidationError is not chained."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:3])
    raise answer.malformed(f"bad {what}: {where}")


def _query_value(value: Any) -> str:
    """Query values are JSON, except plain strings (tokens, "me"), as the CLI sends them."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


# --- the client ------------------------------------------------------------------------------


class VastClient:
    """The Vast.ai calls the pool makes. Use as `async with VastClient(...) as vast:`."""

    def __init__(
        self,
        base_url: str,
        api_key: Callable[[], str],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        min_intervals: Mapping[str, float] | None = None,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        """`min_intervals` (seconds per endpoint key, e.g. `VAST_DEFAULT_MIN_INTERVALS`) paces
        this client's calls and turns on the 429 backoff for those endpoints; `jitter(lo, hi)`
        draws the backoff's random part (tests pin it)."""
        root = base_url.rstrip("/")
        if not root.endswith("/api/v0"):
            raise ValueError(f"base_url must end with /api/v0, e.g. {DEFAULT_BASE_URL}")
        intervals = dict(min_intervals or {})
        unknown = set(intervals) - _ENDPOINT_KEYS
        if unknown:
            raise ValueError(f"unknown endpoint keys in min_intervals: {sorted(unknown)}")
        self._v0 = root
        self._v1 = root.removesuffix("/api/v0") + "/api/v1"
        self._api_key = api_key
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            headers={"Accept": "application/json", "User-Agent": "comfy-warmpool"},
        )
        self._min_intervals = intervals
        self._pace_locks = {key: asyncio.Lock() for key in _ENDPOINT_KEYS}
        self._last_call: dict[str, float] = {}
        self._not_before: dict[str, float] = {}  # pushed forward by a 429's backoff
        self._strikes: dict[str, int] = {}  # consecutive 429s per endpoint key
        self._jitter = jitter

    def __repr__(self) -> str:
        return f"VastClient(base_url={self._v0!r})"

    async def __aenter__(self) -> VastClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- calls --------------------------------------------------------------------------------

    async def current_user(self) -> VastUser:
        """GET /users/current/: the "does this key work" call."""
        answer = await self._send("user", "GET", f"{self._v0}/users/current/")
        return _parse(VastUser, _success(answer), answer, "account")

    async def search_offers(
        self, constraints: OfferConstraints, *, exclude_machines: Collection[int] = ()
    ) -> list[Offer]:
        """Acceptable offers, cheapest first; every offer is re-checked against the constraints."""
        query = search_query(constraints, exclude_machines)
        answer = await self._send("bundles", "POST", f"{self._v0}/bundles/", json_body=query)
        rows = _success(answer).get("offers")
        if not isinstance(rows, list):
            raise answer.malformed('"offers" is not a list')
        offers = [_parse(Offer, row, answer, "offer") for row in rows]
        kept = [o for o in offers if offer_acceptable(o, constraints, exclude_machines)]
        kept.sort(key=lambda o: o.dph_total or 0.0)
        return kept[: constraints.limit]

    async def create_instance(self, offer_id: int, request: CreateRequest) -> int:
        """Rent an offer; returns the new instance id (`new_contract`).

        Never repeat a create because it failed: it may have succeeded (look the label up first).
        A failure that names a `new_contract` raises VastCreateFailed carrying it.
        """
        echoes = tuple(v for v in request.env.values() if len(v) >= _MIN_ECHOED_SECRET)
        answer = await self._send(
            "create",
            "PUT",
            f"{self._v0}/asks/{offer_id}/",
            json_body=request.api_body(),
            extra_secrets=echoes,
        )
        body = _success(answer, create=True)
        contract = _new_contract(body)
        if body.get("success") is not True:
            raise VastCreateFailed(
                answer.message or 'the answer lacks "success": true',
                endpoint=answer.endpoint,
                status=answer.status,
                code=answer.code,
                redact=answer.secrets,
                new_contract=contract,
            )
        if contract is None:
            raise answer.malformed('success without an integer "new_contract"')
        return contract

    async def show_instance(self, instance_id: int) -> Instance | None:
        """One instance, or None once it is gone (`{"instances": null}` or 404)."""
        answer = await self._send(
            "show", "GET", f"{self._v0}/instances/{instance_id}/", params={"owner": "me"}
        )
        if answer.status == 404:
            return None
        body = _success(answer)
        if "instances" not in body:
            raise answer.malformed('no "instances" key')
        row = body["instances"]
        if row is None:
            return None
        if not isinstance(row, dict):
            raise answer.malformed('"instances" is neither an object nor null')
        instance = _parse(Instance, row, answer, "instance")
        if instance.id is None:
            instance.id = instance_id
        elif instance.id != instance_id:
            raise answer.malformed(f"asked for instance {instance_id}, got {instance.id}")
        return instance

    async def list_instances(
        self, *, label: str | None = None, page_size: int = LIST_PAGE_MAX
    ) -> list[Instance]:
        """Every instance of the account (or with this exact label), by id, over all v1 pages."""
        if not 1 <= page_size <= LIST_PAGE_MAX:
            raise ValueError(f"page_size must be 1..{LIST_PAGE_MAX}")
        params: dict[str, str] = {
            "limit": _query_value(page_size),
            "order_by": _query_value([{"col": "id", "dir": "asc"}]),
        }
        if label is not None:
            params["select_filters"] = _query_value({"label": {"eq": label}})
        found: dict[int, Instance] = {}
        seen_tokens: set[str] = set()
        while True:
            answer = await self._send("list", "GET", f"{self._v1}/instances/", params=params)
            body = _success(answer)
            for instance_id, instance in _page_rows(answer, body):
                if label is None or instance.label == label:  # the server may ignore the filter
                    found.setdefault(instance_id, instance)
            token = body.get("next_token")
            if token is None or token == "":
                return [found[k] for k in sorted(found)]
            if not isinstance(token, str | int) or isinstance(token, bool):
                raise answer.malformed('"next_token" is neither text nor null')
            if str(token) in seen_tokens:
                raise answer.malformed("the list cursor repeats")
            if len(seen_tokens) >= MAX_LIST_PAGES:
                raise answer.malformed(f"more than {MAX_LIST_PAGES} pages")
            seen_tokens.add(str(token))
            params["after_token"] = str(token)

    async def destroy_instance(self, instance_id: int) -> bool:
        """Ask to destroy; False if it was already gone. True means accepted, not confirmed:
        confirmation is show() answering None or cur_state "unloaded"."""
        answer = await self._send(
            "destroy", "DELETE", f"{self._v0}/instances/{instance_id}/", json_body={}
        )
        refused = answer.status >= 400 or answer.fields.get("success") is False
        if refused and answer.status < 500 and answer.code in _GONE_CODES:
            return False
        _success(answer)
        return True

    async def stop_instance(self, instance_id: int) -> None:
        """Ask to stop (`PUT /instances/{id}/ {"state": "stopped"}`): the disk is kept and
        billed, the GPU is freed. Accepted, not done: `actual_status` says when it is stopped.
        Raises VastNotFound when the instance is gone (`no_such_instance` / `not_found`)."""
        await self._set_state(instance_id, "stopped")

    async def start_instance(self, instance_id: int) -> None:
        """Ask a stopped instance to run again (`{"state": "running"}`). Accepted, not done:
        it runs only if its host's GPU is still free, so the caller watches `actual_status`
        (with new host ports) under its own timeout. Raises VastNotFound when it is gone."""
        await self._set_state(instance_id, "running")

    async def _set_state(self, instance_id: int, state: str) -> None:
        answer = await self._send(
            "state", "PUT", f"{self._v0}/instances/{instance_id}/", json_body={"state": state}
        )
        refused = answer.status >= 400 or answer.fields.get("success") is False
        if refused and answer.status < 500 and answer.code in _GONE_CODES:
            # also for a 200 with success false: the caller must tell "gone" from "refused"
            raise VastNotFound(
                answer.message,
                endpoint=answer.endpoint,
                status=answer.status,
                code=answer.code,
                redact=answer.secrets,
            )
        _success(answer)

    # --- transport ----------------------------------------------------------------------------

    async def _send(
        self,
        key: str,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        extra_secrets: tuple[str, ...] = (),
    ) -> _Answer:
        endpoint = f"{method} {httpx.URL(url).path}"
        raw_key = self._api_key()
        api_key = raw_key.strip()
        secrets = (raw_key, api_key, *extra_secrets)
        if not api_key:
            raise VastAuthError("no API key configured", endpoint=endpoint)
        if not (api_key.isascii() and api_key.isprintable()):
            raise VastAuthError(
                "the API key has characters a header cannot hold", endpoint=endpoint
            )
        request = self._http.build_request(
            method,
            url,
            params=params,
            json=json_body,
            headers={"Authorization": f"Bearer {api_key}"},
        )
        await self._pace(key)
        started = time.monotonic()
        outcome = await self._transmit(request, endpoint, secrets)
        elapsed_ms = round((time.monotonic() - started) * 1000, 1)
        status = outcome.status_code if isinstance(outcome, httpx.Response) else None
        _log.debug("vast.call", endpoint=endpoint, status=status, duration_ms=elapsed_ms)
        if isinstance(outcome, VastError):
            raise outcome  # raised outside the except: the httpx error (and the key) stays behind
        try:
            body: Any = json.loads(outcome.content)
        except ValueError:
            body = _NOT_JSON
        answer = _Answer(
            endpoint=endpoint,
            status=outcome.status_code,
            body=body,
            text=outcome.text,
            retry_after=outcome.headers.get("Retry-After"),
            secrets=secrets,
        )
        self._note_rate_limit(key, answer)
        return answer

    async def _transmit(
        self, request: httpx.Request, endpoint: str, secrets: tuple[str, ...]
    ) -> httpx.Response | VastError:
        """The response, or the error to raise; returned so that no httpx exception (whose
        request holds the bearer header) is chained to ours."""
        try:
            return await self._http.send(request)
        except httpx.TransportError as exc:
            return VastTransportError(_describe(exc), endpoint=endpoint, redact=secrets)
        except httpx.DecodingError as exc:
            return VastMalformedResponse(_describe(exc), endpoint=endpoint, redact=secrets)

    async def _pace(self, key: str) -> None:
        """Wait until `min_intervals[key]` has passed since this client's previous such call,
        and until any 429 backoff of that endpoint is over. Callers queue on one lock per
        endpoint, and the one at the head re-checks after its sleep: a 429 that arrives
        meanwhile (another caller's) holds it back too."""
        interval = self._min_intervals.get(key, 0.0)
        if interval <= 0:
            return
        async with self._pace_locks[key]:
            while True:
                last = self._last_call.get(key)
                due = self._not_before.get(key, 0.0)
                if last is not None:
                    due = max(due, last + interval)
                wait = due - time.monotonic()
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            self._last_call[key] = time.monotonic()

    def _note_rate_limit(self, key: str, answer: _Answer) -> None:
        """After a 429, push the endpoint's next call back for every caller of this client
        (Retry-After when sent, else a jittered backoff growing with consecutive 429s); any
        other answer ends the streak. Endpoints without a minimum interval are not paced."""
        limited = answer.status == 429 or answer.code == "rate_limit_exceeded"
        if not limited:
            self._strikes.pop(key, None)
            return
        interval = self._min_intervals.get(key, 0.0)
        if interval <= 0:
            return
        strikes = self._strikes.get(key, 0) + 1
        self._strikes[key] = strikes
        retry_after = parse_retry_after(answer.retry_after)
        if retry_after is not None:
            delay = min(retry_after, RATE_LIMIT_BACKOFF_MAX_S)
        else:
            ceiling = min(
                interval * 2.0 ** min(strikes, 16),
                interval * RATE_LIMIT_BACKOFF_GROWTH,
                RATE_LIMIT_BACKOFF_MAX_S,
            )
            delay = max(interval, self._jitter(ceiling / 2, ceiling))
        until = time.monotonic() + delay
        self._not_before[key] = max(self._not_before.get(key, 0.0), until)
        _log.info("vast.rate_limited", endpoint=answer.endpoint, strikes=strikes, backoff_s=delay)


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _page_rows(answer: _Answer, body: Mapping[str, Any]) -> list[tuple[int, Instance]]:
    """One list page's instances by id; anything but a list of instances with ids is malformed."""
    rows = body.get("instances")
    if not isinstance(rows, list):
        raise answer.malformed('"instances" is not a list')
    page: list[tuple[int, Instance]] = []
    for row in rows:
        instance = _parse(Instance, row, answer, "instance")
        if instance.id is None:
            raise answer.malformed("an instance without an id")
        page.append((instance.id, instance))
    return page
