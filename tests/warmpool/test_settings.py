"""Settings from the environment: the names operators rely on, their units, and the errors."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from warmpool.models import SlotConfig
from warmpool.settings import (
    SETTINGS_DOC,
    Settings,
    SettingsError,
    load_settings,
    settings_markdown,
    variable_name,
)
from workflows import options

OURS = ("WARMPOOL_", "WARM_POOL_", "COMFYUI_", "TOKEN_", "SSH_", "VASTAI_", "TEMPORAL_")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Neither the developer's shell nor a .env in the repository may leak into these tests,
    nor what `load_settings` loads from a test's `.env` into the process into later tests."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(OURS) or name in ("HF_ENDPOINT", "CIVITAI_BASE_URL"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_defaults_match_design_and_the_slot_config_defaults() -> None:
    settings = load_settings()
    assert settings.temporal_address == "127.0.0.1:7233"
    assert settings.temporal_namespace == "default"
    assert settings.task_queue == "warmpool"
    assert settings.vastai_base_url is None
    assert settings.hf_endpoint == "https://huggingface.co"
    assert settings.civitai_base_url == "https://civitai.com"
    assert settings.require_tokens == ["vast"]
    config = settings.slot_config()
    assert config.disk_gb == 250 and config.constraints.min_disk_gb == 250
    assert (config.polling.active, config.polling.idle) == (
        timedelta(seconds=30),
        timedelta(seconds=180),
    )
    assert config.keepalive.interval == timedelta(seconds=30)
    assert config.keepalive.timeout == timedelta(seconds=5)
    assert config.keepalive.max_failures == 5
    assert config.provisioning.fatal_grace == timedelta(seconds=120)
    assert config.probe.readiness_timeout == timedelta(minutes=5)
    # One source of defaults: a slot started without settings behaves like one started with them.
    assert config == SlotConfig()


SEEDS: list[tuple[str, str, Callable[[SlotConfig], object] | None]] = [
    ("WARM_POOL_POLL_ACTIVE_INTERVAL_MS", "poll_active_ms", lambda c: c.polling.active),
    ("WARM_POOL_POLL_IDLE_INTERVAL_MS", "poll_idle_ms", lambda c: c.polling.idle),
    ("WARM_POOL_POLL_INTERVAL_MS", "poll_default_ms", None),  # read, unused (DESIGN's name)
    ("COMFYUI_KEEPALIVE_INTERVAL_MS", "keepalive_interval_ms", lambda c: c.keepalive.interval),
    ("COMFYUI_KEEPALIVE_TIMEOUT_MS", "keepalive_timeout_ms", lambda c: c.keepalive.timeout),
    ("COMFYUI_KEEPALIVE_MAX_FAILURES", "keepalive_max_failures", None),
    ("TOKEN_VALIDATION_CACHE_MS", "token_cache_ms", None),
    ("TOKEN_PERIODIC_CHECK_MS", "token_check_ms", None),
    ("SSH_READY_TIMEOUT_MS", "ssh_ready_timeout_ms", None),  # read, unused (DESIGN's name)
    ("SSH_KEEPALIVE_INTERVAL_MS", "ssh_keepalive_interval_ms", lambda c: c.ssh.keepalive_interval),
    ("SSH_KEEPALIVE_MAX_MISS", "ssh_keepalive_max_miss", None),
    ("SSH_MAX_CONSECUTIVE_FAILURES", "ssh_max_consecutive_failures", None),
]


def test_every_seed_variable_keeps_its_name_and_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    """All set at once, each to a different value, so a crossed mapping cannot pass."""
    values = {name: 1_001 + i for i, (name, _, _) in enumerate(SEEDS)}
    for name, value in values.items():
        monkeypatch.setenv(name, str(value))
    settings = load_settings()
    config = settings.slot_config()
    for name, field, duration in SEEDS:
        assert getattr(settings, field) == values[name], name
        if duration is not None:
            assert duration(config) == timedelta(milliseconds=values[name]), name
    assert config.keepalive.max_failures == values["COMFYUI_KEEPALIVE_MAX_FAILURES"]
    assert config.ssh.keepalive_max_miss == values["SSH_KEEPALIVE_MAX_MISS"]
    assert config.ssh.max_attempts == values["SSH_MAX_CONSECUTIVE_FAILURES"]


def test_prefixed_settings_reach_the_slot_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "WARMPOOL_IMAGE": "vastai/comfyui:v2",
        "WARMPOOL_FALLBACK_IMAGE": "vastai/comfyui:slim",
        "WARMPOOL_DISK_GB": "300",
        "WARMPOOL_MIN_DISK_GB": "280",
        "WARMPOOL_MAX_DPH": "0.55",
        "WARMPOOL_NUM_GPUS": "2",
        "WARMPOOL_FATAL_GRACE_S": "45",
        "WARMPOOL_LEASE_OVERDUE_GRACE_S": "90",
        "WARMPOOL_PROVISION_TIMEOUT_S": "900",
        "WARMPOOL_WARMUP_WORKFLOW": "/etc/warmpool/warmup.json",
        "WARMPOOL_FATAL_PATTERNS": "No Space Left On Device, CUDA error",
        "WARMPOOL_TASK_QUEUE": "studio",
        "TEMPORAL_ADDRESS": "temporal.internal:7233",
        "TEMPORAL_NAMESPACE": "prod",
        "HF_ENDPOINT": "http://127.0.0.1:9/hf",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    config = settings.slot_config()
    assert (config.image, config.fallback_image) == ("vastai/comfyui:v2", "vastai/comfyui:slim")
    assert config.disk_gb == 300 and config.constraints.min_disk_gb == 280
    assert config.constraints.max_dph == 0.55 and config.constraints.num_gpus == 2
    assert config.provisioning.fatal_grace == timedelta(seconds=45)
    assert config.lease_overdue_grace == timedelta(seconds=90)
    assert config.provisioning.timeout == timedelta(seconds=900)
    assert config.warmup_workflow == "/etc/warmpool/warmup.json"
    assert config.provisioning.fatal_patterns == ["no space left on device", "cuda error"]
    assert settings.task_queue == "studio"
    assert settings.temporal_address == "temporal.internal:7233"
    assert settings.temporal_namespace == "prod"
    assert settings.hf_endpoint == "http://127.0.0.1:9/hf"


def test_gpu_names_is_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMPOOL_GPU_NAMES", " RTX 4090, RTX 3090 ,, ")
    config = load_settings().slot_config()
    assert config.constraints.gpu_names == ["RTX 4090", "RTX 3090"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("vast,hf,civitai", ["vast", "hf", "civitai"]), ("hf", ["hf"]), ("", [])],
)
def test_require_tokens_is_a_comma_list(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]
) -> None:
    monkeypatch.setenv("WARMPOOL_REQUIRE_TOKENS", value)
    assert load_settings().slot_config().require_tokens == expected


def test_require_tokens_rejects_an_unknown_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMPOOL_REQUIRE_TOKENS", "vast,github")
    with pytest.raises(SettingsError, match="WARMPOOL_REQUIRE_TOKENS") as info:
        load_settings()
    assert "github" in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WARMPOOL_MAX_DPH", "cheap"),
        ("WARMPOOL_MIN_RELIABILITY", "2"),
        ("WARMPOOL_DISK_GB", "4"),
        ("WARMPOOL_SIM_FAULT_MIX", "lots"),
        ("WARMPOOL_COMFY_PORT", "70000"),
        ("WARM_POOL_POLL_ACTIVE_INTERVAL_MS", "30s"),
        ("WARM_POOL_POLL_IDLE_INTERVAL_MS", "0"),
        ("COMFYUI_KEEPALIVE_MAX_FAILURES", "0"),
        ("TOKEN_VALIDATION_CACHE_MS", "-1"),
        ("SSH_MAX_CONSECUTIVE_FAILURES", "-1"),
    ],
)
def test_a_bad_value_fails_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert name in message and "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_inconsistent_readiness_intervals_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMPOOL_READINESS_INITIAL_S", "60")
    monkeypatch.setenv("WARMPOOL_READINESS_MAX_S", "30")
    with pytest.raises(SettingsError, match="WARMPOOL_READINESS_INITIAL_S"):
        load_settings()


def test_dotenv_file_is_read_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        "WARM_POOL_POLL_ACTIVE_INTERVAL_MS=1234\n"
        "WARMPOOL_GPU_NAMES=RTX 4090,A100\n"
        "WARMPOOL_MAX_DPH=0.7\n"
    )
    monkeypatch.setenv("WARMPOOL_MAX_DPH", "0.4")
    config = load_settings().slot_config()
    assert config.polling.active == timedelta(milliseconds=1234)
    assert config.constraints.gpu_names == ["RTX 4090", "A100"]
    assert config.constraints.max_dph == 0.4


def test_a_bad_value_in_dotenv_is_named_too(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("COMFYUI_KEEPALIVE_TIMEOUT_MS=five\n")
    with pytest.raises(SettingsError, match="COMFYUI_KEEPALIVE_TIMEOUT_MS"):
        load_settings()


def test_without_key_or_url_the_simulator_is_the_provider() -> None:
    assert load_settings().uses_simulator


def test_an_empty_key_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VASTAI_API_KEY", "")
    assert load_settings().uses_simulator


def test_a_key_selects_vast_and_stays_out_of_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VASTAI_API_KEY", "sk-live-do-not-print")
    settings = load_settings()
    assert not settings.uses_simulator
    assert "sk-live-do-not-print" not in repr(settings)
    assert "sk-live-do-not-print" not in settings.model_dump_json()


def test_a_base_url_selects_that_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VASTAI_BASE_URL", "http://127.0.0.1:9/api/v0")
    settings = load_settings()
    assert not settings.uses_simulator
    assert settings.vastai_base_url == "http://127.0.0.1:9/api/v0"


def test_overrides_take_field_names() -> None:
    """Tests and tools build settings by field name (populate_by_name)."""
    settings = load_settings(poll_active_ms=200, max_dph=3)
    assert settings.slot_config().polling.active == timedelta(milliseconds=200)
    assert isinstance(settings, Settings) and settings.max_dph == 3


def test_ssh_logs_are_on_when_a_key_is_configured_and_reach_the_slot_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The workflow cannot read secrets: the starter turns collection on when it sees a key."""
    assert not load_settings().slot_config().ssh.logs
    monkeypatch.setenv("WARMPOOL_SSH_KEY", "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n")
    config = load_settings().slot_config()
    assert config.ssh.logs and "PRIVATE KEY" not in config.model_dump_json()
    monkeypatch.setenv("WARMPOOL_SSH_LOGS", "false")
    assert not load_settings().slot_config().ssh.logs
    monkeypatch.setenv("WARMPOOL_SSH_LOGS", "true")
    monkeypatch.setenv("WARMPOOL_SSH_LOG_PATHS", "/var/log/a.log, /var/log/b.log")
    monkeypatch.setenv("WARMPOOL_SSH_FATAL_PATTERNS", "segfault,Killed")
    monkeypatch.setenv("SSH_KEEPALIVE_INTERVAL_MS", "500")
    monkeypatch.setenv("WARMPOOL_SSH_RETRY_MAX_S", "60")
    monkeypatch.delenv("WARMPOOL_SSH_KEY")
    config = load_settings().slot_config()
    assert config.ssh.logs
    assert config.ssh.paths == ["/var/log/a.log", "/var/log/b.log"]
    assert config.ssh.fatal_patterns == ["segfault", "Killed"]
    assert config.ssh.keepalive_interval == timedelta(milliseconds=500)
    assert config.ssh.retry_max_interval == timedelta(seconds=60)


@pytest.mark.parametrize(("failures", "attempts"), [("0", 0), ("4", 4)])
def test_ssh_max_consecutive_failures_bounds_the_collector_retries(
    monkeypatch: pytest.MonkeyPatch, failures: str, attempts: int
) -> None:
    """0 keeps the Temporal meaning "no limit": the collector reconnects until READY."""
    monkeypatch.setenv("SSH_MAX_CONSECUTIVE_FAILURES", failures)
    policy = options.ssh_follow(load_settings().slot_config())["retry_policy"]
    assert policy.maximum_attempts == attempts
    assert policy.non_retryable_error_types == ["SshAuthError"]


def test_every_setting_is_documented() -> None:
    """Each field's docstring is its meaning in docs/settings.md."""
    undocumented = [
        name
        for name, info in Settings.model_fields.items()
        if not info.exclude and not (info.description or "").strip()
    ]
    assert undocumented == []


def test_the_settings_doc_is_generated_from_the_settings() -> None:
    """Regenerate with `python -m warmpool.settings --markdown > docs/settings.md`."""
    assert SETTINGS_DOC.read_text() == settings_markdown(), (
        "docs/settings.md is out of date: run "
        "`python -m warmpool.settings --markdown > docs/settings.md`"
    )


def test_the_settings_doc_names_every_variable_once() -> None:
    doc = settings_markdown()
    for name, info in Settings.model_fields.items():
        if not info.exclude:
            assert doc.count(f"| `{variable_name(name)}` |") == 1, name
    assert "| `WARM_POOL_POLL_ACTIVE_INTERVAL_MS` | 30000 | ms |" in doc
    assert "| `WARMPOOL_PROVISION_TIMEOUT_S` | 1200 | s |" in doc


def test_a_slot_config_merges_a_group_and_refuses_a_flat_name() -> None:
    """What tests and benches override: `SlotConfig.merged` keeps a group's other fields."""
    config = load_settings(tcp_timeout_s=1.5).slot_config()
    merged = config.merged({"probe": {"portal": False}, "image": "x:1"})
    assert merged.probe.portal is False and merged.probe.tcp_timeout == timedelta(seconds=1.5)
    assert merged.image == "x:1" and config.probe.portal
    with pytest.raises(ValueError, match="portal"):
        config.merged({"portal": False})
