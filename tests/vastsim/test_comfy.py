"""Each running instance's ComfyUI endpoint: portal gating, bare mode, and the ComfyUI API."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.vastsim.conftest import MakeSim
from tests.vastsim.helpers import TOKEN, client, host_port, rent, wait_for, wait_running
from vastsim import Simulator

FAST_GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "wp"}},
}
TEXT_GRAPH = {
    "1": {"class_type": "PrimitiveString", "inputs": {"value": "hello warm pool"}},
    "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


async def running_instance(sim: Simulator) -> dict[str, Any]:
    async with client(sim) as api:
        instance_id, _ = await rent(api)
        return await wait_running(api, instance_id)


async def ready_comfy(sim: Simulator) -> str:
    """The direct (18188, no token) URL of a running instance whose ComfyUI is up."""
    base = f"http://127.0.0.1:{host_port(await running_instance(sim), '18188/tcp')}"
    async with httpx.AsyncClient() as http:

        async def up() -> bool:
            try:
                return (await http.get(f"{base}/system_stats")).status_code == 200
            except httpx.ConnectError:
                return False

        await wait_for(up)
    return base


async def test_portal_401_then_502_placeholder_then_200(make_sim: MakeSim) -> None:
    sim = await make_sim(comfy_boot_s=0.6)
    instance = await running_instance(sim)
    url = f"http://127.0.0.1:{host_port(instance)}/system_stats"
    async with httpx.AsyncClient() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            denied = await http.get(url, headers=headers)
            assert denied.status_code == 401
            assert denied.headers["www-authenticate"].startswith("Basic realm=")
        booting = await http.get(url, headers=AUTH)
        assert refused(host_port(instance, "18188/tcp"))  # direct ComfyUI: not up yet
        assert booting.status_code == 502
        assert booting.headers["x-portal-placeholder"] == "true"
        assert booting.headers["content-type"].startswith("text/html")

        async def ready() -> httpx.Response | None:
            response = await http.get(url, headers=AUTH)
            return response if response.status_code == 200 else None

        stats = (await wait_for(ready)).json()
        assert stats["system"]["comfyui_version"] and stats["devices"][0]["type"] == "cuda"
        by_query = await http.get(url, params={"token": TOKEN})
        by_cookie = await http.get(url, headers={"Cookie": f"other=1; token={TOKEN}"})
        assert by_query.status_code == by_cookie.status_code == 200
        assert (await http.get(url, params={"token": "nope"})).status_code == 401


async def test_no_token_in_env_means_a_random_one(sim: Simulator) -> None:
    async with client(sim) as api:
        instance_id, _ = await rent(api, env={"-p 8188:8188": "1"})
        instance = await wait_running(api, instance_id)
    async with httpx.AsyncClient() as http:
        url = f"http://127.0.0.1:{host_port(instance)}/system_stats"
        await asyncio.sleep(0.1)
        assert (await http.get(url)).status_code == 401
        assert (await http.get(url, headers=AUTH)).status_code == 401


async def test_bare_refuses_until_ready_then_answers_without_token(make_sim: MakeSim) -> None:
    sim = await make_sim(comfy_mode="bare", comfy_boot_s=0.4)
    instance = await running_instance(sim)
    port = host_port(instance)
    assert refused(port)
    async with httpx.AsyncClient() as http:

        async def answered() -> httpx.Response | None:
            try:
                return await http.get(f"http://127.0.0.1:{port}/api/system_stats")
            except httpx.ConnectError:
                return None

        response = await wait_for(answered)
    assert response.status_code == 200 and "system" in response.json()


async def test_kill_and_revive(sim: Simulator) -> None:
    instance = await running_instance(sim)
    portal, direct = host_port(instance), host_port(instance, "18188/tcp")
    await ready_comfy(sim)
    await sim.kill_comfy(instance["id"])
    async with httpx.AsyncClient() as http:
        dead = await http.get(f"http://127.0.0.1:{portal}/system_stats", headers=AUTH)
        assert dead.status_code == 502 and dead.headers["x-portal-placeholder"] == "true"
        assert refused(direct)
        await sim.revive_comfy(instance["id"])
        alive = await http.get(f"http://127.0.0.1:{direct}/system_stats")
        assert alive.status_code == 200
    assert sim.instances()[0].comfy_ready


async def test_prompt_runs_and_lands_in_history(sim: Simulator) -> None:
    base = await ready_comfy(sim)
    async with httpx.AsyncClient(base_url=base) as http:
        queued = await http.post("/prompt", json={"prompt": FAST_GRAPH, "client_id": "c1"})
        assert queued.status_code == 200
        answer = queued.json()
        assert answer["number"] == 0 and answer["node_errors"] == {}
        prompt_id = answer["prompt_id"]

        async def finished() -> dict[str, Any]:
            entries: dict[str, Any] = (await http.get(f"/history/{prompt_id}")).json()
            return entries

        entry = (await wait_for(finished))[prompt_id]
        assert entry["status"]["status_str"] == "success" and entry["status"]["completed"]
        assert entry["prompt"][1] == prompt_id and entry["prompt"][4] == ["3"]
        image = entry["outputs"]["3"]["images"][0]
        assert image["filename"].startswith("wp_") and image["type"] == "output"
        mine = await http.post("/api/prompt", json={"prompt": TEXT_GRAPH, "prompt_id": "mine-1"})
        assert mine.json()["prompt_id"] == "mine-1" and mine.json()["number"] == 1
        text = (await wait_for(lambda: finished_entry(http, "mine-1")))["outputs"]
        assert text == {"2": {"text": ["hello warm pool"]}}
        assert set((await http.get("/history")).json()) == {prompt_id, "mine-1"}
        assert list((await http.get("/history", params={"max_items": 1})).json()) == ["mine-1"]
        assert (await http.get("/history/unknown")).json() == {}
        assert (await http.get("/queue")).json() == {"queue_running": [], "queue_pending": []}
        assert (await http.get("/prompt")).json() == {"exec_info": {"queue_remaining": 0}}


async def finished_entry(http: httpx.AsyncClient, prompt_id: str) -> dict[str, Any] | None:
    entry: dict[str, Any] | None = (await http.get(f"/history/{prompt_id}")).json().get(prompt_id)
    return entry


async def test_prompt_errors_have_comfyui_shapes(sim: Simulator) -> None:
    base = await ready_comfy(sim)
    async with httpx.AsyncClient(base_url=base) as http:
        missing = await http.post("/prompt", json={"client_id": "x"})
        assert missing.status_code == 400
        assert (
            missing.json()["error"]["type"] == "no_prompt" and missing.json()["node_errors"] == {}
        )
        no_outputs = await http.post("/prompt", json={"prompt": {"1": FAST_GRAPH["1"]}})
        assert no_outputs.status_code == 400
        assert no_outputs.json()["error"]["type"] == "prompt_no_outputs"
        no_class = await http.post("/prompt", json={"prompt": {"1": {"inputs": {}}}})
        assert no_class.json()["error"]["type"] == "invalid_prompt"
        for body in (b"{broken", b"", b'{"prompt": [1, 2]}'):
            crash = await http.post("/prompt", content=body)
            assert crash.status_code == 500
            assert crash.headers["content-type"].startswith("text/plain")
        assert (await http.get("/nope")).status_code == 404
        assert (await http.get("/interrupt")).status_code == 404
        assert (await http.get("/features")).json()["max_upload_size"] == 104857600
        info = (await http.get("/object_info")).json()
        assert "SaveImage" in info and info["SaveImage"]["output_node"] is True
        assert (await http.get("/object_info/NoSuchNode")).json() == {}
        assert (await http.post("/free", json={"unload_models": True})).status_code == 200


async def events_until_done(ws: ClientConnection, prompt_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), 3))
        events.append(event)
        data = event["data"]
        if event["type"] == "executing" and data["node"] is None and data["prompt_id"] == prompt_id:
            return events


async def test_websocket_events_reach_the_matching_client_only(sim: Simulator) -> None:
    base = await ready_comfy(sim)
    ws_base = base.replace("http://", "ws://")
    async with (
        connect(f"{ws_base}/ws?clientId=c1") as mine,
        connect(f"{ws_base}/ws?clientId=other") as other,
        httpx.AsyncClient(base_url=base) as http,
    ):
        hello = json.loads(await mine.recv())
        assert hello == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "c1"},
        }
        await other.recv()
        answer = await http.post("/prompt", json={"prompt": FAST_GRAPH, "client_id": "c1"})
        prompt_id = answer.json()["prompt_id"]
        kinds = [event["type"] for event in await events_until_done(mine, prompt_id)]
        assert kinds.index("execution_start") < kinds.index("executed")
        assert kinds.index("executed") < kinds.index("execution_success")
        assert kinds[-1] == "executing" and "status" in kinds
        await asyncio.sleep(0.05)
        seen_by_other = []
        while True:
            try:
                seen_by_other.append(json.loads(await asyncio.wait_for(other.recv(), 0.1)))
            except TimeoutError:
                break
        assert seen_by_other and {e["type"] for e in seen_by_other} == {"status"}
        await mine.send(json.dumps({"type": "feature_flags", "data": {}}))


async def test_websocket_through_the_portal_needs_the_token(sim: Simulator) -> None:
    instance = await running_instance(sim)
    await ready_comfy(sim)
    url = f"ws://127.0.0.1:{host_port(instance)}/ws?clientId=p1"
    with pytest.raises(Exception, match="401"):
        async with connect(url):
            pass
    async with connect(url, additional_headers=AUTH) as ws:
        assert json.loads(await ws.recv())["data"]["sid"] == "p1"
        await ws.send(json.dumps({"type": "feature_flags", "data": {}}))
        assert json.loads(await ws.recv())["type"] == "feature_flags"


async def test_queue_delete_and_interrupt(make_sim: MakeSim) -> None:
    sim = await make_sim(prompt_s=3.0)
    base = await ready_comfy(sim)
    async with httpx.AsyncClient(base_url=base) as http:
        first = (await http.post("/prompt", json={"prompt": FAST_GRAPH})).json()["prompt_id"]
        second = (await http.post("/prompt", json={"prompt": TEXT_GRAPH})).json()["prompt_id"]
        await asyncio.sleep(0.05)
        queue = (await http.get("/queue")).json()
        assert [item[1] for item in queue["queue_running"]] == [first]
        assert [item[1] for item in queue["queue_pending"]] == [second]
        assert (await http.get("/prompt")).json()["exec_info"]["queue_remaining"] == 2
        assert (await http.get(f"/history/{first}")).json() == {}  # running: not yet in history
        await http.post("/queue", json={"delete": [second]})
        assert (await http.get("/queue")).json()["queue_pending"] == []
        await http.post("/interrupt", json={"prompt_id": "someone-else"})
        await asyncio.sleep(0.05)
        assert (await http.get(f"/history/{first}")).json() == {}
        await http.post("/interrupt", json={})
        entry = await wait_for(lambda: finished_entry(http, first), within=1.0)
        assert entry["status"]["status_str"] == "error" and not entry["status"]["completed"]
        assert entry["status"]["messages"][-1][0] == "execution_interrupted"
        assert (await http.get(f"/history/{second}")).json() == {}
        assert (await http.post("/queue", content=b"nope")).status_code == 500
