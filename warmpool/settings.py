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
from warmpool.models import SSH_FATAL_PATTERNS, SSH_LOG_PATHS, OfferConstraints, SlotConfig
from warmpool.secrets import EnvSecretStore, FileSecretStore, LayeredSecretStore, SecretName

DEFAULT_VAST_BASE_URL = "https://console.vast.ai/api/v0"


class SettingsError(ValueError):
    """A setting is invalid; the message names the environment variable."""


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def _ms(name: str, default: int) -> Any:
    return Field(default=default, gt=0, validation_alias=_env(name))


class Settings(BaseSettings):
    """Every knob of the service. Field docs are the README's settings table."""

    model_config = SettingsConfigDict(
        env_prefix="WARMPOOL_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
    )

    # Provider and services (URLs only; keys live in the secret store).
    vastai_base_url: str | None = Field(default=None, validation_alias=_env("VASTAI_BASE_URL"))
    vastai_api_key_set: bool = Field(default=False, exclude=True)
    hf_endpoint: str = Field(default="https://huggingface.co", validation_alias=_env("HF_ENDPOINT"))
    civitai_base_url: str = Field(
        default="https://civitai.com", validation_alias=_env("CIVITAI_BASE_URL")
    )

    # Temporal.
    temporal_address: str = Field(
        default="127.0.0.1:7233", validation_alias=_env("TEMPORAL_ADDRESS")
    )
    temporal_namespace: str = Field(default="default", validation_alias=_env("TEMPORAL_NAMESPACE"))
    task_queue: str = Field(
        default="warmpool", min_length=1, validation_alias=_env("WARMPOOL_TASK_QUEUE")
    )
    max_concurrent_activities: int = Field(default=2000, ge=1)
    """Per worker; every READY or LEASED slot holds one long-running watch activity."""
    vast_calls_per_second: float = Field(default=2.0, gt=0)
    """Ceiling on Vast.ai activity starts per second, enforced by the Temporal server across
    every worker (`max_task_queue_activities_per_second` on the provider task queue)."""
    vast_pacing_scale: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    """Multiplies Vast.ai's per-endpoint minimum intervals (`warmpool.vast.
    VAST_DEFAULT_MIN_INTERVALS`: search 6.5 s, create 5.0, show 2.2, list 1.1, destroy 3.3):
    each worker's own pacing and 429 backoff, and the server-side start rates of the search,
    create and destroy task queues (one per interval). 1.0 keeps the provider's limits; 0 turns
    pacing off (tests against a simulator that enforces none)."""
    vast_timeout_s: float = Field(default=30.0, gt=0)
    """Timeout of one Vast.ai HTTP call; a call that hangs longer fails and is retried."""

    # Offers and rent.
    image: str = "vastai/comfyui:latest"
    fallback_image: str | None = None
    disk_gb: float = Field(default=250.0, ge=8)
    min_disk_gb: float = Field(default=250.0, ge=8)
    max_dph: float = Field(default=1.0, gt=0)
    gpu_names: Annotated[list[str], NoDecode] = Field(default_factory=list)
    num_gpus: int = Field(default=1, ge=1)
    min_gpu_ram_mb: int = Field(default=0, ge=0)
    min_direct_ports: int = Field(default=8, ge=1)
    min_inet_down: float = Field(default=500.0, ge=0)
    min_reliability: float = Field(default=0.95, ge=0, le=1)
    runtype: str = "jupyter_direct"
    onstart: str = "entrypoint.sh"
    comfy_port: int = Field(default=8188, ge=1, le=65535)
    comfy_internal_port: int = Field(default=18188, ge=1, le=65535)
    comfy_portal: bool = True
    """The image serves ComfyUI behind Vast.ai's token-gated portal (`SlotConfig.portal`)."""
    require_tokens: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["vast"])
    warmup_workflow: Path | None = None
    fatal_patterns: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["no space left on device", "oci runtime create failed"]
    )

    # Seeds' tuning variables (milliseconds).
    poll_active_ms: int = _ms("WARM_POOL_POLL_ACTIVE_INTERVAL_MS", 30_000)
    poll_idle_ms: int = _ms("WARM_POOL_POLL_IDLE_INTERVAL_MS", 180_000)
    poll_default_ms: int = _ms("WARM_POOL_POLL_INTERVAL_MS", 120_000)
    keepalive_interval_ms: int = _ms("COMFYUI_KEEPALIVE_INTERVAL_MS", 30_000)
    keepalive_timeout_ms: int = _ms("COMFYUI_KEEPALIVE_TIMEOUT_MS", 5_000)
    keepalive_max_failures: int = Field(
        default=5, ge=1, validation_alias=_env("COMFYUI_KEEPALIVE_MAX_FAILURES")
    )
    token_cache_ms: int = _ms("TOKEN_VALIDATION_CACHE_MS", 300_000)
    token_check_ms: int = _ms("TOKEN_PERIODIC_CHECK_MS", 600_000)
    ssh_ready_timeout_ms: int = _ms("SSH_READY_TIMEOUT_MS", 600_000)
    ssh_keepalive_interval_ms: int = _ms("SSH_KEEPALIVE_INTERVAL_MS", 15_000)
    ssh_keepalive_max_miss: int = Field(
        default=3, ge=1, validation_alias=_env("SSH_KEEPALIVE_MAX_MISS")
    )
    ssh_max_consecutive_failures: int = Field(
        default=0, ge=0, validation_alias=_env("SSH_MAX_CONSECUTIVE_FAILURES")
    )

    # SSH log collector (the key itself is a secret: WARMPOOL_SSH_KEY or the secret store).
    ssh_logs: bool | None = None
    """Follow provisioning logs over SSH; unset means "when an SSH key is configured"."""
    ssh_key_set: bool = Field(default=False, exclude=True)
    ssh_user: str = Field(default="root", min_length=1)
    ssh_log_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(SSH_LOG_PATHS), min_length=1
    )
    ssh_fatal_patterns: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(SSH_FATAL_PATTERNS)
    )
    ssh_log_tail_lines: int = Field(default=50, ge=1, le=1000)
    ssh_poll_interval_s: float = Field(default=2.0, gt=0)
    ssh_heartbeat_timeout_s: float = Field(default=30.0, gt=0)
    ssh_retry_max_s: float = Field(default=300.0, gt=0)

    # Slot timings (seconds).
    provision_timeout_s: float = Field(default=1200.0, gt=0)
    fatal_grace_s: float = Field(default=120.0, ge=0)
    lease_overdue_grace_s: float = Field(default=300.0, gt=0)
    readiness_timeout_s: float = Field(default=300.0, gt=0)
    readiness_initial_s: float = Field(default=2.0, gt=0)
    readiness_max_s: float = Field(default=30.0, gt=0)
    tcp_timeout_s: float = Field(default=5.0, gt=0)
    http_timeout_s: float = Field(default=10.0, gt=0)
    retry_backoff_initial_s: float = Field(default=10.0, gt=0)
    retry_backoff_max_s: float = Field(default=600.0, gt=0)

    # Worker-side state.
    secrets_dir: Path = Path(".warmpool/secrets")
    log_level: str = "INFO"
    log_json: bool | None = None

    # Worker metrics: Temporal's runtime metrics and ours (keepalive pings) for Prometheus.
    worker_metrics_addr: str | None = None
    """`host:port` where the worker serves `/metrics`; unset = no metrics endpoint."""

    # Gateway (`python -m warmpool.gateway`); its admin key is a secret (`ADMIN_API_KEY`).
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=3000, ge=0, le=65535)
    gateway_pools: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["default"], min_length=1
    )
    """Pools the gateway serves; the first is used when a request names none."""
    gateway_connect_timeout_s: float = Field(default=5.0, gt=0)
    gateway_read_timeout_s: float = Field(default=60.0, gt=0)
    gateway_temporal_timeout_s: float = Field(default=10.0, gt=0)
    gateway_max_wait_s: float = Field(default=120.0, ge=0)
    gateway_lease_cache_s: float = Field(default=1.0, ge=0)
    gateway_token_check_timeout_s: float = Field(default=30.0, gt=0)
    gateway_worker_metrics: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Workers' `/metrics` URLs that the gateway's `/metrics` includes."""

    # Embedded simulator (used when VASTAI_API_KEY is unset).
    sim_speed: float = Field(default=1.0, gt=0)
    sim_fault_mix: Literal["none", "default"] = "none"

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

    @property
    def vast_task_queue(self) -> str:
        return f"{self.task_queue}-vast"

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
            comfy_port=self.comfy_port,
            comfy_internal_port=self.comfy_internal_port,
            portal=self.comfy_portal,
            require_tokens=self.require_tokens,
            poll_active=timedelta(milliseconds=self.poll_active_ms),
            poll_idle=timedelta(milliseconds=self.poll_idle_ms),
            poll_default=timedelta(milliseconds=self.poll_default_ms),
            provision_timeout=timedelta(seconds=self.provision_timeout_s),
            fatal_grace=timedelta(seconds=self.fatal_grace_s),
            lease_overdue_grace=timedelta(seconds=self.lease_overdue_grace_s),
            fatal_patterns=[p.lower() for p in self.fatal_patterns],
            readiness_timeout=timedelta(seconds=self.readiness_timeout_s),
            readiness_initial_interval=timedelta(seconds=self.readiness_initial_s),
            readiness_max_interval=timedelta(seconds=self.readiness_max_s),
            tcp_timeout=timedelta(seconds=self.tcp_timeout_s),
            http_timeout=timedelta(seconds=self.http_timeout_s),
            keepalive_interval=timedelta(milliseconds=self.keepalive_interval_ms),
            keepalive_timeout=timedelta(milliseconds=self.keepalive_timeout_ms),
            keepalive_max_failures=self.keepalive_max_failures,
            warmup_workflow=str(self.warmup_workflow) if self.warmup_workflow else None,
            retry_backoff_initial=timedelta(seconds=self.retry_backoff_initial_s),
            retry_backoff_max=timedelta(seconds=self.retry_backoff_max_s),
            ssh_logs=self.ssh_key_set if self.ssh_logs is None else self.ssh_logs,
            ssh_username=self.ssh_user,
            ssh_log_paths=self.ssh_log_paths,
            ssh_fatal_patterns=self.ssh_fatal_patterns,
            ssh_poll_interval=timedelta(seconds=self.ssh_poll_interval_s),
            ssh_keepalive_interval=timedelta(milliseconds=self.ssh_keepalive_interval_ms),
            ssh_keepalive_max_miss=self.ssh_keepalive_max_miss,
            ssh_heartbeat_timeout=timedelta(seconds=self.ssh_heartbeat_timeout_s),
            ssh_retry_max_interval=timedelta(seconds=self.ssh_retry_max_s),
            ssh_max_attempts=self.ssh_max_consecutive_failures,
            log_tail_lines=self.ssh_log_tail_lines,
        )


def _variable_name(loc: str) -> str:
    """The environment variable behind an error location (a field name or an alias)."""
    info = Settings.model_fields.get(loc)
    if info is None:
        return loc.upper()
    if isinstance(info.validation_alias, AliasChoices):
        return str(info.validation_alias.choices[0])
    return f"WARMPOOL_{loc.upper()}"


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
