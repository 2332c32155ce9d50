"""What crosses a boundary: the pydantic models shared by workflows, activities, CLI and gateway.

Everything here travels through Temporal (with the pydantic data converter), so nothing here
may ever hold a secret: API keys, HF/Civitai tokens and per-instance portal tokens are read or
derived inside activities only.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from warmpool.boundary import Model as Model
from warmpool.environment import Environment


class SlotState(StrEnum):
    """The slot state machine of DESIGN.md, plus BACKOFF and BLOCKED (see docs/architecture.md)."""

    PREFLIGHT = "PREFLIGHT"
    SEARCHING = "SEARCHING"
    RENTING = "RENTING"
    PROVISIONING = "PROVISIONING"
    PROBING = "PROBING"
    VALIDATING_PORTS = "VALIDATING_PORTS"
    INSTALLING = "INSTALLING"
    """ComfyUI answers on the validated endpoint; the studio's nodes and models are not all
    there yet (checked through /object_info and /models)."""
    READY = "READY"
    LEASED = "LEASED"
    TERMINATING = "TERMINATING"
    BACKOFF = "BACKOFF"
    BLOCKED = "BLOCKED"
    DRAINING = "DRAINING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    RESUMING = "RESUMING"
    DONE = "DONE"


class FailureReason(StrEnum):
    """Why an attempt ended; also the metric label for failures."""

    NO_SPACE = "no_space"
    FATAL_STATUS = "fatal_status"
    LOAD_FAILED = "load_failed"
    OUTBID = "outbid"
    PROVISION_TIMEOUT = "provision_timeout"
    COMFY_NEVER_READY = "comfy_never_ready"
    FIREWALL = "firewall"
    PORTS_INVALID = "ports_invalid"
    PORTAL_UNAUTHORIZED = "portal_unauthorized"
    WARMUP_FAILED = "warmup_failed"
    KEEPALIVE_LOST = "keepalive_lost"
    INSTANCE_GONE = "instance_gone"
    RENT_FAILED = "rent_failed"
    NO_OFFERS = "no_offers"
    FATAL_LOG = "fatal_log"
    PROVIDER_KEY_REJECTED = "provider_key_rejected"
    PORTS_CHANGED = "ports_changed"
    """Not a failure of the instance: the provider mapped ComfyUI's port elsewhere, so the slot
    validates the new endpoint before it trusts it again."""
    ENVIRONMENT_INCOMPLETE = "environment_incomplete"
    """Required nodes or models still missing when the environment's timeout ran out."""
    RESUME_FAILED = "resume_failed"
    """A stopped instance did not run again in time (its GPU was rented meanwhile): not the
    machine's fault, so it is not excluded; the slot destroys it and rents fresh."""


class OfferConstraints(Model):
    """What an acceptable offer looks like (DESIGN: disk >= 250 GB, direct ports, price cap)."""

    min_disk_gb: float = 250.0
    min_direct_ports: int = 8
    max_dph: float = 1.0
    gpu_names: list[str] = Field(default_factory=list)
    num_gpus: int = 1
    min_gpu_ram_mb: int = 0
    min_inet_down: float = 500.0
    min_reliability: float = 0.95
    verified_only: bool = True
    limit: int = 20


class OfferSummary(Model):
    """The parts of an offer the workflow decides on."""

    id: int
    machine_id: int | None = None
    gpu_name: str | None = None
    num_gpus: int | None = None
    dph_total: float | None = None
    storage_cost: float | None = None
    """$ per GB per month of disk: what a stopped instance still bills."""
    disk_space: float | None = None
    direct_port_count: int | None = None
    geolocation: str | None = None


class InstanceView(Model):
    """A provider instance as the workflow sees it (normalised, never a secret)."""

    id: int
    label: str | None = None
    machine_id: int | None = None
    actual_status: str | None = None
    intended_status: str | None = None
    cur_state: str | None = None
    next_state: str | None = None
    status_msg: str | None = None
    public_ip: str | None = None
    ports: dict[str, int] = Field(default_factory=dict)
    direct_port_start: int | None = None
    direct_port_end: int | None = None
    dph_total: float | None = None
    image: str | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None


class Observation(Model):
    """One read of the provider: the instance, or proof that it is gone."""

    gone: bool
    instance: InstanceView | None = None


class Transition(Model):
    at: datetime
    from_state: SlotState | None
    to_state: SlotState
    reason: str


class CandidateReport(Model):
    """One port candidate's validation (DESIGN: TCP 5 s, then HTTP /system_stats 10 s)."""

    name: str
    host: str
    port: int
    tcp_ok: bool
    outcome: str
    http_status: int | None = None
    detail: str = ""


class PortReport(Model):
    candidates: list[CandidateReport]
    url: str | None = None
    firewall: bool = False
    unauthorized: bool = False


class Lease(Model):
    lease_id: str
    holder: str
    request_id: str
    granted_at: datetime
    leased_until: datetime


class LeaseEnd(Model):
    lease_id: str
    holder: str
    ended_at: datetime
    reason: str


class SlotCounters(Model):
    attempts: int = 0
    rents: int = 0
    destroys: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    keepalive_losses: int = 0
    leases: int = 0
    failures_by_reason: dict[str, int] = Field(default_factory=dict)


SSH_LOG_PATHS: tuple[str, ...] = (
    "/var/log/portal/provisioning.log",
    "/var/log/portal/comfyui.log",
)
"""Where Vast.ai's base image writes the provisioning script's output and ComfyUI's own log."""

SSH_FATAL_PATTERNS: tuple[str, ...] = (
    "no space left on device",
    "CUDA error",
    "out of memory",
    "failed to download",
    "download failed",
    "HTTP Error 401",
    "HTTP Error 403",
)
"""Log lines that doom a rental (case-insensitive substrings or regexes): destroy at once."""


class ProbeConfig(Model):
    """Where ComfyUI listens on an instance and how long checking it may take (readiness
    backoff, then TCP and HTTP validation of every candidate endpoint)."""

    comfy_port: int = 8188
    internal_port: int = 18188
    portal: bool = True
    """The image serves ComfyUI behind Vast.ai's token-gated portal (the `vastai/comfyui`
    template). Then an endpoint counts only once it proves to be this instance's gate: it refuses
    a request without the instance token and accepts ours. False for a bare ComfyUI image."""
    tcp_timeout: timedelta = timedelta(seconds=5)
    http_timeout: timedelta = timedelta(seconds=10)
    readiness_timeout: timedelta = timedelta(minutes=5)
    """The whole readiness wait (and the warm-up's bound)."""
    readiness_initial_interval: timedelta = timedelta(seconds=2)
    readiness_max_interval: timedelta = timedelta(seconds=30)


class KeepaliveConfig(Model):
    """ComfyUI pings while READY or LEASED: lost after `max_failures` failures in a row."""

    interval: timedelta = timedelta(seconds=30)
    timeout: timedelta = timedelta(seconds=5)
    max_failures: int = Field(default=5, ge=1)


class PollingConfig(Model):
    """How often the provider's status of an instance is read: `active` while it starts or is
    leased, `idle` while it is READY."""

    active: timedelta = timedelta(seconds=30)
    idle: timedelta = timedelta(seconds=180)


class ProvisioningConfig(Model):
    """How the provider's status is judged (`warmpool.lifecycle.assess`): the start's timeout,
    the grace a failure status gets, and the `status_msg` fragments that destroy at once."""

    timeout: timedelta = timedelta(minutes=20)
    fatal_grace: timedelta = timedelta(seconds=120)
    fatal_patterns: list[str] = Field(
        default_factory=lambda: ["no space left on device", "oci runtime create failed"]
    )


class SshConfig(Model):
    """Following the instance's logs over SSH while it starts (the worker holds the key)."""

    logs: bool = False
    """Follow the logs at all."""
    username: str = "root"
    paths: list[str] = Field(default_factory=lambda: list(SSH_LOG_PATHS))
    fatal_patterns: list[str] = Field(default_factory=lambda: list(SSH_FATAL_PATTERNS))
    poll_interval: timedelta = timedelta(seconds=2)
    keepalive_interval: timedelta = timedelta(seconds=15)
    keepalive_max_miss: int = Field(default=3, ge=1)
    heartbeat_timeout: timedelta = timedelta(seconds=30)
    retry_max_interval: timedelta = timedelta(minutes=5)
    max_attempts: int = Field(default=0, ge=0)
    """Connection attempts per instance before log collection gives up; 0: until READY."""
    tail_lines: int = Field(default=50, ge=1, le=1000)
    """Log lines the slot keeps in its status."""


class SlotConfig(Model):
    """Every non-secret setting a slot needs; built from Settings by whoever starts the slot.

    Knobs that an activity needs come in groups (`probe`, `keepalive`, `ssh`, ...) that the
    activity's input embeds whole, so each knob is spelled once here.
    """

    constraints: OfferConstraints = Field(default_factory=OfferConstraints)
    image: str = "vastai/comfyui:latest"
    fallback_image: str | None = None
    disk_gb: float = 250.0
    runtype: str = "jupyter_direct"
    onstart: str = "entrypoint.sh"
    require_tokens: list[str] = Field(default_factory=lambda: ["vast"])
    warmup_workflow: str | None = None
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    keepalive: KeepaliveConfig = Field(default_factory=KeepaliveConfig)
    polling: PollingConfig = Field(default_factory=PollingConfig)
    provisioning: ProvisioningConfig = Field(default_factory=ProvisioningConfig)
    ssh: SshConfig = Field(default_factory=SshConfig)
    retry_backoff_initial: timedelta = timedelta(seconds=10)
    retry_backoff_max: timedelta = timedelta(minutes=10)
    transitions_kept: int = 30
    recycle_after_lease: bool = False
    environment: Environment | None = None
    """The studio's nodes and models: sent with the rent, checked before READY."""
    environment_timeout: timedelta = timedelta(minutes=45)
    """From the rent: the required nodes and models must all be present by then."""
    environment_poll: timedelta = timedelta(seconds=10)
    resume_timeout: timedelta = timedelta(minutes=5)
    """A parked (stopped) instance not running again this long after its resume is given up:
    its host's GPU was rented meanwhile. It is destroyed and the slot rents fresh."""
    lease_overdue_grace: timedelta = timedelta(minutes=5)
    """A slot still LEASED this long past `leased_until` (its pool's end never came) ends the
    lease itself, cleans and reports READY: no instance stays leased to nobody."""

    def merged(self, changes: Mapping[str, Any]) -> SlotConfig:
        """A validated copy with `changes`: a dict given for a group (`probe={"portal": False}`)
        changes only the fields it names; an unknown name fails (models forbid extra fields)."""
        data = self.model_dump()
        for key, value in changes.items():
            group = data.get(key)
            if isinstance(value, dict) and isinstance(group, dict):
                data[key] = {**group, **value}
            else:
                data[key] = value
        return SlotConfig.model_validate(data)


class SshLogBatch(Model):
    """The `ssh_log` signal's payload: consecutive lines of one file, with their byte positions.

    `offset` is the first line's first byte, `end` the byte after the last line, `line_offsets`
    each line's first byte, all within the file's `epoch` (it goes up when the file is truncated).
    """

    instance_id: int
    path: str
    epoch: int
    offset: int
    end: int
    line_offsets: list[int]
    lines: list[str]

    def unseen(self, seen: tuple[int, int] | None) -> list[str]:
        """The lines a receiver that has reached `seen` = `(epoch, end)` on this path lacks.

        The receiver then stores `(batch.epoch, batch.end)` as its new position for the path
        (when that is further); together this delivers every line exactly once.
        """
        if seen is None:
            return list(self.lines)
        return [
            line
            for at, line in zip(self.line_offsets, self.lines, strict=True)
            if (self.epoch, at) >= seen
        ]

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.end


class SlotRuntime(Model):
    """A slot's whole durable state: carried across continue-as-new."""

    state: SlotState = SlotState.PREFLIGHT
    attempt: int = 0
    instance: InstanceView | None = None
    offer: OfferSummary | None = None
    image_used: str | None = None
    use_fallback_image: bool = False
    connection_url: str | None = None
    port_report: PortReport | None = None
    excluded_machines: list[int] = Field(default_factory=list)
    lease: Lease | None = None
    last_lease_end: LeaseEnd | None = None
    counters: SlotCounters = Field(default_factory=SlotCounters)
    transitions: list[Transition] = Field(default_factory=list)
    last_failure: str | None = None
    blocked_reason: str | None = None
    retiring: bool = False
    bad_since: datetime | None = None
    """When the provider first showed the current instance in a failure state (grace period)."""
    rented_at: datetime | None = None
    """When the current instance was rented (the list-visibility grace starts there)."""
    needs_clean: bool = False
    """A lease ended: clean ComfyUI (or recycle) before serving anyone else."""
    block_after_terminate: str | None = None
    """A configuration error found while validating: BLOCKED once the instance is destroyed."""
    provider_refused: bool = False
    """The provider rejected our key and the pool was told; cleared by the next answer."""
    ready_since: datetime | None = None
    state_since: datetime | None = None
    provision_started: datetime | None = None
    time_to_ready_s: float | None = None
    warmup_seconds: float | None = None
    log_tail: list[str] = Field(default_factory=list)
    log_lines_total: int = 0
    """Lines ever added to `log_tail`: a reader diffs it to print only new lines."""
    log_instance_id: int | None = None
    log_positions: dict[str, tuple[int, int]] = Field(default_factory=dict)
    """Per log path of `log_instance_id`: the (epoch, end) reached; older lines are dropped."""
    log_error: str | None = None
    log_failed_instance: int | None = None
    """The instance whose collector failed for good (e.g. key rejected): not started again."""
    park_requested: bool = False
    """The pool asked to park this idle READY slot (stop the instance, keep its disk)."""
    unpark_requested: bool = False
    """The pool asked to resume this parked slot."""
    resume_started: datetime | None = None
    """When the current resume was asked of the provider (`resume_timeout` counts from it)."""
    env_missing: list[str] = Field(default_factory=list)
    """What the last environment check found missing (INSTALLING)."""


class SlotInput(Model):
    pool: str
    index: int
    config: SlotConfig = Field(default_factory=SlotConfig)
    runtime: SlotRuntime | None = None
    report_to: str | None = None
    """The pool workflow id that receives a `slot_event` signal after every transition."""


class SlotStatus(Model):
    """The status query's answer."""

    workflow_id: str
    pool: str
    index: int
    state: SlotState
    attempt: int
    instance: InstanceView | None
    offer: OfferSummary | None
    image_used: str | None
    connection_url: str | None
    port_report: PortReport | None
    lease: Lease | None
    last_lease_end: LeaseEnd | None
    counters: SlotCounters
    transitions: list[Transition]
    last_failure: str | None
    blocked_reason: str | None
    retiring: bool
    state_since: datetime | None
    ready_since: datetime | None
    time_to_ready_s: float | None
    warmup_seconds: float | None
    environment_version: str | None = None
    env_missing: list[str] = Field(default_factory=list)
    env_progress: str | None = None
    """The provisioning log's latest state (which model downloads, how far), when followed."""
    excluded_machines: list[int]
    log_tail: list[str]
    log_lines_total: int = 0
    log_error: str | None = None


class LeaseEndRequest(Model):
    lease_id: str
    reason: str


class SlotEvent(Model):
    """A slot's report to its pool after every transition (signal `slot_event`).

    Signals from one slot can reach the pool out of order (a signal that meets the pool's
    continue-as-new is retried later), so an event also repeats how the slot's last lease
    ended (`ended_lease`): a later event tells the pool why, even if the earlier is late.
    """

    index: int
    state: SlotState
    at: datetime
    reason: str
    connection_url: str | None = None
    instance_id: int | None = None
    dph_total: float | None = None
    failure: FailureReason | None = None
    lease_id: str | None = None
    lease_refused: bool = False
    """The slot refused the lease `lease_id` (its answer to `assign_lease`)."""
    ended_lease: LeaseEndRequest | None = None
    machine_id: int | None = None
    """The machine the failed attempt ran on (with `failure`)."""
    image: str | None = None
    """The image the attempt used: a failure on several machines with one image is systemic."""
    host_fault: bool = False
    """The failure is the machine's: the pool excludes it for every slot."""
    image_failure: bool = False
    """The provider said the image could not be pulled or extracted."""
    env_version: str | None = None
    """The studio environment's version the slot rents with (None: none declared)."""
    missing: list[str] = Field(default_factory=list)
    """With `environment_incomplete`: what was missing (the same item on several machines is
    systemic: a wrong URL or token)."""


class SlotMessage(Model):
    """One message from a pool to one of its slots (the `assign_lease` and `end_lease`
    updates, or the `retire` and `resume` signals, each with its reason): exactly one is set."""

    workflow_id: str
    assign_lease: Lease | None = None
    end_lease: LeaseEndRequest | None = None
    retire: str | None = None
    resume: str | None = None
    park: str | None = None
    unpark: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SlotMessage:
        if len(self._set()) != 1:
            raise ValueError("a slot message carries exactly one signal or update")
        return self

    def _set(self) -> list[tuple[str, Lease | LeaseEndRequest | str]]:
        values: dict[str, Lease | LeaseEndRequest | str | None] = {
            "assign_lease": self.assign_lease,
            "end_lease": self.end_lease,
            "retire": self.retire,
            "resume": self.resume,
            "park": self.park,
            "unpark": self.unpark,
        }
        return [(name, value) for name, value in values.items() if value is not None]

    def content(self) -> tuple[str, Lease | LeaseEndRequest | str]:
        """The message's name (the slot's signal or update) and argument."""
        return self._set()[0]


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class FloorPeriod(Model):
    """A weekly period with its own floor, e.g. weekdays 08:00-20:00 floor 4, in the policy's
    time zone. `end` at or before `start` crosses midnight (22:00-06:00)."""

    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1)
    start: time
    end: time
    floor: int = Field(ge=0, le=10_000)


class ScalingPolicy(Model):
    """How capacity follows demand (`warmpool.scaling`): keep `buffer` idle slots above what is
    in use, never below the floor (`min_ready`, or a scheduled period's), never above
    `max_slots`; shrink only after `scale_down_delay` of surplus, one slot at a time; park
    up to `stopped_target` surplus slots (stopped: disk billed, GPU not) instead of destroying
    them, and resume those before renting new ones."""

    buffer: int = Field(default=1, ge=0, le=10_000)
    scale_down_delay: timedelta = timedelta(minutes=10)
    schedule: list[FloorPeriod] = Field(default_factory=list)
    timezone: str = "UTC"
    stopped_target: int = Field(default=0, ge=0, le=10_000)
    park_after: timedelta = timedelta(minutes=5)
    """How long a surplus slot is idle before it is parked (when the stopped tier has room)."""
    demand_window: timedelta = timedelta(seconds=60)
    """How long a lease refused for lack of capacity counts as demand."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name such as Europe/Paris)"
            ) from None
        return value

    @field_validator("scale_down_delay", "park_after", "demand_window")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("must not be negative")
        return value


class PoolConfig(Model):
    """What the pool keeps: at least `min_ready` slots warm (READY, leased or starting) and
    `scaling.buffer` idle above use, never more than `max_slots` warm slots."""

    min_ready: int = Field(default=1, ge=0, le=10_000)
    max_slots: int = Field(default=4, ge=0, le=10_000)
    scaling: ScalingPolicy = Field(default_factory=ScalingPolicy)
    environment: Environment | None = None
    """The target environment (`pool set-env`): slots on another version are replaced."""
    max_surge: int = Field(default=1, ge=1, le=100)
    """Replacements a rollout may run above the target at once (each READY before the slot it
    replaces retires)."""
    budget_dph: float | None = Field(default=None, gt=0)
    safe_mode_after: int = Field(default=3, ge=1)
    """Distinct machines on which the same image fails the same way before safe mode."""
    exclude_for: timedelta = timedelta(hours=24)
    """How long a machine that caused a failure stays excluded for every slot of the pool."""
    claim_window: timedelta = timedelta(seconds=60)
    """How long a lease whose caller timed out waits for the request to be asked again."""
    clean_wait: timedelta = timedelta(seconds=30)
    """How long a lease waits for a slot that is only cleaning after its last lease, rather
    than being refused while capacity is seconds away."""
    max_lease: timedelta = timedelta(hours=8)
    default_lease: timedelta = timedelta(hours=1)
    recycle_after_lease: bool = False
    slot: SlotConfig = Field(default_factory=SlotConfig)


class SlotView(Model):
    """The pool's mirror of one slot, kept from its events."""

    index: int
    state: SlotState
    since: datetime
    reason: str = ""
    connection_url: str | None = None
    instance_id: int | None = None
    dph_total: float | None = None
    lease_id: str | None = None
    retiring: bool = False
    cleaning: bool = False
    """A lease ended: not idle until the slot reports READY again (after its clean)."""
    env_version: str | None = None
    scaled_down: bool = False
    """Retired by the policy for surplus: the next slot is retired only once this one is gone."""
    attempt_started: datetime | None = None
    """When the slot's current rental attempt began (RENTING); READY minus this is time to READY."""


class PoolLease(Model):
    lease_id: str
    holder: str
    request_id: str
    slot: int
    connection_url: str
    granted_at: datetime
    leased_until: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None


class LeaseRequest(Model):
    holder: str = Field(min_length=1, max_length=200)
    duration: timedelta | None = None
    request_id: str = Field(min_length=1, max_length=200)
    wait_for: timedelta = timedelta(0)
    """With the `request_lease` signal: how long the request may wait for capacity."""
    min_environment: str | None = Field(default=None, max_length=100)
    """Only a slot on this environment version or one applied after it."""
    node_class: str | None = Field(default=None, max_length=200)
    """Only a slot whose environment declares this node class."""


class LeaseGrant(Model):
    """The pool's answer to a lease: all a caller needs, with no second lookup."""

    lease_id: str
    slot_id: str
    slot: int
    holder: str
    request_id: str
    connection_url: str
    granted_at: datetime
    leased_until: datetime


class RenewRequest(Model):
    lease_id: str
    duration: timedelta | None = None


class WaitingRequest(Model):
    request: LeaseRequest
    since: datetime
    deadline: datetime


class LeaseLookup(Model):
    """Answer of the `lease_request` query for a waited-on request id."""

    request_id: str
    status: str  # pending | granted | expired | unknown
    grant: LeaseGrant | None = None
    reason: str | None = None


class ResizeRequest(Model):
    min_ready: int | None = Field(default=None, ge=0, le=10_000)
    max_slots: int | None = Field(default=None, ge=0, le=10_000)
    budget_dph: float | None = Field(default=None, gt=0)
    clear_budget: bool = False
    """Remove the budget (`pool resize --no-budget`); `budget_dph` must then be None."""
    buffer: int | None = Field(default=None, ge=0, le=10_000)
    scale_down_delay: timedelta | None = None
    stopped_target: int | None = Field(default=None, ge=0, le=10_000)
    park_after: timedelta | None = None
    schedule: list[FloorPeriod] | None = None
    """Replaces the schedule (an empty list removes it)."""
    timezone: str | None = None

    def scaling_changes(self) -> dict[str, Any]:
        """The scaling policy fields this request sets."""
        names = ("buffer", "scale_down_delay", "stopped_target", "park_after", "schedule")
        changes = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        if self.timezone is not None:
            changes["timezone"] = self.timezone
        return changes

    def config_changes(self) -> dict[str, Any]:
        """The pool config fields (outside the policy) this request sets."""
        names = ("min_ready", "max_slots", "budget_dph")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


class PoolFailure(Model):
    at: datetime
    slot: int
    reason: str


READY_BUCKETS: tuple[float, ...] = (30, 60, 120, 180, 300, 600, 900, 1800, 3600)
"""Upper bounds (seconds) of the time-to-READY histogram; one more bucket holds the rest."""


class PoolStats(Model):
    """Cumulative counters the gateway exports as metrics; they survive continue-as-new."""

    provisions_started: int = 0
    provisions_ready: int = 0
    failures_by_reason: dict[str, int] = Field(default_factory=dict)
    ready_bucket_counts: list[int] = Field(default_factory=lambda: [0] * (len(READY_BUCKETS) + 1))
    ready_seconds_sum: float = 0.0

    def observe_ready(self, seconds: float) -> None:
        self.provisions_ready += 1
        self.ready_seconds_sum += seconds
        index = next((i for i, b in enumerate(READY_BUCKETS) if seconds <= b), len(READY_BUCKETS))
        self.ready_bucket_counts[index] += 1

    def observe_failure(self, reason: str) -> None:
        self.failures_by_reason[reason] = self.failures_by_reason.get(reason, 0) + 1


LEASE_WAITS_KEPT = 1_000


class ScalingDecision(Model):
    """One change of the pool's target, with why ("scaled 2 → 4: 3 waiting requests")."""

    at: datetime
    before: int
    after: int
    reason: str

    def describe(self) -> str:
        return f"scaled {self.before} → {self.after}: {self.reason}"


class CostLedger(Model):
    """What the pool's instances cost, integrated over time (`warmpool.scaling.account`)."""

    since: datetime | None = None
    last_at: datetime | None = None
    spend_by_tier: dict[str, float] = Field(default_factory=dict)
    """Dollars spent so far by tier: `idle` (READY, unleased), `leased`, `starting`,
    `stopped` (disk only)."""
    idle_gpu_seconds: float = 0.0
    leased_gpu_seconds: float = 0.0
    lease_waits: list[float] = Field(default_factory=list)
    """Seconds each of the last LEASE_WAITS_KEPT granted leases waited (0 when granted at once)."""
    refusals: int = 0


class ExcludedMachine(Model):
    """A machine that caused a failure: no slot of the pool rents it again until `until`."""

    machine_id: int
    until: datetime
    reason: str
    slot: int
    at: datetime


class PoolRuntime(Model):
    slots: dict[int, SlotView] = Field(default_factory=dict)
    leases: dict[str, PoolLease] = Field(default_factory=dict)
    request_ids: dict[str, str] = Field(default_factory=dict)
    waiting: list[WaitingRequest] = Field(default_factory=list)
    expired_waits: dict[str, str] = Field(default_factory=dict)
    next_index: int = 0
    safe_mode: bool = False
    safe_reason: str | None = None
    draining: bool = False
    failures: list[PoolFailure] = Field(default_factory=list)
    granted_total: int = 0
    stats: PoolStats = Field(default_factory=PoolStats)
    unsent: list[SlotMessage] = Field(default_factory=list)
    """Slot messages held back while the pool continued-as-new; the next run sends them first."""
    excluded: dict[int, ExcludedMachine] = Field(default_factory=dict)
    """Machines no slot may rent, by machine id, until their time is up."""
    suspects: dict[str, list[int]] = Field(default_factory=dict)
    """Distinct machines on which one image failed one way since it was last READY, by
    `market.suspect_key`: enough of them make the failure systemic (safe mode)."""
    unclaimed: dict[str, datetime] = Field(default_factory=dict)
    """Leases whose caller gave up waiting for the answer, by request id: ended unless the
    request is asked again by then."""
    target: int | None = None
    """Warm slots the policy last asked for (READY, leased or starting)."""
    surplus_since: datetime | None = None
    """Since when the pool has had more warm slots than its target (scale down after a delay)."""
    env_versions: list[str] = Field(default_factory=list)
    """Environment versions in the order they were applied (a lease's `min_environment`)."""
    env_classes: dict[str, list[str]] = Field(default_factory=dict)
    """Node classes each applied version declares (a lease's `node_class`)."""
    refused: dict[str, datetime] = Field(default_factory=dict)
    """Requests refused for lack of capacity lately, by request id: demand to scale up for."""
    decisions: list[ScalingDecision] = Field(default_factory=list)
    costs: CostLedger = Field(default_factory=CostLedger)


class PoolInput(Model):
    pool: str
    config: PoolConfig = Field(default_factory=PoolConfig)
    runtime: PoolRuntime | None = None


class ScalingView(Model):
    """The policy's reading now: why the pool has the slots it has."""

    floor: int
    demand: int
    """Active leases, waiting requests and recent refusals."""
    target: int
    warm: int
    """READY, leased and starting slots (not retiring)."""
    stopped: int
    surplus_since: datetime | None
    decisions: list[ScalingDecision]


class CostView(Model):
    """What idle costs: spend per hour now by tier, and what has been spent and waited."""

    spend_per_hour_by_tier: dict[str, float]
    spend_total: float
    spend_by_tier: dict[str, float]
    idle_gpu_hours: float
    leased_gpu_hours: float
    dollars_per_leased_hour: float | None
    lease_wait_p50_s: float | None
    lease_wait_p95_s: float | None
    refusals: int
    since: datetime | None

class PoolStatus(Model):
    pool: str
    config: PoolConfig
    slots: list[SlotView]
    counts: dict[str, int]
    idle_ready: int
    spend_per_hour: float
    budget_limited: bool
    safe_mode: bool
    safe_reason: str | None
    draining: bool
    active_leases: list[PoolLease]
    recent_leases: list[PoolLease]
    waiting: int
    failures: list[PoolFailure]
    granted_total: int
    stats: PoolStats
    excluded_machines: list[ExcludedMachine] = Field(default_factory=list)
    scaling: ScalingView | None = None
    costs: CostView | None = None
    environment_version: str | None = None
    slots_by_environment: dict[str, int] = Field(default_factory=dict)

