"""What does Prometheus scrape? Pool figures read at scrape time, plus the workers' own metrics.

Pool figures come from each served pool's `status` query (`PoolStatus.stats` is cumulative and
survives continue-as-new), so a restarted gateway loses nothing and keeps no state:

    warmpool_pool_up{pool}                          1 when the pool answered the scrape
    warmpool_provision_attempts_total{pool}         rentals started (slot entered RENTING)
    warmpool_provisions_ready_total{pool}           of those, reached READY
    warmpool_provision_success_ratio{pool}          ready / attempts (0 before any attempt)
    warmpool_time_to_ready_seconds{pool}            histogram, RENTING -> READY
    warmpool_provision_failures_total{pool,reason}  every FailureReason, 0 included (no_space,
                                                    load_failed, provision_timeout, firewall,
                                                    keepalive_lost, ...)
    warmpool_active_leases{pool}, warmpool_idle_ready_slots{pool}, warmpool_slots{pool,state}
    warmpool_safe_mode{pool}

The scaling policy's reading (`PoolStatus.scaling`) and what idle costs (`PoolStatus.costs`,
kept across continue-as-new; the counters restart only with the pool):

    warmpool_spend_dollars_per_hour{pool,tier}      $/h now by tier: idle (READY, unleased),
                                                    leased, starting (renting, resuming),
                                                    stopped (disk only); sum by pool = total
    warmpool_floor_slots{pool}, warmpool_target_slots{pool}
                                                    the floor in force (min_ready or the
                                                    schedule's) and the warm slots wanted now
    warmpool_warm_slots{pool}, warmpool_stopped_slots{pool}
                                                    READY, leased or starting / parked slots
    warmpool_spend_dollars_total{pool,tier}         dollars spent since the pool started
    warmpool_idle_gpu_hours_total{pool}             GPU-hours READY and unleased
    warmpool_leased_gpu_hours_total{pool}           GPU-hours leased
    warmpool_dollars_per_leased_hour{pool}          all spend / leased GPU-hours (NaN before a
                                                    lease)
    warmpool_lease_wait_seconds{pool,quantile}      p50 / p95 of the last granted leases' wait
                                                    (0.5, 0.95; NaN before a lease)
    warmpool_lease_refusals_total{pool}             leases refused for lack of capacity

The gateway's own counters (leases it asked for, requests and websockets it proxied) are
described in `meters.py`.

With `WARMPOOL_GATEWAY_WORKER_METRICS` (the workers' `/metrics` URLs, see
`WARMPOOL_WORKER_METRICS_ADDR`), each worker's exposition is fetched too and re-exposed with a
`worker` label: Temporal's runtime metrics (`temporal_*`) and `warmpool_keepalive_pings_total`,
from which `warmpool_keepalive_success_ratio` (ok / all pings since the workers started; NaN
before the first ping) and `warmpool_worker_up{worker}` are derived.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from warmpool.gateway.context import gateway_of
from warmpool.gateway.errors import ApiError
from warmpool.models import READY_BUCKETS, FailureReason, PoolStatus
from warmpool.scaling import TIERS, tier

router = APIRouter(tags=["metrics"])

KEEPALIVE = "warmpool_keepalive_pings"
WORKER_SCRAPE_TIMEOUT_S = 2.0


@dataclass
class WorkerScrape:
    url: str
    families: list[Metric] | None
    """None when the worker did not answer."""

    @property
    def name(self) -> str:
        return urlsplit(self.url).netloc or self.url


def pool_families(statuses: dict[str, PoolStatus | None]) -> Iterator[Metric]:
    up = GaugeMetricFamily("warmpool_pool_up", "1 when the pool answered", labels=["pool"])
    attempts = CounterMetricFamily(
        "warmpool_provision_attempts", "rentals started", labels=["pool"]
    )
    ready = CounterMetricFamily(
        "warmpool_provisions_ready", "rentals that reached READY", labels=["pool"]
    )
    ratio = GaugeMetricFamily(
        "warmpool_provision_success_ratio", "READY / rentals started", labels=["pool"]
    )
    seconds = HistogramMetricFamily(
        "warmpool_time_to_ready_seconds", "rental start to READY", labels=["pool"]
    )
    failures = CounterMetricFamily(
        "warmpool_provision_failures", "failed attempts by reason", labels=["pool", "reason"]
    )
    leases = GaugeMetricFamily("warmpool_active_leases", "leases held now", labels=["pool"])
    idle = GaugeMetricFamily("warmpool_idle_ready_slots", "READY, not leased", labels=["pool"])
    slots = GaugeMetricFamily("warmpool_slots", "slots by state", labels=["pool", "state"])
    safe = GaugeMetricFamily("warmpool_safe_mode", "1 while renting is stopped", labels=["pool"])
    for pool, status in statuses.items():
        up.add_metric([pool], 0 if status is None else 1)
        if status is None:
            continue
        stats = status.stats
        attempts.add_metric([pool], stats.provisions_started)
        ready.add_metric([pool], stats.provisions_ready)
        started = stats.provisions_started
        ratio.add_metric([pool], stats.provisions_ready / started if started else 0.0)
        cumulative, buckets = 0, []
        for bound, count in zip(
            (*READY_BUCKETS, float("inf")), stats.ready_bucket_counts, strict=True
        ):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", cumulative))
        seconds.add_metric([pool], buckets, stats.ready_seconds_sum)
        reasons = {reason.value: 0 for reason in FailureReason} | stats.failures_by_reason
        for reason, count in sorted(reasons.items()):
            failures.add_metric([pool, reason], count)
        leases.add_metric([pool], len(status.active_leases))
        idle.add_metric([pool], status.idle_ready)
        for state, count in sorted(status.counts.items()):
            slots.add_metric([pool, state], count)
        safe.add_metric([pool], 1 if status.safe_mode else 0)
    yield from (up, attempts, ready, ratio, seconds, failures, leases, idle, slots, safe)
    yield from scaling_families(statuses)


def spend_rates(status: PoolStatus) -> dict[str, float]:
    """$/h now by tier: the pool's own figures, else derived from its slots (a pool whose
    status predates the cost view)."""
    if status.costs is not None:
        return dict.fromkeys(TIERS, 0.0) | status.costs.spend_per_hour_by_tier
    rates = dict.fromkeys(TIERS, 0.0)
    for view in status.slots:
        name = tier(view)
        if name is not None:
            rates[name] = rates.get(name, 0.0) + (view.dph_total or 0.0)
    return rates


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def scaling_families(statuses: dict[str, PoolStatus | None]) -> Iterator[Metric]:
    """The scaling policy's reading and what idle costs, per pool that answered."""
    rate = GaugeMetricFamily(
        "warmpool_spend_dollars_per_hour",
        "$/h of the pool's instances now, by tier (idle, leased, starting, stopped)",
        labels=["pool", "tier"],
    )
    floor = GaugeMetricFamily(
        "warmpool_floor_slots", "floor in force: min_ready or the schedule's", labels=["pool"]
    )
    target = GaugeMetricFamily(
        "warmpool_target_slots", "warm slots the scaling policy wants now", labels=["pool"]
    )
    warm = GaugeMetricFamily(
        "warmpool_warm_slots", "READY, leased or starting slots", labels=["pool"]
    )
    stopped = GaugeMetricFamily(
        "warmpool_stopped_slots", "parked slots (disk billed, GPU not)", labels=["pool"]
    )
    spent = CounterMetricFamily(
        "warmpool_spend_dollars",
        "dollars spent by tier since the pool started",
        labels=["pool", "tier"],
    )
    idle_hours = CounterMetricFamily(
        "warmpool_idle_gpu_hours", "GPU-hours READY and unleased", labels=["pool"]
    )
    leased_hours = CounterMetricFamily(
        "warmpool_leased_gpu_hours", "GPU-hours leased", labels=["pool"]
    )
    per_leased = GaugeMetricFamily(
        "warmpool_dollars_per_leased_hour",
        "dollars spent per leased GPU-hour (NaN before a lease)",
        labels=["pool"],
    )
    wait = GaugeMetricFamily(
        "warmpool_lease_wait_seconds",
        "wait of the last granted leases, by quantile (NaN before a lease)",
        labels=["pool", "quantile"],
    )
    refusals = CounterMetricFamily(
        "warmpool_lease_refusals", "leases refused for lack of capacity", labels=["pool"]
    )
    for pool, status in statuses.items():
        if status is None:
            continue
        for name, value in spend_rates(status).items():
            rate.add_metric([pool, name], value)
        if status.scaling is not None:
            floor.add_metric([pool], status.scaling.floor)
            target.add_metric([pool], status.scaling.target)
            warm.add_metric([pool], status.scaling.warm)
            stopped.add_metric([pool], status.scaling.stopped)
        costs = status.costs
        if costs is None:
            continue
        for name, value in (dict.fromkeys(TIERS, 0.0) | costs.spend_by_tier).items():
            spent.add_metric([pool, name], value)
        idle_hours.add_metric([pool], costs.idle_gpu_hours)
        leased_hours.add_metric([pool], costs.leased_gpu_hours)
        per_leased.add_metric([pool], _or_nan(costs.dollars_per_leased_hour))
        wait.add_metric([pool, "0.5"], _or_nan(costs.lease_wait_p50_s))
        wait.add_metric([pool, "0.95"], _or_nan(costs.lease_wait_p95_s))
        refusals.add_metric([pool], costs.refusals)
    yield from (rate, floor, target, warm, stopped, spent, idle_hours, leased_hours)
    yield from (per_leased, wait, refusals)


def worker_families(scrapes: Sequence[WorkerScrape]) -> Iterator[Metric]:
    """Every worker's families merged by name, each sample labelled with its worker."""
    up = GaugeMetricFamily("warmpool_worker_up", "1 when the worker answered", labels=["worker"])
    merged: dict[str, Metric] = {}
    pings = {"ok": 0.0, "all": 0.0}
    for scrape in scrapes:
        up.add_metric([scrape.name], 0 if scrape.families is None else 1)
        for family in scrape.families or []:
            if not family.samples:
                continue
            target = merged.setdefault(
                family.name, Metric(family.name, family.documentation, family.type, family.unit)
            )
            for sample in family.samples:
                labels = {**sample.labels, "worker": scrape.name}
                target.add_sample(sample.name, labels, sample.value, sample.timestamp)
                if family.name == KEEPALIVE and sample.name == f"{KEEPALIVE}_total":
                    pings["all"] += sample.value
                    pings["ok"] += sample.value if sample.labels.get("outcome") == "ok" else 0
    yield up
    if scrapes:
        ratio = GaugeMetricFamily(
            "warmpool_keepalive_success_ratio",
            "keepalive pings that succeeded, over all pings since the workers started",
        )
        ratio.add_metric([], pings["ok"] / pings["all"] if pings["all"] else float("nan"))
        yield ratio
    yield from merged.values()


class Snapshot(Collector):
    """One scrape's figures, gathered (asynchronously) before rendering."""

    def __init__(
        self, statuses: dict[str, PoolStatus | None], scrapes: Sequence[WorkerScrape]
    ) -> None:
        self._statuses = statuses
        self._scrapes = scrapes

    def collect(self) -> Iterator[Metric]:
        yield from pool_families(self._statuses)
        yield from worker_families(self._scrapes)


async def scrape_worker(http: httpx.AsyncClient, url: str) -> WorkerScrape:
    try:
        response = await http.get(url, timeout=WORKER_SCRAPE_TIMEOUT_S)
        response.raise_for_status()
        families = list(text_string_to_metric_families(response.text))
    except (httpx.HTTPError, ValueError):
        return WorkerScrape(url, None)
    return WorkerScrape(url, families)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text exposition (no auth: it carries no secret; keep it on a private network)."""
    gateway = gateway_of(request)

    async def status_or_none(pool: str) -> PoolStatus | None:
        try:
            return await gateway.pools.status(pool)
        except ApiError:
            return None

    names = gateway.pools.names
    statuses, scrapes = await asyncio.gather(
        asyncio.gather(*(status_or_none(pool) for pool in names)),
        asyncio.gather(
            *(scrape_worker(gateway.http, url) for url in gateway.settings.gateway_worker_metrics)
        ),
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot(dict(zip(names, statuses, strict=True)), scrapes))
    registry.register(gateway.meters.registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
