"""Which settings does the service run with? One pydantic Settings object read from the environment.

Names are part of the product's interface (DESIGN.md, "Names others rely on"): the seeds' tuning
variables keep their names and millisecond units, everything else has the `WARMPOOL_` prefix, and
a `.env` file is read when present. A bad value fails at start with a message naming the variable.

Secrets (API keys, tokens) are not settings: activities read them from the secret store at call
time (`warmpool.secrets`), so they can rotate and never reach a workflow.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from dotenv import load_dotenv
from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from warmpool.labels import validate_pool_name
from warmpool.models import (
    SSH_FATAL_PATTERNS,
    SSH_LOG_PATHS,
    KeepaliveConfig,
    OfferConstraints,
    PollingConfig,
    ProbeConfig,
    ProvisioningConfig,
    SlotConfig,
    SshConfig,
)
from warmpool.secrets import EnvSecretStore, FileSecretStore, LayeredSecretStore, SecretName
from warmpool.vast import DEFAULT_BASE_URL as DEFAULT_VAST_BASE_URL

__all__ = [
    "DEFAULT_VAST_BASE_URL",
    "NOT_SETTINGS",
    "SETTINGS_DOC",
    "Settings",
    "SettingsError",
    "load_settings",
    "settings_markdown",
    "variable_name",
]
"""`DEFAULT_VAST_BASE_URL` is `warmpool.vast.DEFAULT_BASE_URL` (one spelling), re-exported."""


class SettingsError(ValueError):
    """A setting is invalid; the message names the environment variable."""


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def _ms(name: str, default: int) -> Any:
    return Field(default=default, gt=0, validation_alias=_env(name))


class Settings(BaseSettings):
    """Every knob of the service; each field's docstring is its line in `docs/settings.md`."""

    model_config = SettingsConfigDict(
        env_prefix="WARMPOOL_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        use_attribute_docstrings=True,
    )

    # Provider and services (URLs only; keys live in the secret store).
    vastai_base_url: str | None = Field(default=None, validation_alias=_env("VASTAI_BASE_URL"))
    """Vast.ai API base URL (unset: `https://console.vast.ai/api/v0`, or the embedded simulator
    when `VASTAI_API_KEY` is unset too)."""
    vastai_api_key_set: bool = Field(default=False, exclude=True)
    hf_endpoint: str = Field(default="https://huggingface.co", validation_alias=_env("HF_ENDPOINT"))
    """Hugging Face endpoint the token check calls."""
    civitai_base_url: str = Field(
        default="https://civitai.com", validation_alias=_env("CIVITAI_BASE_URL")
    )
    """Civitai endpoint the token check calls."""

    # Temporal.
    temporal_address: str = Field(
        default="127.0.0.1:7233", validation_alias=_env("TEMPORAL_ADDRESS")
    )
    """Temporal frontend `host:port`."""
    temporal_namespace: str = Field(default="default", validation_alias=_env("TEMPORAL_NAMESPACE"))
    """Temporal namespace."""
    task_queue: str = Field(
        default="warmpool", min_length=1, validation_alias=_env("WARMPOOL_TASK_QUEUE")
    )
    """Main task queue; provider activities use `<queue>-vast-search`, `-vast-create`,
    `-vast-destroy` and `<queue>-vast` (the rest)."""
    pool: str = Field(
        default="default",
        pattern=r"^[a-z0-9][a-z0-9-]{0,23}$",
        validation_alias=_env("WARMPOOL_POOL"),
    )
    """The pool the CLI (`--pool`) and the run command use when none is named."""
    max_concurrent_activities: int = Field(default=2000, ge=1)
    """Activities per worker; every READY or LEASED slot holds one long-running watch."""
    vast_calls_per_second: float = Field(default=2.0, gt=0)
    """Starts per second of the other provider activities (`<queue>-vast`: observe, show,
    listings), enforced by the Temporal server across every worker."""
    vast_pacing_scale: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    """Multiplies Vast.ai's per-endpoint minimum intervals
    (`VAST_DEFAULT_MIN_INTERVALS`: search 6.5 s, create 5.0, show 2.2, list 1.1, destroy 3.3):
    each worker's own pacing and 429 backoff, and the server-side start rates of the search,
    create and destroy task queues (one per interval). 1.0 keeps the provider's limits; 0 turns
    pacing off (tests against a simulator that enforces none)."""
    vast_timeout_s: float = Field(default=30.0, gt=0)
    """Timeout of one Vast.ai HTTP call; a call that hangs longer fails and is retried."""

    # Offers and rent.
    image: str = "vastai/comfyui:latest"
    """Image rented."""
    fallback_image: str | None = None
    """Image the next attempt uses after the provider could not pull or extract the image."""
    disk_gb: float = Field(default=250.0, ge=8)
    """Disk rented with an instance."""
    min_disk_gb: float = Field(default=250.0, ge=8)
    """Offer filter: minimum disk."""
    max_dph: float = Field(default=1.0, gt=0)
    """Offer filter: highest price per hour."""
    gpu_names: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Offer filter: GPU models, comma-separated (e.g. `RTX 4090,RTX 3090`); empty: any."""
    num_gpus: int = Field(default=1, ge=1)
    """Offer filter: GPUs per instance."""
    min_gpu_ram_mb: int = Field(default=0, ge=0)
    """Offer filter: minimum memory per GPU."""
    min_direct_ports: int = Field(default=8, ge=1)
    """Offer filter: minimum direct ports."""
    min_inet_down: float = Field(default=500.0, ge=0)
    """Offer filter: minimum download bandwidth."""
    min_reliability: float = Field(default=0.95, ge=0, le=1)
    """Offer filter: minimum host reliability (0 to 1)."""
    runtype: str = "jupyter_direct"
    """Launch mode (the ComfyUI template's)."""
    onstart: str = "entrypoint.sh"
    """On-start command (the ComfyUI template's)."""
    comfy_port: int = Field(default=8188, ge=1, le=65535)
    """Container port of ComfyUI (behind the portal), probed where the provider maps it."""
    comfy_internal_port: int = Field(default=18188, ge=1, le=65535)
    """Container port of ComfyUI itself, probed when mapped."""
    comfy_portal: bool = True
    """The image serves ComfyUI behind Vast.ai's token-gated portal: an endpoint must refuse a
    tokenless request before it gets the token; false for a bare ComfyUI image."""
    require_tokens: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["vast"])
    """Services whose tokens are checked before renting, comma-separated (`vast,hf,civitai`)."""
    warmup_workflow: Path | None = None
    """API-format ComfyUI workflow (JSON file) run once before READY; unset: no warm-up."""
    fatal_patterns: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["no space left on device", "oci runtime create failed"]
    )
    """Provider `status_msg` fragments (case-insensitive) that destroy an instance at once."""

    # Seeds' tuning variables (milliseconds).
    poll_active_ms: int = _ms("WARM_POOL_POLL_ACTIVE_INTERVAL_MS", 30_000)
    """Provider status polling while an instance starts or is leased."""
    poll_idle_ms: int = _ms("WARM_POOL_POLL_IDLE_INTERVAL_MS", 180_000)
    """Provider status polling while an instance is READY and idle."""
    poll_default_ms: int = _ms("WARM_POOL_POLL_INTERVAL_MS", 120_000)
    """Read for compatibility, not used: polling is adaptive (the active and idle intervals)."""
    keepalive_interval_ms: int = _ms("COMFYUI_KEEPALIVE_INTERVAL_MS", 30_000)
    """ComfyUI keepalive ping period while READY or LEASED."""
    keepalive_timeout_ms: int = _ms("COMFYUI_KEEPALIVE_TIMEOUT_MS", 5_000)
    """Timeout of one keepalive ping."""
    keepalive_max_failures: int = Field(
        default=5, ge=1, validation_alias=_env("COMFYUI_KEEPALIVE_MAX_FAILURES")
    )
    """Keepalive pings failed in a row before the instance is replaced."""
    token_cache_ms: int = _ms("TOKEN_VALIDATION_CACHE_MS", 300_000)
    """How long a token check's answer is reused."""
    token_check_ms: int = _ms("TOKEN_PERIODIC_CHECK_MS", 600_000)
    """Period of the token watch's check of every token."""
    ssh_ready_timeout_ms: int = _ms("SSH_READY_TIMEOUT_MS", 600_000)
    """Read for compatibility, not used: the provisioning timeout already bounds the wait for an
    instance, and the log collector stops at READY."""
    ssh_keepalive_interval_ms: int = _ms("SSH_KEEPALIVE_INTERVAL_MS", 15_000)
    """SSH transport keepalive; a connection silent for interval × max miss is dropped and
    retried."""
    ssh_keepalive_max_miss: int = Field(
        default=3, ge=1, validation_alias=_env("SSH_KEEPALIVE_MAX_MISS")
    )
    """SSH keepalives missed before the connection counts as dead."""
    ssh_max_consecutive_failures: int = Field(
        default=0, ge=0, validation_alias=_env("SSH_MAX_CONSECUTIVE_FAILURES")
    )
    """SSH connection attempts per instance before log collection gives up (the slot notes why
    in `log_error`); 0 reconnects until the slot stops the collector."""

    # SSH log collector (the key itself is a secret: WARMPOOL_SSH_KEY or the secret store).
    ssh_logs: bool | None = None
    """Follow provisioning logs over SSH; unset: on when an SSH key is configured."""
    ssh_key_set: bool = Field(default=False, exclude=True)
    ssh_user: str = Field(default="root", min_length=1)
    """Who logs in over SSH."""
    ssh_log_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(SSH_LOG_PATHS), min_length=1
    )
    """Log files followed, comma-separated."""
    ssh_fatal_patterns: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(SSH_FATAL_PATTERNS)
    )
    """Log lines that destroy the instance at once (case-insensitive substrings or regexes),
    comma-separated."""
    ssh_log_tail_lines: int = Field(default=50, ge=1, le=1000)
    """Log lines a slot keeps in its status."""
    ssh_poll_interval_s: float = Field(default=2.0, gt=0)
    """How often the collector reads the log files."""
    ssh_heartbeat_timeout_s: float = Field(default=30.0, gt=0)
    """A collector silent this long is presumed dead and resumes on another worker."""
    ssh_retry_max_s: float = Field(default=300.0, gt=0)
    """Cap of the collector's reconnect backoff."""

    # Slot timings (seconds).
    provision_timeout_s: float = Field(default=1200.0, gt=0)
    """An instance not running with ComfyUI's port mapped by then is destroyed."""
    fatal_grace_s: float = Field(default=120.0, ge=0)
    """How long a provider failure status may last before the instance is destroyed."""
    lease_overdue_grace_s: float = Field(default=300.0, gt=0)
    """A slot still leased this long past `leased_until` (the pool's end never came) ends the
    lease itself, cleans and reports READY."""
    readiness_timeout_s: float = Field(default=300.0, gt=0)
    """How long ComfyUI may take to answer once the instance runs (also bounds the warm-up)."""
    environment_timeout_s: float = Field(default=2700.0, gt=0)
    """From the rent: the studio environment's required nodes and models must all be present
    by then (else `environment_incomplete`); ComfyUI's readiness wait lasts as long."""
    environment_poll_s: float = Field(default=10.0, gt=0)
    """How often a slot checks /object_info and /models while its environment installs."""
    resume_timeout_s: float = Field(default=300.0, gt=0)
    """A parked (stopped) instance not running again this long after its resume is destroyed
    (its GPU was rented meanwhile) and the slot rents fresh."""
    readiness_initial_s: float = Field(default=2.0, gt=0)
    """First delay of the readiness backoff."""
    readiness_max_s: float = Field(default=30.0, gt=0)
    """Longest delay of the readiness backoff."""
    tcp_timeout_s: float = Field(default=5.0, gt=0)
    """Port validation: TCP connect to a candidate endpoint."""
    http_timeout_s: float = Field(default=10.0, gt=0)
    """Port validation: HTTP `/system_stats` of a candidate endpoint."""
    retry_backoff_initial_s: float = Field(default=10.0, gt=0)
    """First backoff between failed attempts of a slot."""
    retry_backoff_max_s: float = Field(default=600.0, gt=0)
    """Longest backoff between failed attempts of a slot."""

    # Worker-side state.
    secrets_dir: Path = Path(".warmpool/secrets")
    """File secret store (one file per secret), read before the environment."""
    log_level: str = "INFO"
    """Log level."""
    log_json: bool | None = None
    """JSON logs; unset: JSON when stderr is not a TTY."""

    # Worker metrics: Temporal's runtime metrics and ours (keepalive pings) for Prometheus.
    worker_metrics_addr: str | None = None
    """`host:port` where the worker serves Prometheus `/metrics` (Temporal's runtime metrics and
    keepalive pings); unset: no metrics endpoint."""

    # Gateway (`python -m warmpool.gateway`); its admin key is a secret (`ADMIN_API_KEY`).
    gateway_host: str = "127.0.0.1"
    """Where the gateway listens."""
    gateway_port: int = Field(default=3000, ge=0, le=65535)
    """Port the gateway listens on."""
    gateway_pools: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["default"], min_length=1
    )
    """Pools the gateway serves, comma-separated; the first is used when a request names none."""
    gateway_connect_timeout_s: float = Field(default=5.0, gt=0)
    """Proxy to an instance: connect timeout."""
    gateway_read_timeout_s: float = Field(default=60.0, gt=0)
    """Proxy to an instance: timeout of each read or write."""
    gateway_temporal_timeout_s: float = Field(default=10.0, gt=0)
    """Timeout of any Temporal call of the gateway."""
    gateway_max_wait_s: float = Field(default=120.0, ge=0)
    """Longest wait for capacity when acquiring a lease."""
    gateway_lease_cache_s: float = Field(default=1.0, ge=0)
    """How long the proxy reuses a lease lookup."""
    gateway_token_check_timeout_s: float = Field(default=30.0, gt=0)
    """Timeout of the admin `validate-tokens` call."""
    gateway_worker_metrics: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Workers' `/metrics` URLs that the gateway's `/metrics` includes, comma-separated."""

    # Embedded simulator (used when VASTAI_API_KEY is unset).
    sim_speed: float = Field(default=1.0, gt=0)
    """Embedded simulator's clock speed."""
    sim_fault_mix: Literal["none", "default"] = "none"
    """Embedded simulator's injected faults (`none` or `default`)."""

    @field_validator(
        "gpu_names",
        "require_tokens",
        "fatal_patterns",
        "ssh_log_paths",
        "ssh_fatal_patterns",
        "gateway_pools",
        "gateway_worker_metrics",
        mode="before",
    )
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("require_tokens")
    @classmethod
    def _known_services(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - {"vast", "hf", "civitai"})
        if unknown:
            raise ValueError(f"unknown service(s) {unknown}; use vast, hf, civitai")
        return value

    @field_validator("gateway_pools")
    @classmethod
    def _pool_names(cls, value: list[str]) -> list[str]:
        for name in value:
            validate_pool_name(name)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.readiness_initial_s > self.readiness_max_s:
            raise ValueError(
                "WARMPOOL_READINESS_INITIAL_S must not exceed WARMPOOL_READINESS_MAX_S"
            )
        return self

    @property
    def uses_simulator(self) -> bool:
        """No Vast.ai key and no explicit base URL: the embedded simulator is the provider."""
        return not self.vastai_api_key_set and self.vastai_base_url is None

    def slot_config(self) -> SlotConfig:
        """The non-secret part of the settings that a slot workflow carries in its input."""
        return SlotConfig(
            constraints=OfferConstraints(
                min_disk_gb=self.min_disk_gb,
                min_direct_ports=self.min_direct_ports,
                max_dph=self.max_dph,
                gpu_names=self.gpu_names,
                num_gpus=self.num_gpus,
                min_gpu_ram_mb=self.min_gpu_ram_mb,
                min_inet_down=self.min_inet_down,
                min_reliability=self.min_reliability,
            ),
            image=self.image,
            fallback_image=self.fallback_image,
            disk_gb=self.disk_gb,
            runtype=self.runtype,
            onstart=self.onstart,
            require_tokens=self.require_tokens,
            warmup_workflow=str(self.warmup_workflow) if self.warmup_workflow else None,
            probe=ProbeConfig(
                comfy_port=self.comfy_port,
                internal_port=self.comfy_internal_port,
                portal=self.comfy_portal,
                tcp_timeout=timedelta(seconds=self.tcp_timeout_s),
                http_timeout=timedelta(seconds=self.http_timeout_s),
                readiness_timeout=timedelta(seconds=self.readiness_timeout_s),
                readiness_initial_interval=timedelta(seconds=self.readiness_initial_s),
                readiness_max_interval=timedelta(seconds=self.readiness_max_s),
            ),
            keepalive=KeepaliveConfig(
                interval=timedelta(milliseconds=self.keepalive_interval_ms),
                timeout=timedelta(milliseconds=self.keepalive_timeout_ms),
                max_failures=self.keepalive_max_failures,
            ),
            polling=PollingConfig(
                active=timedelta(milliseconds=self.poll_active_ms),
                idle=timedelta(milliseconds=self.poll_idle_ms),
            ),
            provisioning=ProvisioningConfig(
                timeout=timedelta(seconds=self.provision_timeout_s),
                fatal_grace=timedelta(seconds=self.fatal_grace_s),
                fatal_patterns=[p.lower() for p in self.fatal_patterns],
            ),
            ssh=SshConfig(
                logs=self.ssh_key_set if self.ssh_logs is None else self.ssh_logs,
                username=self.ssh_user,
                paths=self.ssh_log_paths,
                fatal_patterns=self.ssh_fatal_patterns,
                poll_interval=timedelta(seconds=self.ssh_poll_interval_s),
                keepalive_interval=timedelta(milliseconds=self.ssh_keepalive_interval_ms),
                keepalive_max_miss=self.ssh_keepalive_max_miss,
                heartbeat_timeout=timedelta(seconds=self.ssh_heartbeat_timeout_s),
                retry_max_interval=timedelta(seconds=self.ssh_retry_max_s),
                max_attempts=self.ssh_max_consecutive_failures,
                tail_lines=self.ssh_log_tail_lines,
            ),
            retry_backoff_initial=timedelta(seconds=self.retry_backoff_initial_s),
            retry_backoff_max=timedelta(seconds=self.retry_backoff_max_s),
            lease_overdue_grace=timedelta(seconds=self.lease_overdue_grace_s),
            environment_timeout=timedelta(seconds=self.environment_timeout_s),
            environment_poll=timedelta(seconds=self.environment_poll_s),
            resume_timeout=timedelta(seconds=self.resume_timeout_s),
        )


def variable_name(field: str) -> str:
    """The environment variable of a `Settings` field (its first alias, else the prefixed name)."""
    info = Settings.model_fields[field]
    if isinstance(info.validation_alias, AliasChoices):
        return str(info.validation_alias.choices[0])
    return f"WARMPOOL_{field.upper()}"


def _variable_name(loc: str) -> str:
    """The environment variable behind an error location (a field name or an alias)."""
    return variable_name(loc) if loc in Settings.model_fields else loc.upper()


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning a validation error into one line naming the variable.

    `.env` is loaded into the process environment first (never overriding it), so the secret
    store, which reads the environment, sees a `VASTAI_API_KEY` kept there too.
    """
    load_dotenv(Path(".env"), override=False)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = err.get("loc") or ("?",)
            name = _variable_name(str(loc[0])) if loc and loc[0] != "__root__" else "settings"
            problems.append(f"{name}: {err.get('msg')}")
        raise SettingsError("invalid setting " + "; ".join(problems)) from None
    key_set = bool(os.environ.get("VASTAI_API_KEY"))
    ssh_key = LayeredSecretStore([FileSecretStore(settings.secrets_dir), EnvSecretStore()])
    return settings.model_copy(
        update={
            "vastai_api_key_set": key_set,
            "ssh_key_set": ssh_key.get(SecretName.SSH_KEY) is not None,
        }
    )


# ---- the settings table (docs/settings.md) -----------------------------------------------------

SETTINGS_DOC = Path(__file__).resolve().parent.parent / "docs" / "settings.md"
"""Generated by `python -m warmpool.settings --markdown`; `tests/warmpool/test_settings.py`
fails when it is out of date."""

NOT_SETTINGS: tuple[tuple[str, str, str], ...] = (
    (
        "`VASTAI_API_KEY`",
        "unset",
        "Vast.ai API key (a secret, file `vast` in the secret store first); unset and no "
        "`VASTAI_BASE_URL`: the worker embeds the simulator",
    ),
    (
        "`HF_TOKEN` / `HUGGINGFACE_HUB_TOKEN`, `CIVITAI_TOKEN`",
        "unset",
        "Hugging Face and Civitai tokens (secrets: files `hf`, `civitai`)",
    ),
    (
        "`WARMPOOL_INSTANCE_SECRET`",
        "required with a real provider",
        "secret the per-instance portal tokens derive from (file `instance`)",
    ),
    (
        "`WARMPOOL_SSH_KEY`",
        "unset",
        "private key (PEM) of the SSH log collector (file `ssh_key`)",
    ),
    (
        "`ADMIN_API_KEY`",
        "unset",
        "gateway admin key (file `admin`); unset: admin routes answer 503",
    ),
    (
        "`TEMPORAL_API_KEY`, `TEMPORAL_TLS`, `TEMPORAL_TLS_CLIENT_CERT_PATH`, "
        "`TEMPORAL_TLS_CLIENT_KEY_PATH`, `TEMPORAL_TLS_SERVER_CA_CERT_PATH`",
        "unset",
        "TLS / API key for Temporal Cloud or a TLS cluster (the SDK's environment "
        "configuration, as the `temporal` CLI reads it)",
    ),
)
"""Variables read outside `Settings`: secrets (`warmpool.secrets`, read at call time so they can
rotate) and the Temporal SDK's connection variables (`warmpool.temporal`)."""

_UNITS: tuple[tuple[str, str], ...] = (
    ("_ms", "ms"),
    ("_s", "s"),
    ("_gb", "GB"),
    ("_mb", "MB"),
    ("_dph", "$/h"),
    ("_per_second", "1/s"),
    ("_inet_down", "Mbit/s"),
)


def _unit(field: str) -> str:
    return next((unit for suffix, unit in _UNITS if field.endswith(suffix)), "")


def _default(field: str) -> str:
    info = Settings.model_fields[field]
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(f"`{v}`" for v in value) if value else "empty"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return str(value)
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def settings_markdown() -> str:
    """`docs/settings.md`: every setting's variable, default, unit and meaning, from `Settings`."""
    lines = [
        "# Settings",
        "",
        "<!-- Generated from warmpool/settings.py by `python -m warmpool.settings --markdown"
        " > docs/settings.md`; edit the field docstrings there, not this file. -->",
        "",
        "Read from the environment (and `.env`) by `warmpool.settings.Settings`. The seeds'",
        "variables (`WARM_POOL_*`, `COMFYUI_*`, `TOKEN_*`, `SSH_*`) keep their names and",
        "milliseconds; every other setting has the `WARMPOOL_` prefix. A bad value stops the",
        "process with one line naming the variable. A slot carries the part it needs as",
        "`SlotConfig` (`Settings.slot_config()`), in groups its activities embed whole.",
        "",
        "| variable | default | unit | meaning |",
        "|---|---|---|---|",
    ]
    for field, info in Settings.model_fields.items():
        if info.exclude:
            continue
        lines.append(
            f"| `{variable_name(field)}` | {_cell(_default(field))} | {_unit(field)} "
            f"| {_cell(info.description or '')} |"
        )
    lines += [
        "",
        "## Read elsewhere",
        "",
        "Secrets are not settings: activities read them from the secret store (a file in",
        "`WARMPOOL_SECRETS_DIR` first, then the environment) at call time, so they can rotate and",
        "never reach a workflow. The Temporal SDK reads its own connection variables.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {default} | {meaning} |" for name, default, meaning in NOT_SETTINGS]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m warmpool.settings")
    parser.add_argument(
        "--markdown", action="store_true", help="print docs/settings.md (the settings table)"
    )
    if not parser.parse_args().markdown:
        parser.error("nothing to do: pass --markdown")
    sys.stdout.write(settings_markdown())
