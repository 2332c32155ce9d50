"""The gateway's pure parts: header filtering, path mapping, the key check, pool metrics."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from warmpool.gateway.auth import check_admin_key
from warmpool.gateway.errors import ApiError
from warmpool.gateway.metrics import Snapshot
from warmpool.gateway.proxy import HOP_BY_HOP, NOT_FORWARDED, _forwarded, upstream_path
from warmpool.models import (
    CostView,
    PoolConfig,
    PoolStats,
    PoolStatus,
    ScalingView,
    SlotState,
    SlotView,
)


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


def pool_status(**fields: object) -> PoolStatus:
    values: dict[str, object] = {
        "pool": "p",
        "config": PoolConfig(),
        "slots": [],
        "counts": {"READY": 2, "LEASED": 1},
        "idle_ready": 2,
        "spend_per_hour": 0.75,
        "budget_limited": False,
        "safe_mode": False,
        "safe_reason": None,
        "draining": False,
        "active_leases": [],
        "recent_leases": [],
        "waiting": 0,
        "failures": [],
        "granted_total": 0,
        "stats": PoolStats(),
    }
    return PoolStatus.model_validate(values | fields)


def exposition(statuses: dict[str, PoolStatus | None]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot(statuses, []))
    return generate_latest(registry).decode()


def test_pool_metrics_render_a_cumulative_histogram_and_every_failure_reason() -> None:
    stats = PoolStats(provisions_started=4, failures_by_reason={"no_space": 1})
    for seconds in (20, 50, 5000):
        stats.observe_ready(seconds)
    text = exposition({"p": pool_status(stats=stats), "gone": None})
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
    ):
        assert line in text, line
    assert "keepalive_success_ratio" not in text, "no workers configured, no ratio"


def test_scaling_and_idle_cost_metrics_by_pool_and_tier() -> None:
    at = datetime(2025, 3, 3, 9, tzinfo=UTC)
    status = pool_status(
        scaling=ScalingView(
            floor=2, demand=3, target=4, warm=3, stopped=1, surplus_since=None, decisions=[]
        ),
        costs=CostView(
            spend_per_hour_by_tier={"idle": 0.4, "leased": 0.35, "starting": 0.0, "stopped": 0.01},
            spend_total=3.5,
            spend_by_tier={"idle": 1.25, "leased": 2.25},
            idle_gpu_hours=2.5,
            leased_gpu_hours=5.0,
            dollars_per_leased_hour=0.7,
            lease_wait_p50_s=0.0,
            lease_wait_p95_s=42.0,
            refusals=3,
            since=at,
        ),
    )
    text = exposition({"p": status, "gone": None})
    for line in (
        "# HELP warmpool_spend_dollars_per_hour $/h of the pool's instances now, by tier",
        "# TYPE warmpool_spend_dollars_per_hour gauge",
        'warmpool_spend_dollars_per_hour{pool="p",tier="idle"} 0.4',
        'warmpool_spend_dollars_per_hour{pool="p",tier="leased"} 0.35',
        'warmpool_spend_dollars_per_hour{pool="p",tier="starting"} 0.0',
        'warmpool_spend_dollars_per_hour{pool="p",tier="stopped"} 0.01',
        'warmpool_floor_slots{pool="p"} 2.0',
        'warmpool_target_slots{pool="p"} 4.0',
        'warmpool_warm_slots{pool="p"} 3.0',
        'warmpool_stopped_slots{pool="p"} 1.0',
        "# TYPE warmpool_spend_dollars_total counter",
        'warmpool_spend_dollars_total{pool="p",tier="idle"} 1.25',
        'warmpool_spend_dollars_total{pool="p",tier="leased"} 2.25',
        'warmpool_spend_dollars_total{pool="p",tier="stopped"} 0.0',
        'warmpool_idle_gpu_hours_total{pool="p"} 2.5',
        'warmpool_leased_gpu_hours_total{pool="p"} 5.0',
        'warmpool_dollars_per_leased_hour{pool="p"} 0.7',
        'warmpool_lease_wait_seconds{pool="p",quantile="0.5"} 0.0',
        'warmpool_lease_wait_seconds{pool="p",quantile="0.95"} 42.0',
        "# TYPE warmpool_lease_refusals_total counter",
        'warmpool_lease_refusals_total{pool="p"} 3.0',
    ):
        assert line in text, line
    assert 'pool="gone"' not in text.replace('warmpool_pool_up{pool="gone"} 0.0', "")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    rates = [s.value for s in families["warmpool_spend_dollars_per_hour"].samples]
    assert sum(rates) == pytest.approx(0.76), "summed by pool: the pool's $/h"


def test_before_any_lease_the_ratios_are_nan_and_old_statuses_still_show_spend() -> None:
    fresh = pool_status(
        costs=CostView(
            spend_per_hour_by_tier={"idle": 0.5},
            spend_total=0.0,
            spend_by_tier={},
            idle_gpu_hours=0.0,
            leased_gpu_hours=0.0,
            dollars_per_leased_hour=None,
            lease_wait_p50_s=None,
            lease_wait_p95_s=None,
            refusals=0,
            since=None,
        )
    )
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(exposition({"p": fresh}))
        for s in f.samples
    }
    assert math.isnan(values[("warmpool_dollars_per_leased_hour", (("pool", "p"),))])
    assert math.isnan(
        values[("warmpool_lease_wait_seconds", (("pool", "p"), ("quantile", "0.95")))]
    )
    assert values[("warmpool_spend_dollars_per_hour", (("pool", "p"), ("tier", "leased")))] == 0
    assert ("warmpool_target_slots", (("pool", "p"),)) not in values, "no scaling view, no gauge"

    old = pool_status(
        slots=[
            SlotView(
                index=0,
                state=SlotState.READY,
                since=datetime.now(UTC),
                instance_id=1,
                dph_total=0.5,
            ),
            SlotView(
                index=1,
                state=SlotState.STOPPED,
                since=datetime.now(UTC),
                instance_id=2,
                dph_total=0.02,
            ),
        ]
    )
    text = exposition({"p": old})
    assert 'warmpool_spend_dollars_per_hour{pool="p",tier="idle"} 0.5' in text
    assert 'warmpool_spend_dollars_per_hour{pool="p",tier="stopped"} 0.02' in text
    assert "warmpool_spend_dollars_total{" not in text, "no ledger, no counter samples"
