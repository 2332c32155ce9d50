"""What does the gateway count of its own traffic? Leases it asked for, and what it proxied.

Unlike the pool figures (read from the pools at scrape time), these are this process's own
and start at zero when it starts, as Prometheus counters do:

    warmpool_gateway_lease_seconds{pool,outcome}       histogram, `POST /leases` from the
                                                       request to the pool's answer; outcome
                                                       granted, waited (granted after waiting),
                                                       no_capacity, refused or the error code
    warmpool_gateway_proxy_requests_total{outcome}     proxied HTTP requests: the instance's
                                                       status class (2xx ... 5xx) or the
                                                       gateway's own error code
    warmpool_gateway_proxy_seconds{outcome}            histogram, request to the instance's
                                                       response headers (the body streams after)
    warmpool_gateway_websockets_total{outcome}         websockets: opened, or the error code
    warmpool_gateway_websockets_open                   websockets relayed now

Labels never carry a lease id or a URL: their number stays bounded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.registry import CollectorRegistry

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Meters:
    """One gateway's counters, in a registry of its own (apps in one process never share)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.lease_seconds = Histogram(
            "warmpool_gateway_lease_seconds",
            "POST /leases: request to the pool's answer",
            ["pool", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.proxy_requests = Counter(
            "warmpool_gateway_proxy_requests",
            "proxied HTTP requests by the instance's status class or the gateway's error",
            ["outcome"],
            registry=self.registry,
        )
        self.proxy_seconds = Histogram(
            "warmpool_gateway_proxy_seconds",
            "proxied request to the instance's response headers",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.websockets = Counter(
            "warmpool_gateway_websockets",
            "websockets opened, or refused with the gateway's error",
            ["outcome"],
            registry=self.registry,
        )
        self.websockets_open = Gauge(
            "warmpool_gateway_websockets_open", "websockets relayed now", registry=self.registry
        )

    def proxied(self, outcome: str, started: float) -> None:
        """Count one proxied HTTP request that began at `started` (`time.perf_counter()`)."""
        self.proxy_requests.labels(outcome).inc()
        self.proxy_seconds.labels(outcome).observe(time.perf_counter() - started)

    @contextmanager
    def websocket_open(self) -> Iterator[None]:
        self.websockets.labels("opened").inc()
        self.websockets_open.inc()
        try:
            yield
        finally:
            self.websockets_open.dec()


def status_class(status: int) -> str:
    return f"{status // 100}xx"
