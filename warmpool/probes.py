"""Which address reaches this instance's ComfyUI, and what does each candidate answer right now?

On Vast.ai a container port is reached through its mapped host port, and on the ComfyUI image
that port is a token-gated Caddy proxy. So a candidate is probed in two steps: a TCP connect
(refused vs timed out tells "nothing there yet" from "firewall"), then `GET /system_stats` with
the instance token (401 = wrong token, 502/placeholder = still starting, 200 JSON = ready).
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


def candidates_for(
    instance: InstanceView, comfy_port: int = 8188, internal_port: int = 18188
) -> list[Candidate]:
    """Candidates in preference order: mapped ComfyUI port, mapped internal port, direct port.

    The direct port comes last: the seeds tried it first, but on Vast.ai it is the one that
    times out. Unmapped ports are skipped and identical host:port pairs kept once.
    """
    host = (instance.public_ip or "").strip()
    if not host:
        return []
    wanted = [
        (f"mapped-{comfy_port}", instance.ports.get(f"{comfy_port}/tcp")),
        (f"mapped-{internal_port}", instance.ports.get(f"{internal_port}/tcp")),
        (f"direct-{comfy_port}", comfy_port),
    ]
    candidates: list[Candidate] = []
    for name, port in wanted:
        if port is not None and all(c.port != port for c in candidates):
            candidates.append(Candidate(name=name, host=host, port=port))
    return candidates


async def probe(
    candidate: Candidate,
    token: str | None,
    *,
    tcp_timeout: float = 5.0,
    http_timeout: float = 10.0,
    client: httpx.AsyncClient | None = None,
    tls: ssl.SSLContext | None = None,
) -> CandidateReport:
    """Classify one candidate (see ProbeOutcome); `detail` is a short reason, never the token.

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
        return await _probe_http(candidate, token, http, http_timeout)


async def validate_ports(
    candidates: Sequence[Candidate],
    token: str | None,
    *,
    tcp_timeout: float = 5.0,
    http_timeout: float = 10.0,
    client: httpx.AsyncClient | None = None,
    tls: ssl.SSLContext | None = None,
) -> PortReport:
    """Probe all candidates at once; the URL is the first READY one in preference order.

    `firewall` when no candidate accepted TCP and every *mapped* candidate timed out (refused
    means "not up yet", not blocked; the direct port is a guess, so its refusal proves nothing);
    `unauthorized` when some candidate refused our token and none is ready.
    """
    async with _borrow(client, tls) as http:
        reports = await asyncio.gather(
            *(
                probe(c, token, tcp_timeout=tcp_timeout, http_timeout=http_timeout, client=http)
                for c in candidates
            )
        )
    outcomes = [r.outcome for r in reports]
    ready = next((r for r in reports if r.outcome == ProbeOutcome.READY), None)
    mapped = [r for r in reports if r.name.startswith("mapped-")] or list(reports)
    return PortReport(
        candidates=list(reports),
        url=base_url(ready.host, ready.port) if ready else None,
        firewall=bool(mapped)
        and not any(r.tcp_ok for r in reports)
        and all(r.outcome == ProbeOutcome.TIMEOUT for r in mapped),
        unauthorized=ready is None and ProbeOutcome.UNAUTHORIZED in outcomes,
    )


async def _probe_http(
    candidate: Candidate, token: str | None, client: httpx.AsyncClient, http_timeout: float
) -> CandidateReport:
    try:
        response = await client.get(
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
