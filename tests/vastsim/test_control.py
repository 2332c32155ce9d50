"""The control API (/_sim), the HF and Civitai token checks, and `python -m vastsim`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from tests.vastsim.conftest import MakeSim
from tests.vastsim.helpers import TOKEN, client, host_port, rent, show, wait_for, wait_running
from vastsim import Simulator

ROOT = Path(__file__).resolve().parents[2]


async def test_state_faults_status_comfy_and_reset(api: httpx.AsyncClient, sim: Simulator) -> None:
    instance_id, _ = await rent(api, label="wp.ctl.0.1")
    async with httpx.AsyncClient(base_url=sim.control_url) as control:
        added = await control.post("/faults", json={"kind": "rate_limit", "endpoint": "user"})
        assert added.json() == {"id": "f1"}
        assert (await api.get("/users/current/")).status_code == 429
        bad = await control.post("/faults", json={"kind": "status"})
        assert bad.status_code == 400
        assert (await control.delete("/faults")).json() == {"success": True}
        assert (await api.get("/users/current/")).status_code == 200

        forced = await control.post(
            f"/instances/{instance_id}", json={"actual_status": "exited", "status_msg": "boom"}
        )
        assert forced.status_code == 200
        instance = await show(api, instance_id)
        assert instance is not None
        assert (instance["actual_status"], instance["status_msg"]) == ("exited", "boom")
        unknown = await control.post("/instances/1", json={"actual_status": "x"})
        assert unknown.status_code == 404
        not_a_field = await control.post(f"/instances/{instance_id}", json={"ports": {}})
        assert not_a_field.status_code == 400
        assert (await control.delete(f"/instances/{instance_id}")).json() == {"success": True}
        restored = await show(api, instance_id)
        assert restored is not None and restored["actual_status"] != "exited"
        assert restored["status_msg"] != "boom"
        assert (await control.delete("/instances/1")).status_code == 404

        state = (await control.get("/state")).json()
        (info,) = state["instances"]
        assert info["id"] == instance_id and info["label"] == "wp.ctl.0.1"
        assert info["destroyed"] is False and len(state["offers"]) == 40
        assert state["call_counts"] == {"bundles": 1, "create": 1, "user": 2, "show": 2}
        assert [call["endpoint_key"] for call in state["calls"]][:2] == ["bundles", "create"]
        assert sim.api_key not in json.dumps(state) and TOKEN not in json.dumps(state)

        assert (await control.post("/reset")).json() == {"success": True}
        assert (await control.get("/state")).json()["instances"] == []
    assert sim.calls == [] and sim.instances() == []


async def test_kill_and_revive_over_http(api: httpx.AsyncClient, sim: Simulator) -> None:
    instance = await wait_running(api, (await rent(api))[0])
    url = f"http://127.0.0.1:{host_port(instance)}/system_stats"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient() as http:

        async def status_is(code: int) -> bool:
            return (await http.get(url, headers=auth)).status_code == code

        await wait_for(lambda: status_is(200))
        comfy = f"{sim.control_url}/instances/{instance['id']}/comfy"
        assert (await http.post(comfy, json={"action": "kill"})).status_code == 200
        assert await status_is(502)
        assert (await http.post(comfy, json={"action": "revive"})).status_code == 200
        assert await status_is(200)
        assert (await http.post(comfy, json={"action": "explode"})).status_code == 400


async def test_hugging_face_whoami(sim: Simulator) -> None:
    async with httpx.AsyncClient(base_url=sim.hf_base_url) as hf:
        good = await hf.get(
            "/api/whoami-v2", headers={"Authorization": "Bearer hf_simvalidtoken000000000000000000"}
        )
        assert good.status_code == 200
        assert good.json()["auth"]["accessToken"]["role"] == "read"
        for headers in ({}, {"Authorization": "Bearer hf_wrong"}):
            bad = await hf.get("/api/whoami-v2", headers=headers)
            assert bad.status_code == 401
            assert bad.json() == {"error": "Invalid credentials in Authorization header"}
    assert [c.endpoint_key for c in sim.calls] == ["hf_whoami"] * 3


async def test_civitai_me(sim: Simulator) -> None:
    async with httpx.AsyncClient(base_url=sim.civitai_base_url) as civitai:
        by_header = await civitai.get(
            "/api/v1/me", headers={"Authorization": "Bearer sim-civitai-token"}
        )
        by_query = await civitai.get("/api/v1/me", params={"token": "sim-civitai-token"})
        assert by_header.status_code == by_query.status_code == 200
        assert by_header.json()["username"] == "sim" and by_header.json()["status"] == "active"
        bad = await civitai.get("/api/v1/me", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json() == {"error": "Unauthorized"}


async def test_standalone_process() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vastsim", "--api-key", "proc-key", "--speed", "20",
        "--offers", "5", cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        urls = json.loads(await asyncio.wait_for(process.stdout.readline(), 10))
        assert set(urls) == {"base_url", "api_key", "hf_base_url", "civitai_base_url",
                             "control_url"}  # fmt: skip
        assert urls["api_key"] == "proc-key" and urls["base_url"].endswith("/api/v0")
        headers = {"Authorization": "Bearer proc-key"}
        async with httpx.AsyncClient(base_url=urls["base_url"], headers=headers) as api:
            offers = (await api.post("/bundles/", json={})).json()["offers"]
            assert len(offers) == 5
            assert (await api.get("/users/current/")).json()["api_key"] == "proc-key"
            state = (await api.get(f"{urls['control_url']}/state")).json()
            assert state["call_counts"] == {"bundles": 1, "user": 1}
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_python_api_before_start_is_a_clear_error() -> None:
    simulator = Simulator()
    with pytest.raises(RuntimeError, match="not started"):
        _ = simulator.base_url
    async with simulator, client(simulator) as api:
        assert (await api.get("/users/current/")).status_code == 200


async def test_python_api_forces_status_and_caps_the_call_log(make_sim: MakeSim) -> None:
    sim = await make_sim(call_log_limit=2)
    async with client(sim) as api:
        instance_id, _ = await rent(api)
        sim.set_instance_status(instance_id, actual_status=None, cur_state="stopped")
        instance = await show(api, instance_id)
        assert instance is not None
        assert (instance["actual_status"], instance["cur_state"]) == (None, "stopped")
        with pytest.raises(ValueError, match="cannot force"):
            sim.set_instance_status(instance_id, label="x")
        sim.clear_instance_status(instance_id)
        instance = await show(api, instance_id)
        assert instance is not None and instance["cur_state"] == "running"
    assert [c.endpoint_key for c in sim.calls] == ["show", "show"]
    assert sim.call_counts == {"bundles": 1, "create": 1, "show": 2}
