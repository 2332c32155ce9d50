"""The gateway over real HTTP and websockets, in front of a real worker, pool and simulator.

One stack for the module: leases through the gateway, ComfyUI traffic through the proxy (HTTP
and `/ws`), the admin endpoints and their auth, and `/metrics` including the worker's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    StartWorkflowUpdateInput,
    WorkflowUpdateHandle,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from tests.gateway.conftest import ADMIN_KEY, ROOT, GatewayStack, free_port, gateway_stack, serve
from tests.integration.conftest import INSTANCE_SECRET
from vastsim import SimConfig
from warmpool.gateway.app import create_app
from warmpool.labels import pool_workflow_id
from warmpool.models import LeaseLookup, PoolConfig, PoolInput
from warmpool.secrets import SecretName, fingerprint

pytestmark = pytest.mark.integration
CLAIM_WINDOW = timedelta(seconds=2)

GRAPH = {
    "1": {"class_type": "PrimitiveString", "inputs": {"value": "hello warm pool"}},
    "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
}
ADMIN_ROUTES = [
    ("POST", "/api/proxy/warm-pool/prewarm", None),
    ("GET", "/api/proxy/warm-pool", None),
    ("GET", "/api/proxy/admin/warm-pool/status", None),
    ("POST", "/api/proxy/admin/validate-tokens", None),
    ("POST", "/api/proxy/admin/update-token", {"service": "civitai", "token": "sim-civitai-token"}),
]


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayStack]:
    async with gateway_stack(
        dev_env,
        tmp_path_factory.mktemp("gw"),
        pool_config=PoolConfig(
            min_ready=1, max_slots=2, max_lease=timedelta(hours=1), claim_window=CLAIM_WINDOW
        ),
        worker_metrics=True,
    ) as s:
        yield s


async def acquire(http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    """A lease, waiting for a slot that is still being cleaned after an earlier test."""
    answer = await http.post(
        "/api/leases", json={"holder": "alice", "duration_s": 600, "wait_s": 10, **body}
    )
    assert answer.status_code == 201, answer.text
    grant: dict[str, Any] = answer.json()
    return grant


async def release(http: httpx.AsyncClient, lease_id: str) -> dict[str, Any]:
    answer = await http.post(f"/api/leases/{lease_id}/release")
    assert answer.status_code == 200, answer.text
    ended: dict[str, Any] = answer.json()
    return ended


# ---- leases ---------------------------------------------------------------------------------


async def test_lease_acquire_show_renew_release(stack: GatewayStack) -> None:
    async with stack.http() as http:
        rid = uuid.uuid4().hex
        grant = await acquire(http, request_id=rid)
        assert grant["pool"] == stack.pool and grant["active"] is True
        assert grant["proxy_path"] == f"/comfy/{grant['lease_id']}/"
        assert grant["connection_url"].startswith(f"http://{stack.sim.config.public_ip}:")
        again = await acquire(http, request_id=rid)
        assert again["lease_id"] == grant["lease_id"], "a request id makes acquire idempotent"

        shown = (await http.get(f"/api/leases/{grant['lease_id']}")).json()
        assert shown["holder"] == "alice" and shown["active"] is True
        renewed = await http.post(
            f"/api/leases/{grant['lease_id']}/renew", json={"duration_s": 1800}
        )
        assert renewed.status_code == 200, renewed.text
        assert renewed.json()["leased_until"] > grant["leased_until"]

        ended = await release(http, grant["lease_id"])
        assert ended["active"] is False and ended["end_reason"] == "released"
        assert (await release(http, grant["lease_id"]))["ended_at"] == ended["ended_at"]
        late = await http.post(f"/api/leases/{grant['lease_id']}/renew")
        assert late.status_code == 410 and late.json()["error"] == "lease_ended"
        assert "released" in late.json()["detail"]


async def test_lease_requests_that_cannot_succeed(stack: GatewayStack) -> None:
    async with stack.http() as http:
        unknown = await http.get(f"/api/leases/{uuid.uuid4()}")
        assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_lease"
        other = await http.post("/api/leases", json={"holder": "a", "pool": "not-served"})
        assert other.status_code == 404 and "not served" in other.json()["detail"]
        too_long = await http.post("/api/leases", json={"holder": "a", "duration_s": 2 * 3600})
        assert too_long.status_code == 422 and too_long.json()["error"] == "refused"
        assert "exceeds the maximum 3600 s" in too_long.json()["detail"], "the pool's own limit"
        too_long = await http.post("/api/leases", json={"holder": "a", "duration_s": 9 * 3600})
        assert too_long.status_code == 422 and too_long.json()["error"] == "invalid_request"
        bad = await http.post("/api/leases", json={"holder": "", "color": "red"})
        assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"
        assert "body.holder" in bad.json()["detail"] and "body.color" in bad.json()["detail"]


async def test_no_capacity_then_a_waiting_acquire_is_granted_on_release(
    stack: GatewayStack,
) -> None:
    async with stack.http() as http:
        first = await acquire(http)
        await stack.wait_pool(lambda s: s.idle_ready >= 1)
        second = await acquire(http)
        refused = await http.post("/api/leases", json={"holder": "carol"})
        assert refused.status_code == 409 and refused.json()["error"] == "no_capacity"

        waiting = asyncio.create_task(
            http.post("/api/leases", json={"holder": "dan", "wait_s": 14})
        )
        await asyncio.sleep(0.5)
        assert not waiting.done(), "the acquire waits for capacity"
        await release(http, first["lease_id"])
        granted = await waiting
        assert granted.status_code == 201, granted.text
        assert granted.json()["holder"] == "dan" and granted.json()["slot"] == first["slot"]
        for lease in (second, granted.json()):
            await release(http, lease["lease_id"])


async def test_the_cli_waits_for_capacity_the_same_way(stack: GatewayStack) -> None:
    """`starter.py lease acquire --wait` goes through `pool_client.acquire_waiting` too."""

    async def starter(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "starter.py",
            *args,
            cwd=ROOT,
            env={
                **os.environ,
                "TEMPORAL_ADDRESS": stack.client.service_client.config.target_host,
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async with stack.http() as http:
        held = [await acquire(http)]
        await stack.wait_pool(lambda s: s.idle_ready >= 1)
        code, out, _ = await starter(
            "--json", "lease", "acquire", "--pool", stack.pool, "--holder", "op", "--wait", "5"
        )
        assert code == 0, out
        held.append(json.loads(out))
        code, _, err = await starter(
            "lease", "acquire", "--pool", stack.pool, "--holder", "op", "--wait", "1"
        )
        assert code == 1 and err.strip() == "error: no lease: no capacity before deadline"
        for lease in held:
            await release(http, lease["lease_id"])


class LostUpdateAnswers(Interceptor):
    """A client whose `lease` updates reach the pool but whose answers never come back in time:
    what a caller sees when a failover holds the pool's answer past its deadline."""

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _LoseLeaseAnswers(next)


class _LoseLeaseAnswers(OutboundInterceptor):
    async def start_workflow_update(
        self, input: StartWorkflowUpdateInput
    ) -> WorkflowUpdateHandle[Any]:
        handle = await super().start_workflow_update(input)
        if input.update == "lease":
            await asyncio.sleep(60)  # the caller's deadline passes first
        return handle


@contextlib.asynccontextmanager
async def losing_gateway(stack: GatewayStack) -> AsyncIterator[httpx.AsyncClient]:
    """A second gateway on the stack whose lease answers are lost (deadline 1 s)."""
    client = Client(
        stack.client.service_client,
        namespace=stack.client.namespace,
        data_converter=pydantic_data_converter,
        interceptors=[LostUpdateAnswers()],
    )
    settings = stack.settings.model_copy(update={"gateway_temporal_timeout_s": 1.0})
    server, task, url = await serve(create_app(settings, client, stack.secrets))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield http
    finally:
        server.should_exit = True
        await task


async def lookup(stack: GatewayStack, request_id: str) -> LeaseLookup:
    answer: LeaseLookup = await stack.handle.query(
        "lease_request", request_id, result_type=LeaseLookup
    )
    return answer


async def test_a_retry_with_the_same_request_id_returns_the_same_lease(
    stack: GatewayStack,
) -> None:
    request_id = f"retry-{uuid.uuid4().hex}"
    async with stack.http() as http:
        first = await acquire(http, request_id=request_id)
        again = await acquire(http, request_id=request_id, holder="alice-retry")
        assert again["lease_id"] == first["lease_id"] and again["request_id"] == request_id
        active = [x.lease_id for x in (await stack.status()).active_leases]
        assert active.count(first["lease_id"]) == 1 and len(active) == 1, "never a second lease"
        await release(http, first["lease_id"])


async def test_an_unanswered_lease_names_its_request_id_and_a_retry_claims_it(
    stack: GatewayStack,
) -> None:
    """The pool granted, the answer was lost: 503 with the request id; the retry with it gets
    that very lease, which then outlives the claim window (claimed)."""
    async with stack.http() as http, losing_gateway(stack) as lost:
        await stack.wait_pool(lambda s: s.idle_ready >= 1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await lost.post("/api/leases", json={"holder": "eve", "duration_s": 600})
        assert loop.time() - started < 3
        body = answer.json()
        assert answer.status_code == 503 and body["error"] == "temporal_timeout", body
        request_id = body["request_id"]
        assert request_id and f"retry with request_id {request_id}" in body["detail"]
        granted = await lookup(stack, request_id)
        assert granted.status == "granted" and granted.grant is not None, "granted to nobody yet"
        retry = await acquire(http, request_id=request_id, holder="eve")
        assert retry["lease_id"] == granted.grant.lease_id
        await asyncio.sleep(CLAIM_WINDOW.total_seconds() + 1.5)
        shown = await http.get(f"/api/leases/{retry['lease_id']}")
        assert shown.json()["active"] is True, "a claimed lease is not released"
        await release(http, retry["lease_id"])


async def test_an_unanswered_grant_nobody_claims_is_released(stack: GatewayStack) -> None:
    request_id = f"lost-{uuid.uuid4().hex}"
    async with stack.http() as http, losing_gateway(stack) as lost:
        await stack.wait_pool(lambda s: s.idle_ready >= 1)
        answer = await lost.post(
            "/api/leases", json={"holder": "mallory", "duration_s": 600, "request_id": request_id}
        )
        assert answer.status_code == 503 and answer.json()["request_id"] == request_id
        granted = await lookup(stack, request_id)
        assert granted.grant is not None
        lease_id = granted.grant.lease_id
        status = await stack.wait_pool(
            lambda s: all(x.lease_id != lease_id for x in s.active_leases),
            within=CLAIM_WINDOW.total_seconds() + 10,
        )
        ended = next(x for x in status.recent_leases if x.lease_id == lease_id)
        assert ended.end_reason == "unclaimed: the caller never received the grant"
        shown = await http.get(f"/api/leases/{lease_id}")
        assert shown.json()["active"] is False
        await stack.wait_pool(lambda s: s.idle_ready >= 1, within=30)  # the slot is READY again


async def test_the_cli_names_the_request_id_to_retry_with_and_the_retry_gets_the_lease(
    stack: GatewayStack,
) -> None:
    request_id = f"cli-{uuid.uuid4().hex}"
    env = {**os.environ, "TEMPORAL_ADDRESS": stack.client.service_client.config.target_host}
    args = ["--json", "lease", "acquire", "--pool", stack.pool, "--holder", "op"]
    async with stack.http() as http:
        await stack.wait_pool(lambda s: s.idle_ready >= 1)
        code, out, err = await starter(env, *args, "--request-id", request_id)
        assert code == 0, err
        again_code, again, err = await starter(env, *args, "--request-id", request_id)
        assert again_code == 0, err
        assert json.loads(again)["lease_id"] == json.loads(out)["lease_id"]
        await release(http, json.loads(out)["lease_id"])
    # A pool no worker runs (a failover that lasts): after --timeout, one line naming the
    # request id, and the pool has been told that nobody got an answer.
    stalled = f"stalled-{uuid.uuid4().hex[:8]}"
    handle = await stack.client.start_workflow(
        "WarmPoolWorkflow",
        PoolInput(pool=stalled, config=PoolConfig(min_ready=0, max_slots=1)),
        id=pool_workflow_id(stalled),
        task_queue=f"nobody-polls-{uuid.uuid4().hex}",
    )
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        code, out, err = await starter(
            env, "lease", "acquire", "--pool", stalled, "--holder", "op", "--timeout", "1",
            "--request-id", "r-42",
        )  # fmt: skip
        assert loop.time() - started < 10
        assert code == 1 and out == "", (code, out, err)
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert "retry with --request-id r-42" in err
        signals = [
            e.workflow_execution_signaled_event_attributes
            async for e in handle.fetch_history_events()
            if e.HasField("workflow_execution_signaled_event_attributes")
        ]
        assert [x.signal_name for x in signals] == ["lease_unanswered"]
        assert pydantic_data_converter.payload_converter.from_payloads(
            signals[0].input.payloads, [str]
        ) == ["r-42"]
    finally:
        await handle.terminate("test over")


async def starter(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "starter.py",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# ---- the ComfyUI proxy ----------------------------------------------------------------------


async def test_proxy_forwards_http_with_the_instance_token(stack: GatewayStack) -> None:
    async with stack.http() as http:
        grant = await acquire(http)
        base = grant["proxy_path"]
        async with httpx.AsyncClient() as direct:
            anon = await direct.get(f"{grant['connection_url']}/system_stats")
        assert anon.status_code == 401, "the portal needs the token the gateway adds"

        sent = {"Authorization": "Bearer not-the-token", "Cookie": "session=studio"}
        stats = await http.get(f"{base}system_stats", headers=sent)
        assert stats.status_code == 200 and "system" in stats.json()

        async def chunks() -> AsyncIterator[bytes]:
            body = json.dumps({"prompt": GRAPH, "client_id": "gw-test"}).encode()
            for i in range(0, len(body), 16):
                yield body[i : i + 16]

        queued = await http.post(f"{base}api/prompt", content=chunks())
        assert queued.status_code == 200, queued.text
        prompt_id = queued.json()["prompt_id"]
        for _ in range(100):
            history = (await http.get(f"{base}history/{prompt_id}")).json()
            if history:
                break
            await asyncio.sleep(0.05)
        assert history[prompt_id]["outputs"]["2"] == {"text": ["hello warm pool"]}
        rejected = await http.post(f"{base}prompt", json={"prompt": {}})
        assert rejected.status_code == 400, "ComfyUI's own answers pass through"
        limited = await http.get(f"{base}history", params={"max_items": "1"})
        assert limited.status_code == 200 and list(limited.json()) == [prompt_id]

        await release(http, grant["lease_id"])
        gone = await http.get(f"{base}system_stats")
        assert gone.status_code == 410 and gone.json()["error"] == "lease_ended"
        unknown = await http.get(f"/comfy/{uuid.uuid4()}/system_stats")
        assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_lease"


def ws_url(stack: GatewayStack, path: str) -> str:
    return "ws" + stack.url.removeprefix("http") + path


async def test_websocket_streams_prompt_events_and_closes_when_the_lease_ends(
    stack: GatewayStack,
) -> None:
    async with stack.http() as http:
        grant = await acquire(http)
        base = grant["proxy_path"]
        async with websockets.connect(ws_url(stack, f"{base}ws?clientId=gw-ws"), proxy=None) as ws:
            hello = json.loads(await ws.recv())
            assert hello["type"] == "status" and hello["data"]["sid"] == "gw-ws"
            await ws.send(json.dumps({"type": "feature_flags", "data": {}}))
            queued = await http.post(f"{base}prompt", json={"prompt": GRAPH, "client_id": "gw-ws"})
            prompt_id = queued.json()["prompt_id"]
            kinds = []
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 10))
                kinds.append(event["type"])
                data = event["data"]
                if event["type"] == "executing" and data.get("node") is None:
                    assert data["prompt_id"] == prompt_id
                    break
            assert "feature_flags" in kinds and "execution_start" in kinds

            await release(http, grant["lease_id"])
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4410
        assert "released" in closed.value.rcvd.reason

        for lease_id, status in ((grant["lease_id"], 410), (str(uuid.uuid4()), 404)):
            with pytest.raises(websockets.InvalidStatus) as denied:
                await websockets.connect(ws_url(stack, f"/comfy/{lease_id}/ws"), proxy=None)
            assert denied.value.response.status_code == status
            assert json.loads(denied.value.response.body)["error"] in {
                "lease_ended",
                "unknown_lease",
            }


# ---- admin ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
async def test_admin_routes_need_the_admin_key(
    stack: GatewayStack,
    method: str,
    path: str,
    body: dict[str, str] | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with stack.http() as http:
        missing = await http.request(method, path, json=body)
        assert missing.status_code == 401
        assert missing.json()["error"] == "unauthorized"
        assert "X-Admin-Key" in missing.json()["detail"]
        wrong = await http.request(method, path, json=body, headers={"X-Admin-Key": "guess"})
        assert wrong.status_code == 401 and "wrong admin key" in wrong.json()["detail"]
        for header in ("x-admin-key", "X-ADMIN-API-KEY"):
            ok = await http.request(method, path, json=body, headers={header: ADMIN_KEY})
            assert ok.status_code in (200, 202), ok.text
            assert ADMIN_KEY not in ok.text
    assert not [r for r in caplog.records if ADMIN_KEY in r.getMessage()]


async def test_admin_pool_views_and_prewarm(stack: GatewayStack) -> None:
    await stack.wait_pool(lambda s: s.idle_ready >= 1)
    async with stack.http(headers=stack.admin()) as http:
        summary = (await http.get("/api/proxy/warm-pool")).json()
        assert summary["pool"] == stack.pool and summary["max_slots"] == 2
        assert summary["idle_ready"] >= 1 and summary["counts"]["READY"] >= 1
        assert summary["target"] >= 1 and summary["stopped"] == 0
        assert summary["spend_per_hour_by_tier"]["idle"] > 0
        named = await http.get("/api/proxy/warm-pool", params={"pool": "nope"})
        assert named.status_code == 404 and named.json()["error"] == "unknown_pool"
        full = (await http.get("/api/proxy/admin/warm-pool/status")).json()
        assert [p["pool"] for p in full["pools"]] == [stack.pool] and full["unavailable"] == {}
        assert full["pools"][0]["stats"]["provisions_ready"] >= 1
        prewarm = await http.post("/api/proxy/warm-pool/prewarm")
        assert prewarm.status_code == 202 and prewarm.json()["signal"] == "prewarm"


async def test_token_update_and_validation_never_echo_the_token(
    stack: GatewayStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    new_hf = next(iter(SimConfig().hf_tokens))
    async with stack.http(headers=stack.admin()) as http:
        report = (await http.post("/api/proxy/admin/validate-tokens")).json()
        health = {r["service"]: r["health"] for r in report["services"]}
        assert report["ok"] is True and health["vast"] == "valid" and health["hf"] == "unset"

        stored = await http.post(
            "/api/proxy/admin/update-token", json={"service": "hf", "token": f" {new_hf}\n"}
        )
        assert stored.status_code == 200, stored.text
        assert stored.json() == {
            "service": "hf",
            "version": fingerprint(new_hf),
            "watch_notified": True,
        }
        assert stack.secrets.get(SecretName.HF) == new_hf
        report = (await http.post("/api/proxy/admin/validate-tokens")).json()
        assert {r["service"]: r["health"] for r in report["services"]}["hf"] == "valid"

        spaced = "hf_with space inside0000000000"
        bad = await http.post(
            "/api/proxy/admin/update-token", json={"service": "hf", "token": spaced}
        )
        assert bad.status_code == 422 and "body.token" in bad.json()["detail"]
        unknown = await http.post(
            "/api/proxy/admin/update-token", json={"service": "admin", "token": new_hf}
        )
        assert unknown.status_code == 422
        for answer in (stored, bad, unknown):
            assert new_hf not in answer.text and spaced not in answer.text
    leaked = [
        r for r in caplog.records if new_hf in r.getMessage() or INSTANCE_SECRET in r.getMessage()
    ]
    assert leaked == []


# ---- metrics --------------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_expose_pool_figures_and_the_workers_own(stack: GatewayStack) -> None:
    await stack.wait_pool(lambda s: s.idle_ready >= 1 and not s.active_leases)
    async with stack.http() as http:
        answer = await http.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    values = samples(answer.text)
    pool = frozenset({("pool", stack.pool)})

    def value(name: str, labels: frozenset[tuple[str, str]] = pool) -> float:
        return values[(name, labels)]

    assert value("warmpool_pool_up") == 1
    assert value("warmpool_provision_attempts_total") >= 1
    assert value("warmpool_provisions_ready_total") >= 1
    assert 0 < value("warmpool_provision_success_ratio") <= 1
    assert value("warmpool_time_to_ready_seconds_count") == value("warmpool_provisions_ready_total")
    assert value("warmpool_time_to_ready_seconds_bucket", pool | {("le", "+Inf")}) >= 1
    for reason in ("no_space", "load_failed", "provision_timeout", "firewall", "keepalive_lost"):
        assert ("warmpool_provision_failures_total", pool | {("reason", reason)}) in values
    assert value("warmpool_active_leases") == 0
    assert value("warmpool_spend_dollars_per_hour", pool | {("tier", "idle")}) > 0
    assert value("warmpool_spend_dollars_per_hour", pool | {("tier", "stopped")}) == 0
    assert value("warmpool_idle_ready_slots") >= 1
    assert value("warmpool_target_slots") >= 1 and value("warmpool_warm_slots") >= 1
    assert value("warmpool_stopped_slots") == 0
    spent = [
        v
        for (name, labels), v in values.items()
        if name == "warmpool_spend_dollars_total" and ("pool", stack.pool) in labels
    ]
    assert len(spent) == 4 and sum(spent) > 0, "a READY slot has cost something by now"
    assert value("warmpool_idle_gpu_hours_total") >= 0
    assert value("warmpool_lease_refusals_total") >= 0
    assert ("warmpool_lease_wait_seconds", pool | {("quantile", "0.95")}) in values

    worker = urlsplit_netloc(stack.worker_metrics_url)
    assert value("warmpool_worker_up", frozenset({("worker", worker)})) == 1
    pings = {
        dict(labels).get("outcome"): v
        for (name, labels), v in values.items()
        if name == "warmpool_keepalive_pings_total"
    }
    assert pings.get("ok", 0) > 0, "the watch counts its keepalive pings"
    assert value("warmpool_keepalive_success_ratio", frozenset()) == pytest.approx(
        pings["ok"] / sum(pings.values())
    )
    temporal = {name for name, _ in values if name.startswith("temporal_")}
    assert "temporal_worker_task_slots_available" in temporal, sorted(temporal)[:20]


async def test_metrics_count_the_gateways_own_leases_and_proxied_traffic(
    stack: GatewayStack,
) -> None:
    """The gateway's counters start at zero with the process, so the test reads differences."""

    async def scrape(
        http: httpx.AsyncClient,
    ) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        answer = await http.get("/metrics")
        assert answer.status_code == 200
        return samples(answer.text)

    def grew(
        before: dict[tuple[str, frozenset[tuple[str, str]]], float],
        after: dict[tuple[str, frozenset[tuple[str, str]]], float],
        name: str,
        **labels: str,
    ) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0) - before.get(key, 0)

    async with stack.http() as http:
        before = await scrape(http)
        grant = await acquire(http)
        base = grant["proxy_path"]
        assert (await http.get(f"{base}system_stats")).status_code == 200
        assert (await http.post(f"{base}prompt", json={"prompt": {}})).status_code == 400
        assert (await http.get(f"/comfy/{uuid.uuid4()}/system_stats")).status_code == 404
        async with websockets.connect(ws_url(stack, f"{base}ws?clientId=gw-m"), proxy=None) as ws:
            await ws.recv()
            during = await scrape(http)
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(ws_url(stack, f"/comfy/{uuid.uuid4()}/ws"), proxy=None)
        await release(http, grant["lease_id"])
        after = await scrape(http)

    pool = stack.pool
    lease_count = "warmpool_gateway_lease_seconds_count"
    granted = grew(before, after, lease_count, pool=pool, outcome="granted")
    granted += grew(before, after, lease_count, pool=pool, outcome="waited")
    assert granted == 1
    assert (
        grew(before, after, "warmpool_gateway_lease_seconds_sum", pool=pool, outcome="granted")
        + grew(before, after, "warmpool_gateway_lease_seconds_sum", pool=pool, outcome="waited")
        > 0
    )
    requests = "warmpool_gateway_proxy_requests_total"
    assert grew(before, after, requests, outcome="2xx") == 1
    assert grew(before, after, requests, outcome="4xx") == 1, "ComfyUI's own 400"
    assert grew(before, after, requests, outcome="unknown_lease") == 1
    assert grew(before, after, "warmpool_gateway_proxy_seconds_count", outcome="2xx") == 1
    sockets = "warmpool_gateway_websockets_total"
    assert grew(before, after, sockets, outcome="opened") == 1
    assert grew(before, after, sockets, outcome="unknown_lease") == 1
    assert during[("warmpool_gateway_websockets_open", frozenset())] == 1
    assert after[("warmpool_gateway_websockets_open", frozenset())] == 0
    assert not any(grant["lease_id"] in str(labels) for _, labels in after), "no lease id label"


def urlsplit_netloc(url: str | None) -> str:
    assert url is not None
    return httpx.URL(url).netloc.decode()


# ---- its own command ------------------------------------------------------------------------


async def test_python_m_warmpool_gateway_serves_and_stops_on_sigterm(stack: GatewayStack) -> None:
    port = free_port()
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": stack.client.service_client.config.target_host,
        "WARMPOOL_TASK_QUEUE": stack.settings.task_queue,
        "WARMPOOL_GATEWAY_PORT": str(port),
        "WARMPOOL_GATEWAY_POOLS": stack.pool,
        "WARMPOOL_SECRETS_DIR": str(stack.settings.secrets_dir),
        "VASTAI_BASE_URL": stack.sim.base_url,
        "ADMIN_API_KEY": ADMIN_KEY,
        "WARMPOOL_LOG_JSON": "true",
    }
    bad = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "warmpool.gateway",
        env={**env, "WARMPOOL_GATEWAY_PORT": "http"},
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    _, err = await bad.communicate()
    assert bad.returncode == 2
    assert err.decode().strip().splitlines() == [
        "gateway: invalid setting WARMPOOL_GATEWAY_PORT: Input should be a valid integer, "
        "unable to parse string as an integer"
    ]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "warmpool.gateway",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    health = await http.get("/healthz")
                    break
                await asyncio.sleep(0.05)
            assert health.json() == {"status": "ok", "pools": [stack.pool]}
            summary = await http.get("/api/proxy/warm-pool", headers=stack.admin())
            assert summary.status_code == 200 and summary.json()["pool"] == stack.pool
            assert (await http.get("/openapi.json")).json()["info"]["title"].endswith("gateway")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells it.
    assert proc.returncode == -signal.SIGTERM
    assert "Application shutdown complete" in out.decode()
    assert ADMIN_KEY not in out.decode()
