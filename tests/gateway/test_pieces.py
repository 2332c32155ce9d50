"""The gateway's pure parts: header filtering, path mapping, the key check, pool metrics."""

from __future__ import annotations

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from warmpool.gateway.auth import check_admin_key
from warmpool.gateway.errors import ApiError
from warmpool.gateway.metrics import Snapshot
from warmpool.gateway.proxy import HOP_BY_HOP, NOT_FORWARDED, _forwarded, upstream_path
from warmpool.models import PoolConfig, PoolStats, PoolStatus


def test_the_client_credentials_and_hop_by_hop_headers_are_not_forwarded() -> None:
    raw = [
        (b"Authorization", b"Bearer from-the-browser"),
        (b"Cookie", b"studio_session=abc"),
        (b"X-Admin-Key", b"k"),
        (b"x-admin-api-key", b"k"),
        (b"Origin", b"https://studio.example"),
        (b"Connection", b"keep-alive, X-Hop"),
        (b"X-Hop", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Host", b"gateway:3000"),
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"12"),
        (b"Accept", b"*/*"),
    ]
    assert _forwarded(raw, NOT_FORWARDED) == [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"12"),
        (b"Accept", b"*/*"),
    ]
    answer = [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"Keep-Alive", b"timeout=5")]
    assert _forwarded(answer, HOP_BY_HOP) == answer[:2], "repeated headers survive"


def test_the_upstream_path_is_the_raw_rest_of_the_path_with_its_query() -> None:
    scope = {
        "path": "/comfy/L1/view",
        "raw_path": b"/comfy/L1/view%2Fx",
        "query_string": b"filename=a%20b.png&type=output",
    }
    assert upstream_path(scope, "L1") == "/view%2Fx?filename=a%20b.png&type=output"
    assert upstream_path({"path": "/comfy/L1", "query_string": b""}, "L1") == "/"


@pytest.mark.parametrize(
    ("expected", "supplied", "status", "words"),
    [
        (None, "anything", 503, "ADMIN_API_KEY"),
        ("s3cret-key", None, 401, "X-Admin-Key header"),
        ("s3cret-key", "s3cret-kez", 401, "wrong admin key in the X-Admin-API-Key header"),
    ],
)
def test_the_admin_key_check_says_what_is_expected(
    expected: str | None, supplied: str | None, status: int, words: str
) -> None:
    with pytest.raises(ApiError) as refused:
        check_admin_key(expected, supplied, "X-Admin-API-Key")
    assert refused.value.status == status and words in refused.value.detail
    assert "s3cret" not in refused.value.detail
    check_admin_key("s3cret-key", "s3cret-key", "X-Admin-Key")


def test_pool_metrics_render_a_cumulative_histogram_and_every_failure_reason() -> None:
    stats = PoolStats(provisions_started=4, failures_by_reason={"no_space": 1})
    for seconds in (20, 50, 5000):
        stats.observe_ready(seconds)
    status = PoolStatus(
        pool="p",
        config=PoolConfig(),
        slots=[],
        counts={"READY": 2, "LEASED": 1},
        idle_ready=2,
        spend_per_hour=0.75,
        budget_limited=False,
        safe_mode=False,
        safe_reason=None,
        draining=False,
        active_leases=[],
        recent_leases=[],
        waiting=0,
        failures=[],
        granted_total=0,
        stats=stats,
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot({"p": status, "gone": None}, []))
    text = generate_latest(registry).decode()
    for line in (
        'warmpool_pool_up{pool="gone"} 0.0',
        'warmpool_provision_attempts_total{pool="p"} 4.0',
        'warmpool_provision_success_ratio{pool="p"} 0.75',
        'warmpool_time_to_ready_seconds_bucket{le="30",pool="p"} 1.0',
        'warmpool_time_to_ready_seconds_bucket{le="60",pool="p"} 2.0',
        'warmpool_time_to_ready_seconds_bucket{le="3600",pool="p"} 2.0',
        'warmpool_time_to_ready_seconds_bucket{le="+Inf",pool="p"} 3.0',
        'warmpool_time_to_ready_seconds_sum{pool="p"} 5070.0',
        'warmpool_provision_failures_total{pool="p",reason="no_space"} 1.0',
        'warmpool_provision_failures_total{pool="p",reason="keepalive_lost"} 0.0',
        'warmpool_slots{pool="p",state="LEASED"} 1.0',
        'warmpool_spend_dollars_per_hour{pool="p"} 0.75',
    ):
        assert line in text, line
    assert "keepalive_success_ratio" not in text, "no workers configured, no ratio"
