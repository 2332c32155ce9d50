"""Which address reaches this instance's ComfyUI, and what does each candidate answer right now?

On Vast.ai a container port is reached through its mapped host port, and on the ComfyUI image
that port is a token-gated Caddy proxy. So a candidate is probed in two steps: a TCP connect
(refused vs timed out tells "nothing there yet" from "firewall"), then `GET /system_stats` with
the instance token (401 = wrong token, 502/placeholder = still starting, 200 JSON = ready).

Only host ports the provider maps to *this* instance are candidates: a Vast.ai host's public IP is
shared by tenants, so a guessed address (port 8188 on the public IP) may be another customer's
ComfyUI. In portal mode a candidate must also prove to be our gate: the same request *without*
the token goes first and must be refused; an endpoint that answers it never receives the token.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from enum import StrEnum

import httpx

from warmpool.comfy import (
    ComfyBadResponse,
    ComfyNotReady,
    ComfyUnauthorized,
    base_url,
    bearer_headers,
    check_portal,
    new_client,
    read_system_stats,
)
from warmpool.models import CandidateReport, InstanceView, Model, PortReport


class Candidate(Model):
    """One address that may reach ComfyUI; `name` says where it came from (e.g. `mapped-8188`)."""

    name: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return base_url(self.host, self.port)


class ProbeOutcome(StrEnum):
    READY = "ready"
    STARTING = "starting"  # reachable; the portal placeholder, 502/503/504, or no HTTP answer yet
    REFUSED = "refused"  # nothing listens
    TIMEOUT = "timeout"  # TCP connect timed out: packets dropped, firewall-like
    UNAUTHORIZED = "unauthorized"  # 401/403: our token is wrong
    BAD_RESPONSE = "bad_response"  # another status, not JSON, or JSON without "system"
    NOT_GATED = "not_gated"  # portal mode: answered without the token, so not this instance's gate


def candidates_for(
    instance: InstanceView, comfy_port: int = 8188, internal_port: int = 18188
) -> list[Candidate]:
    """The host ports the provider maps to this instance: ComfyUI's port, then the internal one.

    Never a guessed address: port `comfy_port` on the shared public IP may be another tenant's
    server. Unmapped ports are skipped and identical host:port pairs kept once.
    """
    host = (instance.public_ip or "").strip()
    if not host:
        return []
    candidates: list[Candidate] = []
    for container in (comfy_port, internal_port):
        port = instance.ports.get(f"{container}/tcp")
        if port is not None and all(c.port != port for c in candidates):
            candidates.append(Candidate(name=f"mapped-{container}", host=host, port=port))
    return candidates


async def probe(
    candidate: Candidate,
    token: str | None,
    *,
    portal: bool = True,
    tcp_timeout: float = 5.0,
    http_timeout: float = 10.0,
    client: httpx.AsyncClient | None = None,
    tls: ssl.SSLContext | None = None,
) -> CandidateReport:
    """Classify one candidate (see ProbeOutcome); `detail` is a short reason, never the token.

    With `portal`, the token is sent only after a request without it was refused (401/403).
    Without `client`, a short-lived one is made (from the worker's `tls` context if given)."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(candidate.host, candidate.port), tcp_timeout
        )
    except TimeoutError:
        detail = f"TCP connect timed out after {tcp_timeout:g}s"
        return _report(candidate, ProbeOutcome.TIMEOUT, detail, tcp_ok=False)
    except ConnectionRefusedError:
        return _report(candidate, ProbeOutcome.REFUSED, "connection refused", tcp_ok=False)
    except OSError as exc:
        detail = f"TCP connect failed: {exc.strerror or type(exc).__name__}"
        return _report(candidate, ProbeOutcome.REFUSED, detail, tcp_ok=False)
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()
    async with _borrow(client, tls) as http:
        if portal:
            gate = await _probe_gate(candidate, http, http_timeout)
            if gate is not None:
                return gate
        return await _probe_http(candidate, token, http, http_timeout)


async def validate_ports(
    candidates: Sequence[Candidate],
    token: str | None,
    *,
    portal: bool = True,
    tcp_timeout: float = 5.0,
    http_timeout: float = 10.0,
    client: httpx.AsyncClient | None = None,
    tls: ssl.SSLContext | None = None,
) -> PortReport:
    """Probe all candidates at once; the URL is the first READY one in preference order.

    `firewall` when there are candidates and every one timed out on TCP connect (refused means
    "not up yet", not blocked); `unauthorized` when some candidate refused our token and none is
    ready.
    """
    async with _borrow(client, tls) as http:
        reports = await asyncio.gather(
            *(
                probe(
                    c,
                    token,
                    portal=portal,
                    tcp_timeout=tcp_timeout,
                    http_timeout=http_timeout,
                    client=http,
                )
                for c in candidates
            )
        )
    outcomes = [r.outcome for r in reports]
    ready = next((r for r in reports if r.outcome == ProbeOutcome.READY), None)
    return PortReport(
        candidates=list(reports),
        url=base_url(ready.host, ready.port) if ready else None,
        firewall=bool(reports)
        and all(not r.tcp_ok and r.outcome == ProbeOutcome.TIMEOUT for r in reports),
        unauthorized=ready is None and ProbeOutcome.UNAUTHORIZED in outcomes,
    )


async def _probe_gate(
    candidate: Candidate, client: httpx.AsyncClient, http_timeout: float
) -> CandidateReport | None:
    """Portal mode: ask without the token first. None (go on with the token) only if refused.

    An endpoint that answers a tokenless request is not this instance's gate (maybe another
    tenant's ComfyUI on a shared host) and never sees the token; a placeholder means the gate is
    there but ComfyUI is not up yet, so the token can wait until it is.
    """
    response = await _get_stats(candidate, None, client, http_timeout)
    if isinstance(response, CandidateReport):
        return response
    status = response.status_code
    try:
        check_portal(response, "GET /system_stats without token")
    except ComfyUnauthorized:
        return None
    except ComfyNotReady as exc:
        return _report(candidate, ProbeOutcome.STARTING, str(exc), status=status)
    if 200 <= status < 300:
        detail = f"HTTP {status} without the instance token: not this instance's portal"
        return _report(candidate, ProbeOutcome.NOT_GATED, detail, status=status)
    detail = f"HTTP {status} without the instance token, expected 401/403 from the portal"
    return _report(candidate, ProbeOutcome.BAD_RESPONSE, detail, status=status)


async def _get_stats(
    candidate: Candidate, token: str | None, client: httpx.AsyncClient, http_timeout: float
) -> httpx.Response | CandidateReport:
    """`GET /system_stats`, or the report for a candidate that gave no HTTP answer."""
    try:
        return await client.get(
            f"{candidate.url}/system_stats", headers=bearer_headers(token), timeout=http_timeout
        )
    except httpx.ConnectTimeout:
        detail = f"HTTP connect timed out after {http_timeout:g}s"
        return _report(candidate, ProbeOutcome.TIMEOUT, detail)
    except httpx.ConnectError:
        return _report(candidate, ProbeOutcome.REFUSED, "refused on HTTP connect")
    except httpx.TimeoutException:
        detail = f"TCP accepted, no HTTP answer within {http_timeout:g}s"
        return _report(candidate, ProbeOutcome.STARTING, detail)
    except httpx.TransportError as exc:
        # e.g. a port forwarder that accepts and then drops the connection: nothing behind it yet.
        detail = f"TCP accepted, then {type(exc).__name__} before an HTTP answer"
        return _report(candidate, ProbeOutcome.STARTING, detail)


async def _probe_http(
    candidate: Candidate, token: str | None, client: httpx.AsyncClient, http_timeout: float
) -> CandidateReport:
    response = await _get_stats(candidate, token, client, http_timeout)
    if isinstance(response, CandidateReport):
        return response
    status = response.status_code
    try:
        stats = read_system_stats(response)
    except ComfyUnauthorized as exc:
        return _report(candidate, ProbeOutcome.UNAUTHORIZED, str(exc), status=status)
    except ComfyNotReady as exc:
        return _report(candidate, ProbeOutcome.STARTING, str(exc), status=status)
    except ComfyBadResponse as exc:
        return _report(candidate, ProbeOutcome.BAD_RESPONSE, str(exc), status=status)
    system = stats["system"]
    version = system.get("comfyui_version") if isinstance(system, dict) else None
    detail = f"ComfyUI {str(version)[:40]} ready" if version else "ComfyUI ready"
    return _report(candidate, ProbeOutcome.READY, detail, status=status)


def _report(
    candidate: Candidate,
    outcome: ProbeOutcome,
    detail: str,
    *,
    tcp_ok: bool = True,
    status: int | None = None,
) -> CandidateReport:
    return CandidateReport(
        name=candidate.name,
        host=candidate.host,
        port=candidate.port,
        tcp_ok=tcp_ok,
        outcome=outcome.value,
        http_status=status,
        detail=detail,
    )


@asynccontextmanager
async def _borrow(
    client: httpx.AsyncClient | None, tls: ssl.SSLContext | None
) -> AsyncIterator[httpx.AsyncClient]:
    """The caller's client, or a short-lived one that ignores proxy settings (probes go direct)."""
    if client is not None:
        yield client
        return
    async with new_client(tls) as own:
        yield own
