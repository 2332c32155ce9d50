"""What can a test or chaos script tune in the simulator? Its settings and the faults to inject.

Every duration here is in *simulated* seconds; the simulator waits `seconds / speed` in real
time, so one `speed` knob runs a whole scenario faster. The only exception is the Retry-After
header value of a rate-limit fault, which is sent as given (the client reads it literally).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

FaultKind = Literal[
    # instance faults: chosen at create time for matching offers/images
    "no_space",
    "oci_failed",
    "pull_failed",
    "status",
    "outbid",
    "ports_never",
    "ports_late",
    "comfy_never_ready",
    "comfy_dies_after",
    "firewall",
    "comfy_mode",
    "prompt_error",
    # a resume's fault, matched when a stopped instance is started (scoped by offer, machine,
    # image): its host's GPU was rented meanwhile, so it never runs again
    "gpu_taken",
    # API faults that answer instead of the endpoint (or delay it)
    "rate_limit",
    "server_error",
    "slow",
    "bad_key",
    "success_false",
    "non_json",
    # API faults that change one endpoint's behaviour
    "malformed_list",
    "list_lag",
    "create_fail_with_contract",
    "vanished_offer",
    "destroy_not_found_variant",
    "show_404",
    "destroy_delay",
    # environment faults: chosen at create time for rentals that carry an environment
    "model_404",
    "token_refused",
    "slow_host",
    "node_import_fails",
]

INSTANCE_KINDS = frozenset(
    {
        "no_space",
        "oci_failed",
        "pull_failed",
        "status",
        "outbid",
        "ports_never",
        "ports_late",
        "comfy_never_ready",
        "comfy_dies_after",
        "firewall",
        "comfy_mode",
        "prompt_error",
    }
)
ANSWERING_KINDS = frozenset({"rate_limit", "server_error", "bad_key", "success_false", "non_json"})

_VALUES: dict[str, frozenset[str | None]] = {
    "status": frozenset({"exited", "unknown", "offline", "load_failed"}),
    "comfy_mode": frozenset({"bare", "portal"}),
    "rate_limit": frozenset({None, "text", "json", "destroy"}),
    "malformed_list": frozenset({None, "oops", "missing"}),
    "vanished_offer": frozenset({None, "404", "410"}),
    "token_refused": frozenset({None, "huggingface", "civitai"}),
}
ENVIRONMENT_KINDS = frozenset({"model_404", "token_refused", "slow_host", "node_import_fails"})
"""Faults of a rental's provisioning (vastsim/environment.py): `model_404` (value: a model's file
name or a substring of its file name or URL: its download answers 404), `token_refused` (value
None, "huggingface" or "civitai": that host answers 401), `slow_host` (factor: the download
bandwidth is divided by it), `node_import_fails` (value: a node's name: it installs, but its
classes never reach /object_info)."""
_NEEDS_VALUE = frozenset({"model_404", "node_import_fails"})
_NEEDS_SECONDS = frozenset({"ports_late", "comfy_dies_after", "slow", "list_lag", "destroy_delay"})


class Fault(BaseModel):
    """One injected fault. Scope fields that are set must all match; none set means global.

    `kind` also accepts the shorthand "status:exited" or "comfy_mode:bare" for kind + value.
    `value` is the variant: the status for "status", the mode for "comfy_mode", "text" | "json" |
    "destroy" for "rate_limit", "oops" | "missing" for "malformed_list", "404" | "410" for
    "vanished_offer", the error code for "success_false", the model or node matched by
    "model_404" and "node_import_fails", the site for "token_refused". `factor` is the
    bandwidth divisor of "slow_host".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: FaultKind
    value: str | None = None
    seconds: float | None = Field(default=None, ge=0)
    status_code: int | None = Field(default=None, ge=200, le=599)
    with_retry_after: float | None = Field(default=None, ge=0)
    factor: float | None = Field(default=None, gt=0)
    offer_id: int | None = None
    machine_id: int | None = None
    image: str | None = None
    endpoint: str | None = None
    count: int | None = Field(default=None, ge=1)
    probability: float = Field(default=1.0, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _split_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("kind"), str) and ":" in data["kind"]:
            kind, _, value = data["kind"].partition(":")
            data = {**data, "kind": kind, "value": value}
        return data

    @model_validator(mode="after")
    def _check_parameters(self) -> Fault:
        allowed = _VALUES.get(self.kind)
        if allowed is not None and self.value not in allowed:
            raise ValueError(f"fault {self.kind} needs value in {sorted(map(str, allowed))}")
        if self.kind in _NEEDS_SECONDS and self.seconds is None:
            raise ValueError(f"fault {self.kind} needs seconds")
        if self.kind in _NEEDS_VALUE and not self.value:
            raise ValueError(f"fault {self.kind} needs a value (a model or node to match)")
        if self.kind == "slow_host" and self.factor is None:
            raise ValueError("fault slow_host needs factor (the bandwidth is divided by it)")
        if self.kind == "server_error" and self.status_code not in (None, 500, 502, 503, 504):
            raise ValueError("server_error status_code must be 500, 502, 503 or 504")
        return self


def default_fault_mix() -> list[Fault]:
    """A realistic small share of the failures seen on Vast.ai, for chaos runs."""
    return [
        Fault(kind="no_space", probability=0.05),
        Fault(kind="status", value="load_failed", probability=0.03),
        Fault(kind="comfy_never_ready", probability=0.03),
        Fault(kind="rate_limit", probability=0.02),
    ]


class SimConfig(BaseModel):
    """Everything optional: `Simulator()` alone gives a working, fault-free provider."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    public_host: str | None = None
    """The address instances are reached on (their `public_ipaddr`; their ComfyUI ports bind
    there), e.g. another loopback address such as 127.0.0.7 so a test can put a stranger on its
    port 8188. None: the API's address, as before."""
    api_key: SecretStr = SecretStr("sim-vast-key")
    seed: int = 0
    offers: int = Field(default=40, ge=1)
    speed: float = Field(default=1.0, gt=0)
    provision_s: float = Field(default=1.0, ge=0)
    created_s: float = Field(default=1.0, ge=0)
    loading_s: float = Field(default=2.0, ge=0)
    comfy_boot_s: float = Field(default=3.0, ge=0)
    resume_s: float = Field(default=2.0, ge=0)
    """From the start call of a stopped instance to `running` again on new host ports (ComfyUI
    is up `comfy_boot_s` later; nothing is pulled or downloaded again)."""
    prompt_s: float = Field(default=0.05, ge=0)
    log_delay_s: float = Field(default=0.3, ge=0)
    comfy_mode: Literal["portal", "bare"] = "portal"
    ssh_host: str | None = None
    ssh_port: int | None = None
    hf_tokens: frozenset[str] = Field(
        default=frozenset({"hf_simvalidtoken000000000000000000"}), repr=False
    )
    civitai_tokens: frozenset[str] = Field(default=frozenset({"sim-civitai-token"}), repr=False)
    fault_mix: Literal["none", "default"] = "none"
    call_log_limit: int = Field(default=100_000, ge=1)  # newest calls kept; counts are total
    min_intervals: dict[str, float] | None = None
    """Vast.ai's rate limits, off by default: simulated seconds each endpoint key (bundles,
    create, show, list_v1, destroy, label, ...) requires between two accepted calls of one API
    key; a call arriving sooner gets 429 without Retry-After. The spec's values are
    `vastsim.faults.SPEC_MIN_INTERVALS`."""
    # provisioning of the studio's environment (vastsim/environment.py)
    download_bytes_per_s: float = Field(default=100_000_000, gt=0)
    """Download bandwidth of every host for declared models (simulated bytes per simulated
    second; a `slow_host` fault divides it)."""
    node_install_s: float = Field(default=5.0, ge=0)
    """Installing one custom node (clone, checkout, its requirements)."""
    pip_install_s: float = Field(default=2.0, ge=0)
    """Installing one pip package of the manifest."""
    model_unsized_s: float = Field(default=10.0, ge=0)
    """Downloading a model whose size is not declared."""
    provisioning_script_s: float = Field(default=10.0, ge=0)
    """Running a PROVISIONING_SCRIPT URL's script (the simulator cannot run it)."""
    provisioning_log_path: str | None = None
    """A file every instance appends its provisioning log lines to as they happen (e.g. the
    file a test's sshd serves as /var/log/portal/provisioning.log). None: not written."""
    faults: tuple[Fault, ...] = ()

    def scaled(self, seconds: float) -> float:
        """Real seconds for a simulated duration."""
        return seconds / self.speed

    @property
    def api_ip(self) -> str:
        """Where a client reaches the API (`host`, or loopback when bound to every address)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def public_ip(self) -> str:
        return self.public_host or self.api_ip

    @property
    def instance_bind_host(self) -> str:
        """Where instances' ports listen: `public_host` if set, else wherever the API listens."""
        return self.public_host or self.host
