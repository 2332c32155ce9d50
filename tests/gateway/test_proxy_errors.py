"""Every way a proxied request can fail, each with its status and a JSON reason.

One stack whose keepalive tolerates 15 missed pings (3 s), so that an instance made sick by a
test stays leased long enough to be asked through the gateway.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from tests.gateway.conftest import GatewayStack, gateway_stack, serve
from vastsim.comfy import ComfyApp
from vastsim.httpserver import Request, Response
from warmpool.gateway.app import create_app
from warmpool.models import PoolConfig
from warmpool.secrets import EnvSecretStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayStack]:
    async with gateway_stack(
        dev_env,
        tmp_path_factory.mktemp("gw-errors"),
        pool_config=PoolConfig(min_ready=1, max_slots=3),
        keepalive_max_failures=15,
        gateway_read_timeout_s=1.0,
    ) as s:
        yield s


async def lease(stack: GatewayStack, http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    answer = await http.post(
        "/api/leases", json={"holder": "eve", "duration_s": 600, "wait_s": 10, **body}
    )
    assert answer.status_code == 201, answer.text
    grant: dict[str, Any] = answer.json()
    return grant


async def instance_of(stack: GatewayStack, grant: dict[str, Any]) -> int:
    view = next(v for v in (await stack.status()).slots if v.index == grant["slot"])
    assert view.instance_id is not None
    return view.instance_id


async def ws_refusal(stack: GatewayStack, lease_id: str) -> tuple[int, dict[str, Any]]:
    url = "ws" + stack.url.removeprefix("http") + f"/comfy/{lease_id}/ws?clientId=x"
    with pytest.raises(websockets.InvalidStatus) as denied:
        await websockets.connect(url, proxy=None)
    response = denied.value.response
    return response.status_code, json.loads(response.body)


async def test_comfy_down_behind_the_portal_is_503_until_it_is_back(stack: GatewayStack) -> None:
    async with stack.http() as http:
        grant = await lease(stack, http)
        instance = await instance_of(stack, grant)
        await stack.sim.kill_comfy(instance)
        down = await http.get(f"{grant['proxy_path']}system_stats")
        assert down.status_code == 503 and down.json()["error"] == "comfy_not_ready"
        assert grant["lease_id"] in down.json()["detail"]
        assert await ws_refusal(stack, grant["lease_id"]) == (503, down.json())
        await stack.sim.revive_comfy(instance)
        back = await http.get(f"{grant['proxy_path']}system_stats")
        assert back.status_code == 200 and "system" in back.json()
        await http.post(f"/api/leases/{grant['lease_id']}/release")


async def test_an_instance_that_does_not_answer_in_time_is_504(
    stack: GatewayStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = ComfyApp._system_stats

    async def stalled(self: ComfyApp, request: Request) -> Response:
        await asyncio.sleep(2.5)
        return await original(self, request)

    async with stack.http() as http:
        grant = await lease(stack, http)
        monkeypatch.setattr(ComfyApp, "_system_stats", stalled)
        slow = await http.get(f"{grant['proxy_path']}system_stats")
        assert slow.status_code == 504 and slow.json()["error"] == "instance_timeout"
        assert "within 1s" in slow.json()["detail"]
        other = await http.get(f"{grant['proxy_path']}queue")
        assert other.status_code == 200, "only the stalled request timed out"
        monkeypatch.undo()
        await http.post(f"/api/leases/{grant['lease_id']}/release")


async def test_an_unreachable_instance_is_503_then_its_lease_ends_with_the_slot(
    stack: GatewayStack,
) -> None:
    async with stack.http() as http:
        grant = await lease(stack, http)
        stack.sim.cloud.instance(await instance_of(stack, grant)).halt()  # sockets closed
        gone = await http.get(f"{grant['proxy_path']}system_stats")
        assert gone.status_code == 503 and gone.json()["error"] == "instance_unreachable"
        assert "ConnectError" in gone.json()["detail"]
        status, body = await ws_refusal(stack, grant["lease_id"])
        assert status == 503 and body["error"] == "instance_unreachable"
        for _ in range(200):  # the keepalive gives up after 15 misses, the pool ends the lease
            later = await http.get(f"{grant['proxy_path']}system_stats")
            if later.status_code == 410:
                break
            await asyncio.sleep(0.1)
        assert later.status_code == 410 and "slot lost" in later.json()["detail"]


async def test_an_expired_lease_is_410(stack: GatewayStack) -> None:
    async with stack.http() as http:
        grant = await lease(stack, http, duration_s=3)  # long enough for a busy CI box
        assert (await http.get(f"{grant['proxy_path']}system_stats")).status_code == 200
        await asyncio.sleep(3.3)
        late = await http.get(f"{grant['proxy_path']}system_stats")
        assert late.status_code == 410 and late.json()["error"] in {"lease_expired", "lease_ended"}
        assert "expired" in late.json()["detail"]
        assert (await ws_refusal(stack, grant["lease_id"]))[0] == 410


async def test_a_gateway_with_the_wrong_instance_secret_gets_502(stack: GatewayStack) -> None:
    wrong = EnvSecretStore({"WARMPOOL_INSTANCE_SECRET": "not-the-workers-secret"})
    server, task, url = await serve(create_app(stack.settings, stack.client, wrong))
    try:
        async with stack.http() as http:
            grant = await lease(stack, http)
        async with httpx.AsyncClient(base_url=url) as other:
            refused = await other.get(f"{grant['proxy_path']}system_stats")
        assert refused.status_code == 502 and refused.json()["error"] == "instance_rejected_token"
        assert "WARMPOOL_INSTANCE_SECRET" in refused.json()["detail"]
        async with stack.http() as http:
            await http.post(f"/api/leases/{grant['lease_id']}/release")
    finally:
        server.should_exit = True
        await task


async def test_a_temporal_that_does_not_answer_gets_503_within_the_deadline(
    stack: GatewayStack,
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept, never answer
        writer.close()

    hung = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    nowhere = await Client.connect(
        f"127.0.0.1:{port}", data_converter=pydantic_data_converter, lazy=True
    )
    settings = stack.settings.model_copy(update={"gateway_temporal_timeout_s": 1.0})
    server, task, url = await serve(create_app(settings, nowhere, stack.secrets))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            loop = asyncio.get_running_loop()
            started = loop.time()
            answer = await http.get(f"/comfy/{uuid.uuid4()}/system_stats")
            assert loop.time() - started < 3
            assert answer.status_code == 503 and answer.json()["error"] == "temporal_timeout"
            started = loop.time()  # a lease is an update, asked again while it goes unanswered
            answer = await http.post("/api/leases", json={"holder": "eve", "duration_s": 600})
            assert loop.time() - started < 3, "the deadline, and a bounded try to tell the pool"
            assert answer.status_code == 503 and answer.json()["error"] == "temporal_timeout"
            generated = answer.json()["request_id"]
            assert generated and f"retry with request_id {generated}" in answer.json()["detail"]
            answer = await http.post(
                "/api/leases", json={"holder": "eve", "duration_s": 600, "request_id": "mine-1"}
            )
            assert answer.status_code == 503 and answer.json()["request_id"] == "mine-1"
            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            assert f'warmpool_pool_up{{pool="{stack.pool}"}} 0.0' in metrics.text
    finally:
        server.should_exit = True
        await task
        hung.close()
