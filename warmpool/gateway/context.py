"""What does every route of the gateway share? One `Gateway` per app, built at startup."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from fastapi import Request
from starlette.requests import HTTPConnection

from warmpool.gateway.meters import Meters
from warmpool.gateway.pools import Pools
from warmpool.gateway.targets import Targets
from warmpool.secrets import SecretStore
from warmpool.settings import Settings


@dataclass
class Gateway:
    settings: Settings
    pools: Pools
    targets: Targets
    secrets: SecretStore
    http: httpx.AsyncClient
    """Shared by proxied requests and worker-metrics scrapes: pooled keep-alive connections."""
    token_watch_id: str
    meters: Meters = field(default_factory=Meters)


def gateway_of(conn: HTTPConnection) -> Gateway:
    gateway: Gateway = conn.app.state.gateway
    return gateway


def get_gateway(request: Request) -> Gateway:
    """FastAPI dependency for HTTP routes."""
    return gateway_of(request)
