"""Probes against real loopback sockets: each outcome, candidate order, and the port report."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest

from activities.comfy import WatchInput, moved_from
from tests.helpers import running_stranger
from tests.warmpool.fake_portal import (
    SYSTEM_STATS,
    Blackhole,
    FakeHttpServer,
    Handler,
    Portal,
    Reply,
    comfy_ready,
    free_port,
)
from vastsim.comfy import GpuInfo
from vastsim.endpoint import ComfyEndpoint
from warmpool.comfy import new_client
from warmpool.instance_token import derive_instance_token
from warmpool.models import (
    CandidateReport,
    InstanceView,
    KeepaliveConfig,
    PortReport,
    ProbeConfig,
    ProvisioningConfig,
)
from warmpool.probes import Candidate, ProbeOutcome, candidates_for, probe, validate_ports

TOKEN = derive_instance_token(b"pool-secret-for-tests", "wp.test.0.1")
PLACEHOLDER = {"X-Portal-Placeholder": "true"}
TCP_TIMEOUT, HTTP_TIMEOUT = 0.3, 0.5


async def quick_probe(
    candidate: Candidate, token: str | None, *, portal: bool = True
) -> CandidateReport:
    return await probe(
        candidate, token, portal=portal, tcp_timeout=TCP_TIMEOUT, http_timeout=HTTP_TIMEOUT
    )


async def quick_validate(
    candidates: list[Candidate], token: str | None, *, portal: bool = True
) -> PortReport:
    return await validate_ports(
        candidates, token, portal=portal, tcp_timeout=TCP_TIMEOUT, http_timeout=HTTP_TIMEOUT
    )


def cand(port: int, name: str = "mapped-8188") -> Candidate:
    return Candidate(name=name, host="127.0.0.1", port=port)


@pytest.fixture
async def servers() -> AsyncIterator[list[FakeHttpServer]]:
    """Collects servers a test starts and closes them afterwards."""
    started: list[FakeHttpServer] = []
    yield started
    for server in started:
        await server.close()


async def serve(servers: list[FakeHttpServer], handler: Handler, port: int = 0) -> FakeHttpServer:
    server = await FakeHttpServer(handler).start(port)
    servers.append(server)
    return server


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    yield hole
    hole.close()


def assert_no_token(report: PortReport) -> None:
    assert TOKEN not in report.model_dump_json()


# --- instance token -----------------------------------------------------------------------


def test_instance_token_is_a_deterministic_hmac_of_the_label() -> None:
    expected = hmac.new(b"s3cret", b"wp.pool.1.7", hashlib.sha256).hexdigest()[:32]
    assert derive_instance_token(b"s3cret", "wp.pool.1.7") == expected
    assert len(expected) == 32 and int(expected, 16) >= 0
    assert derive_instance_token(b"s3cret", "wp.pool.1.8") != expected
    assert derive_instance_token(b"other", "wp.pool.1.7") != expected


@pytest.mark.parametrize(("secret", "label"), [(b"", "wp.p.0.1"), (b"s", "")])
def test_instance_token_refuses_empty_inputs(secret: bytes, label: str) -> None:
    with pytest.raises(ValueError):
        derive_instance_token(secret, label)


# --- candidates_for -------------------------------------------------------------------------


def view(public_ip: str | None, ports: dict[str, int]) -> InstanceView:
    return InstanceView(id=1, public_ip=public_ip, ports=ports)


def test_candidates_are_the_mapped_comfy_port_then_the_internal_one() -> None:
    instance = view("203.0.113.7", {"18188/tcp": 40002, "8188/tcp": 40001, "22/tcp": 40000})
    assert [(c.name, c.host, c.port) for c in candidates_for(instance)] == [
        ("mapped-8188", "203.0.113.7", 40001),
        ("mapped-18188", "203.0.113.7", 40002),
    ]


def test_candidates_never_guess_an_address() -> None:
    """Port 8188 on a shared public IP may be another tenant's ComfyUI: never a candidate."""
    names = [c.name for c in candidates_for(view("203.0.113.7", {"18188/tcp": 40002}))]
    assert names == ["mapped-18188"]
    assert candidates_for(view("203.0.113.7", {})) == []
    assert candidates_for(view("203.0.113.7", {"22/tcp": 8188})) == []


def test_candidates_dedupe_identity_mapping() -> None:
    instance = view("203.0.113.7", {"8188/tcp": 8188, "18188/tcp": 8188})
    assert [(c.name, c.port) for c in candidates_for(instance)] == [("mapped-8188", 8188)]


@pytest.mark.parametrize("public_ip", [None, "", "  "])
def test_candidates_need_a_public_ip(public_ip: str | None) -> None:
    assert candidates_for(view(public_ip, {"8188/tcp": 40001})) == []


def test_candidates_follow_configured_ports() -> None:
    instance = view(" 203.0.113.7\n", {"3000/tcp": 41000, "13000/tcp": 41001, "8188/tcp": 1})
    candidates = candidates_for(instance, comfy_port=3000, internal_port=13000)
    assert [(c.name, c.host, c.port) for c in candidates] == [
        ("mapped-3000", "203.0.113.7", 41000),
        ("mapped-13000", "203.0.113.7", 41001),
    ]


# --- probe: one outcome each ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("portal", "token", "outcome", "status"),
    [
        (Portal(TOKEN), None, ProbeOutcome.UNAUTHORIZED, 401),
        (Portal(TOKEN, ready=True), "f" * 32, ProbeOutcome.UNAUTHORIZED, 401),
        (Portal(TOKEN), TOKEN, ProbeOutcome.STARTING, 502),
        (Portal(TOKEN, placeholder_status=200), TOKEN, ProbeOutcome.STARTING, 200),
        (Portal(TOKEN, ready=True), TOKEN, ProbeOutcome.READY, 200),
    ],
    ids=["no-token", "wrong-token", "placeholder-502", "placeholder-200-tunnel", "ready"],
)
async def test_probe_portal(
    servers: list[FakeHttpServer],
    portal: Portal,
    token: str | None,
    outcome: ProbeOutcome,
    status: int,
) -> None:
    server = await serve(servers, portal)
    report = await quick_probe(cand(server.port), token)
    assert (report.outcome, report.http_status, report.tcp_ok) == (outcome, status, True)
    assert report.detail and TOKEN not in report.detail and "f" * 32 not in report.detail


async def test_probe_asks_without_the_token_first_then_sends_it(
    servers: list[FakeHttpServer],
) -> None:
    server = await serve(servers, Portal(TOKEN, ready=True))
    await quick_probe(cand(server.port), TOKEN)
    assert [r.path for r in server.requests] == ["/system_stats", "/system_stats"]
    assert "authorization" not in server.requests[0].headers
    assert server.requests[1].headers["authorization"] == f"Bearer {TOKEN}"


async def test_probe_bare_mode_sends_the_bearer_token_at_once(
    servers: list[FakeHttpServer],
) -> None:
    server = await serve(servers, comfy_ready)
    report = await quick_probe(cand(server.port), TOKEN, portal=False)
    assert report.outcome == ProbeOutcome.READY
    assert [r.headers.get("authorization") for r in server.requests] == [f"Bearer {TOKEN}"]


async def test_probe_bare_comfy_refused_then_ready(servers: list[FakeHttpServer]) -> None:
    port = free_port()
    before = await quick_probe(cand(port), None, portal=False)
    assert (before.outcome, before.tcp_ok, before.http_status) == ("refused", False, None)

    await serve(servers, comfy_ready, port)
    after = await quick_probe(cand(port), None, portal=False)
    assert (after.outcome, after.http_status) == ("ready", 200)
    assert "0.3.64" in after.detail


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (Reply.json(200, SYSTEM_STATS), ProbeOutcome.NOT_GATED),
        (Reply(200, b"<html>hello</html>", content_type="text/html"), ProbeOutcome.NOT_GATED),
        (Reply(404, b"", content_type="text/plain"), ProbeOutcome.BAD_RESPONSE),
        (Reply(503, b"", content_type="text/plain"), ProbeOutcome.STARTING),
    ],
    ids=["comfy-json", "html", "404", "503"],
)
async def test_portal_mode_never_sends_the_token_to_an_endpoint_that_is_not_a_gate(
    servers: list[FakeHttpServer], reply: Reply, outcome: ProbeOutcome
) -> None:
    """A mapped port that answers without the token is not this instance's portal: not READY,
    and it never sees the token (only a 401/403 to the tokenless request earns it)."""
    server = await serve(servers, lambda _: reply)
    report = await quick_probe(cand(server.port), TOKEN)
    assert (report.outcome, report.http_status) == (outcome, reply.status)
    assert [r.headers.get("authorization") for r in server.requests] == [None]
    assert TOKEN not in report.detail

    validated = await quick_validate([cand(server.port)], TOKEN)
    assert validated.url is None and not validated.unauthorized and not validated.firewall
    assert all("authorization" not in r.headers for r in server.requests)


async def test_portal_placeholder_without_token_is_starting_and_gets_no_token(
    servers: list[FakeHttpServer],
) -> None:
    """A gate that shows its placeholder even to a tokenless request: there, but not up yet."""
    placeholder = Reply(502, b"<html/>", content_type="text/html", headers=PLACEHOLDER)
    server = await serve(servers, lambda _: placeholder)
    report = await quick_probe(cand(server.port), TOKEN)
    assert (report.outcome, report.http_status) == (ProbeOutcome.STARTING, 502)
    assert [r.headers.get("authorization") for r in server.requests] == [None]


async def test_probe_blackhole_times_out(blackhole: Blackhole) -> None:
    started = time.monotonic()
    report = await probe(cand(blackhole.port), TOKEN, tcp_timeout=0.3, http_timeout=0.5)
    elapsed = time.monotonic() - started
    assert (report.outcome, report.tcp_ok) == ("timeout", False)
    assert 0.25 <= elapsed < 1.5


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, b"<html>ComfyUI</html>", content_type="text/html"),
        Reply.json(200, {"devices": []}),
        Reply.json(200, ["system"]),
        Reply(404, b"", content_type="text/plain"),
        Reply(500, b"500 Internal Server Error", content_type="text/plain"),
    ],
    ids=["html", "json-without-system", "json-list", "404", "500"],
)
async def test_probe_bad_response(servers: list[FakeHttpServer], reply: Reply) -> None:
    server = await serve(servers, lambda _: reply)
    report = await quick_probe(cand(server.port), None, portal=False)
    assert (report.outcome, report.http_status, report.tcp_ok) == (
        "bad_response",
        reply.status,
        True,
    )


@pytest.mark.parametrize(
    "reply",
    [
        Reply(503, b"", content_type="text/plain"),
        Reply(200, b"", hang_up=True),
        Reply.json(200, SYSTEM_STATS, delay=1.0),
    ],
    ids=["503", "hang-up", "slow"],
)
async def test_probe_reachable_but_not_answering_is_starting(
    servers: list[FakeHttpServer], reply: Reply
) -> None:
    server = await serve(servers, lambda _: reply)
    report = await probe(cand(server.port), None, tcp_timeout=0.3, http_timeout=0.3)
    assert (report.outcome, report.tcp_ok) == ("starting", True)


# --- validate_ports -------------------------------------------------------------------------


async def test_validate_prefers_first_ready_even_when_a_later_one_answers_first(
    servers: list[FakeHttpServer],
) -> None:
    slow_portal = Portal(TOKEN, ready=True, delay=0.3)
    preferred = await serve(servers, slow_portal)
    quick_portal = Portal(TOKEN, ready=True)
    fallback = await serve(servers, quick_portal)
    candidates = [cand(preferred.port, "mapped-8188"), cand(fallback.port, "mapped-18188")]

    report = await quick_validate(candidates, TOKEN)

    assert quick_portal.answered_at[0] < slow_portal.answered_at[0]
    assert [c.outcome for c in report.candidates] == ["ready", "ready"]
    assert report.url == f"http://127.0.0.1:{preferred.port}"
    assert not report.firewall and not report.unauthorized
    assert_no_token(report)


async def test_validate_skips_candidates_that_are_not_ready(
    servers: list[FakeHttpServer], blackhole: Blackhole
) -> None:
    starting = await serve(servers, Portal(TOKEN))
    ready = await serve(servers, Portal(TOKEN, ready=True))
    candidates = [cand(starting.port), cand(free_port()), cand(blackhole.port), cand(ready.port)]

    report = await quick_validate(candidates, TOKEN)

    outcomes = [c.outcome for c in report.candidates]
    assert outcomes == ["starting", "refused", "timeout", "ready"]
    assert report.url == f"http://127.0.0.1:{ready.port}"
    assert not report.firewall


async def test_validate_firewall_only_when_every_candidate_times_out(blackhole: Blackhole) -> None:
    all_dropped = await quick_validate([cand(blackhole.port), cand(blackhole.port)], TOKEN)
    assert all_dropped.firewall and all_dropped.url is None

    one_refused = await quick_validate([cand(blackhole.port), cand(free_port())], TOKEN)
    assert not one_refused.firewall and one_refused.url is None

    assert not (await quick_validate([], TOKEN)).firewall


async def test_validate_unauthorized_unless_something_is_ready(
    servers: list[FakeHttpServer],
) -> None:
    gated = await serve(servers, Portal("someone-elses-token", ready=True))
    bare = await serve(servers, comfy_ready)

    locked_out = await quick_validate([cand(gated.port), cand(free_port())], TOKEN)
    assert locked_out.unauthorized and locked_out.url is None and not locked_out.firewall
    assert_no_token(locked_out)

    with_fallback = await quick_validate([cand(gated.port), cand(bare.port)], TOKEN, portal=False)
    assert not with_fallback.unauthorized
    assert with_fallback.url == f"http://127.0.0.1:{bare.port}"

    not_a_gate = await quick_validate([cand(gated.port), cand(bare.port)], TOKEN)
    assert not_a_gate.unauthorized and not_a_gate.url is None
    assert [c.outcome for c in not_a_gate.candidates] == ["unauthorized", "not_gated"]


# --- a client the caller owns ----------------------------------------------------------------


async def test_validations_sharing_one_client_send_their_own_token(
    servers: list[FakeHttpServer],
) -> None:
    other = derive_instance_token(b"pool-secret-for-tests", "wp.test.1.1")
    mine = await serve(servers, Portal(TOKEN, ready=True))
    theirs = await serve(servers, Portal(other, ready=True))
    async with new_client() as http:
        reports = await asyncio.gather(
            validate_ports([cand(mine.port)], TOKEN, client=http),
            validate_ports([cand(theirs.port)], other, client=http),
        )
        assert not http.is_closed, "validate_ports closes only a client it made"
    assert [r.url is not None for r in reports] == [True, True]
    assert {r.headers.get("authorization") for r in mine.requests} == {None, f"Bearer {TOKEN}"}
    assert {r.headers.get("authorization") for r in theirs.requests} == {None, f"Bearer {other}"}


# --- a stranger on the shared public IP --------------------------------------------------------


async def test_a_stranger_on_the_public_ip_never_becomes_ready_nor_sees_the_token() -> None:
    """The field incident: another tenant's ComfyUI answers 200 on `<public_ip>:8188` while our
    mapped portal still shows its placeholder. Only the mapped port may become READY, and the
    stranger must never be asked anything, let alone be sent the token."""
    with running_stranger() as stranger:
        endpoint = ComfyEndpoint(
            host=stranger.host,
            mode="portal",
            token=TOKEN,
            container_ports={8188},
            gpu=GpuInfo("RTX 4090", 24564),
            prompt_s=0.01,
        )
        await endpoint.start(firewall=False)
        try:
            mapped = endpoint.host_ports()[8188]
            instance = view(stranger.host, {"8188/tcp": mapped})
            candidates = candidates_for(instance)
            assert [(c.host, c.port) for c in candidates] == [(stranger.host, mapped)]

            starting = await quick_validate(candidates, TOKEN)
            assert starting.url is None
            assert [c.outcome for c in starting.candidates] == [ProbeOutcome.STARTING]

            await endpoint.comfy_up()
            ready = await quick_validate(candidates, TOKEN)
            assert ready.url == f"http://{stranger.host}:{mapped}"
            assert [(c.port, c.outcome) for c in ready.candidates] == [(mapped, "ready")]
        finally:
            endpoint.close()
    assert stranger.requests == []
    stranger.assert_no_token()


async def test_a_stranger_on_a_mapped_port_is_not_ready_in_portal_mode() -> None:
    """Even where the provider's answer points at it, an un-gated ComfyUI is not our portal."""
    with running_stranger() as stranger:
        instance = view(stranger.host, {"8188/tcp": stranger.port})
        report = await quick_validate(candidates_for(instance), TOKEN)
        bare = await quick_validate(candidates_for(instance), None, portal=False)
    assert report.url is None and [c.outcome for c in report.candidates] == ["not_gated"]
    assert bare.url == stranger.url
    assert [r.path for r in stranger.requests] == ["/system_stats", "/system_stats"]
    stranger.assert_no_token()


# --- the watch: has the provider moved ComfyUI since READY? -----------------------------------


def watching(url: str, *, portal: bool = True) -> WatchInput:
    return WatchInput(
        label="wp.test.0.1",
        url=url,
        instance_id=1,
        poll_interval=timedelta(seconds=30),
        keepalive=KeepaliveConfig(),
        provisioning=ProvisioningConfig(fatal_patterns=[]),
        probe=ProbeConfig(comfy_port=8188, internal_port=18188, portal=portal),
    )


def test_watch_sees_the_comfy_port_mapped_elsewhere() -> None:
    watched = watching("http://203.0.113.7:40001")
    assert moved_from(watched, view("203.0.113.7", {"8188/tcp": 40001})) is None
    assert moved_from(watched, view("203.0.113.7", {})) is None, "unmapped for a moment"
    moved = moved_from(watched, view("203.0.113.7", {"8188/tcp": 40005}))
    assert moved is not None and "http://203.0.113.7:40005" in moved
    assert moved_from(watched, view("198.51.100.9", {"8188/tcp": 40001})) is not None
    # In portal mode only the portal's port may be watched; a bare image may use either.
    internal = view("203.0.113.7", {"8188/tcp": 40005, "18188/tcp": 40001})
    assert moved_from(watched, internal) is not None
    assert moved_from(watching("http://203.0.113.7:40001", portal=False), internal) is None
