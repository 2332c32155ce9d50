"""assess() against each incident rule of DESIGN.md, and the backoff's bounds. Pure, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmpool.lifecycle import Assessment, StatusVerdict, assess, backoff_delay
from warmpool.models import FailureReason, InstanceView, SlotConfig

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
GRACE = timedelta(seconds=120)
CONFIG = SlotConfig()
MAPPED = {"8188/tcp": 40001, "22/tcp": 40002}


def instance(**fields: Any) -> InstanceView:
    """A healthy running instance unless told otherwise."""
    base: dict[str, Any] = {
        "id": 7,
        "actual_status": "running",
        "intended_status": "running",
        "cur_state": "running",
        "next_state": "running",
        "public_ip": "203.0.113.9",
        "ports": MAPPED,
        "direct_port_start": 40000,
        "direct_port_end": 40010,
    }
    return InstanceView(**{**base, **fields})


def judge(
    inst: InstanceView | None,
    *,
    gone: bool = False,
    bad_since: datetime | None = None,
    now: datetime = NOW,
) -> Assessment:
    return assess(
        inst,
        gone=gone,
        now=now,
        bad_since=bad_since,
        grace=GRACE,
        fatal_patterns=CONFIG.provisioning.fatal_patterns,
        comfy_port=CONFIG.probe.comfy_port,
        internal_port=CONFIG.probe.internal_port,
    )


def test_running_with_comfy_port_mapped_is_running() -> None:
    assert judge(instance()).verdict == StatusVerdict.RUNNING


def test_internal_port_mapping_is_enough() -> None:
    assert judge(instance(ports={"18188/tcp": 40003})).verdict == StatusVerdict.RUNNING


@pytest.mark.parametrize(
    "fields",
    [
        {"ports": {}},
        {"ports": {"22/tcp": 40002}},
        {"direct_port_start": -1},
        {"public_ip": None},
    ],
    ids=["no-ports", "no-comfy-port", "direct-port-start-minus-one", "no-public-ip"],
)
def test_running_without_a_usable_comfy_mapping_keeps_waiting(fields: dict[str, Any]) -> None:
    result = judge(instance(**fields))
    assert result.verdict == StatusVerdict.WAIT and result.reason is None


def test_null_actual_status_is_normal_provisioning() -> None:
    result = judge(instance(actual_status=None, ports={}, public_ip=None))
    assert result == Assessment(verdict=StatusVerdict.WAIT, detail="provisioning")


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("Error: write /var/lib/docker: no space left on device", FailureReason.NO_SPACE),
        ("OCI runtime create failed: container_linux.go:380", FailureReason.FATAL_STATUS),
    ],
)
def test_fatal_pattern_destroys_at_once_without_grace(message: str, reason: FailureReason) -> None:
    # First sighting (no bad_since) and even while actual_status still says running.
    result = judge(instance(status_msg=message))
    assert result.verdict == StatusVerdict.DESTROY
    assert result.reason == reason
    assert message in result.detail


def test_configured_fatal_patterns_are_matched_case_insensitively() -> None:
    result = assess(
        instance(status_msg="CUDA error: Out Of Memory"),
        gone=False,
        now=NOW,
        bad_since=None,
        grace=GRACE,
        fatal_patterns=["cuda error"],
        comfy_port=8188,
        internal_port=18188,
    )
    assert result.verdict == StatusVerdict.DESTROY and result.reason == FailureReason.FATAL_STATUS


@pytest.mark.parametrize("status", ["exited", "unknown", "offline", "load_failed"])
def test_failure_status_waits_out_the_grace_then_destroys(status: str) -> None:
    first = judge(instance(actual_status=status))
    assert first.verdict == StatusVerdict.WAIT and first.bad_since == NOW

    later = NOW + GRACE - timedelta(seconds=1)
    still = judge(instance(actual_status=status), bad_since=first.bad_since, now=later)
    assert still.verdict == StatusVerdict.WAIT and still.bad_since == NOW, "bad_since is carried"

    past = judge(instance(actual_status=status), bad_since=first.bad_since, now=NOW + GRACE)
    assert past.verdict == StatusVerdict.DESTROY
    expected = FailureReason.LOAD_FAILED if status == "load_failed" else FailureReason.FATAL_STATUS
    assert past.reason == expected
    assert status in past.detail


def test_outbid_destroys() -> None:
    stopped = {"cur_state": "stopped", "intended_status": "stopped", "next_state": "stopped"}
    result = judge(instance(actual_status="exited", **stopped))
    assert result.verdict == StatusVerdict.DESTROY and result.reason == FailureReason.OUTBID


def test_a_user_stop_in_progress_is_not_outbid() -> None:
    """Only all three fields at "stopped" mean outbid; two of them is a transition."""
    result = judge(instance(cur_state="running", intended_status="stopped", next_state="stopped"))
    assert result.reason != FailureReason.OUTBID


def test_gone_or_missing_instance_is_gone() -> None:
    assert judge(None).verdict == StatusVerdict.GONE
    gone = judge(instance(), gone=True)
    assert gone.verdict == StatusVerdict.GONE and gone.reason == FailureReason.INSTANCE_GONE


def test_unloaded_contract_is_gone() -> None:
    result = judge(instance(actual_status="exited", cur_state="unloaded"))
    assert result.verdict == StatusVerdict.GONE and result.reason == FailureReason.INSTANCE_GONE


@pytest.mark.parametrize(
    ("message", "image_failure"),
    [
        ("no space left on device", True),
        ("failed to register layer: write /usr: no space left on device", True),
        ("OCI runtime create failed", False),
    ],
)
def test_fatal_destroy_flags_image_failures(message: str, image_failure: bool) -> None:
    result = judge(instance(actual_status=None, status_msg=message))
    assert result.verdict == StatusVerdict.DESTROY and result.image_failure is image_failure


@pytest.mark.parametrize(
    "message",
    ["pull access denied for vastai/comfyui", "manifest unknown", "Error pulling image: EOF"],
)
def test_pull_failure_is_an_image_failure_with_grace(message: str) -> None:
    first = judge(instance(actual_status=None, status_msg=message))
    assert first.verdict == StatusVerdict.WAIT and first.image_failure and first.bad_since == NOW
    past = judge(instance(actual_status=None, status_msg=message), bad_since=NOW, now=NOW + GRACE)
    assert past.verdict == StatusVerdict.DESTROY and past.image_failure


def test_an_ordinary_status_message_is_no_image_failure() -> None:
    result = judge(instance(actual_status="loading", status_msg="Pulling fs layer", ports={}))
    assert result.verdict == StatusVerdict.WAIT and not result.image_failure


INITIAL = timedelta(seconds=10)
MAXIMUM = timedelta(minutes=10)


@given(failures=st.integers(0, 10_000), jitter=st.floats(0, 1, exclude_max=True))
def test_backoff_stays_within_half_step_and_the_cap(failures: int, jitter: float) -> None:
    """A slot with no offers for a night keeps failing: the delay must stay capped, not overflow."""
    delay = backoff_delay(failures, INITIAL, MAXIMUM, jitter)
    step = min(INITIAL * 2 ** max(0, min(failures, 20) - 1), MAXIMUM)  # 2**19 steps: far capped
    assert step / 2 <= delay <= step
    assert delay <= MAXIMUM


def test_backoff_doubles_until_the_cap() -> None:
    full = [backoff_delay(n, INITIAL, MAXIMUM, 0.999999) for n in range(1, 10)]
    assert full[0] == pytest.approx(INITIAL, rel=1e-5)
    assert full[1] == pytest.approx(2 * INITIAL, rel=1e-5)
    assert full[-1] == pytest.approx(MAXIMUM, rel=1e-5)
    assert full == sorted(full)
