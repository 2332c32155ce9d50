"""Every injectable fault, observed the way a client would observe it: over HTTP and TCP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tests.vastsim.conftest import MakeSim
from tests.vastsim.helpers import TOKEN, good_offer, host_port, rent, show, wait_for, wait_running
from vastsim import Fault, Simulator

AUTH = {"Authorization": f"Bearer {TOKEN}"}
PAST_READY = 0.25  # comfortably after FAST's running (0.09 s) and ready (0.15 s) times


async def settled(api: httpx.AsyncClient, instance_id: int) -> dict[str, Any]:
    await asyncio.sleep(PAST_READY)
    instance = await show(api, instance_id)
    assert instance is not None
    return instance


async def portal_status(instance: dict[str, Any]) -> int:
    async with httpx.AsyncClient() as http:
        url = f"http://127.0.0.1:{host_port(instance)}/system_stats"
        return (await http.get(url, headers=AUTH)).status_code


# ---- instance faults ----


@pytest.mark.parametrize(
    ("fault", "actual", "message"),
    [
        (Fault(kind="no_space"), "loading", "no space left on device"),
        (Fault(kind="oci_failed"), "created", ": OCI runtime create failed:"),
        (Fault(kind="pull_failed"), "loading", "pull access denied"),
        (Fault(kind="status", value="exited"), "exited", None),
        (Fault(kind="status:unknown"), "unknown", None),
        (Fault(kind="status", value="offline"), "offline", None),
        (Fault(kind="status", value="load_failed"), "load_failed", None),
    ],
)
async def test_fatal_instance_faults_never_run(
    api: httpx.AsyncClient, sim: Simulator, fault: Fault, actual: str, message: str | None
) -> None:
    sim.add_fault(fault)
    instance_id, _ = await rent(api)
    instance = await settled(api, instance_id)
    assert instance["actual_status"] == actual and "ports" not in instance
    if message:
        assert message in instance["status_msg"]
    assert sim.instances()[0].faults == [fault.kind]


async def test_outbid_shows_the_stopped_triple(api: httpx.AsyncClient, sim: Simulator) -> None:
    sim.add_fault(Fault(kind="outbid"))
    instance = await settled(api, (await rent(api))[0])
    states = {instance[k] for k in ("actual_status", "cur_state", "intended_status", "next_state")}
    assert states == {"stopped"}


async def test_ports_never_and_ports_late(api: httpx.AsyncClient, sim: Simulator) -> None:
    sim.add_fault(Fault(kind="ports_never", count=1))
    never_id, _ = await rent(api)
    never = await settled(api, never_id)
    assert never["actual_status"] == "running"
    assert never["ports"] is None and never["direct_port_start"] == -1
    sim.add_fault(Fault(kind="ports_late", seconds=0.3))
    late_id, _ = await rent(api)

    async def running() -> dict[str, Any] | None:
        instance = await show(api, late_id)
        return instance if instance and instance["actual_status"] == "running" else None

    first = await wait_for(running)
    assert "ports" not in first and first["direct_port_start"] == -1
    assert host_port(await wait_running(api, late_id)) > 0


async def test_comfy_never_ready_keeps_the_placeholder(
    api: httpx.AsyncClient, sim: Simulator
) -> None:
    sim.add_fault(Fault(kind="comfy_never_ready"))
    instance = await wait_running(api, (await rent(api))[0])
    await asyncio.sleep(0.1)
    assert await portal_status(instance) == 502


async def test_comfy_dies_after(api: httpx.AsyncClient, sim: Simulator) -> None:
    sim.add_fault(Fault(kind="comfy_dies_after", seconds=0.3))
    instance = await wait_running(api, (await rent(api))[0])

    async def status_is(code: int) -> bool:
        return await portal_status(instance) == code

    await wait_for(lambda: status_is(200))
    await wait_for(lambda: status_is(502))
    assert not sim.instances()[0].comfy_ready


async def test_firewall_makes_connects_time_out(api: httpx.AsyncClient, sim: Simulator) -> None:
    sim.add_fault(Fault(kind="firewall"))
    instance = await wait_running(api, (await rent(api))[0])
    await asyncio.sleep(0.1)  # past ComfyUI's ready time: still nothing gets through
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", host_port(instance)), 0.5)
    assert time.monotonic() - started >= 0.45


async def test_comfy_mode_scoped_to_one_offer(api: httpx.AsyncClient, sim: Simulator) -> None:
    offers = (await api.post("/bundles/", json={"rentable": {"eq": True}})).json()["offers"]
    sim.add_fault(Fault(kind="comfy_mode", value="bare", offer_id=offers[0]["id"]))
    bare_id, _ = await rent(api, offers[0]["id"])
    portal_id, _ = await rent(api, offers[1]["id"])
    bare, portal = await asyncio.gather(settled(api, bare_id), settled(api, portal_id))
    async with httpx.AsyncClient() as http:
        no_token = await http.get(f"http://127.0.0.1:{host_port(bare)}/system_stats")
        assert no_token.status_code == 200
    assert await portal_status(portal) == 200
    modes = {info.id: info.comfy_mode for info in sim.instances()}
    assert modes == {bare_id: "bare", portal_id: "portal"}


async def test_prompt_error_fails_every_prompt_on_that_instance_only(
    api: httpx.AsyncClient, sim: Simulator
) -> None:
    sim.add_fault(Fault(kind="prompt_error", count=1))
    failing_id, _ = await rent(api)
    healthy_id, _ = await rent(api)
    failing, healthy = await asyncio.gather(settled(api, failing_id), settled(api, healthy_id))
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
    }

    async def run_prompt(instance: dict[str, Any]) -> dict[str, Any]:
        base = f"http://127.0.0.1:{host_port(instance)}"
        async with httpx.AsyncClient(base_url=base, headers=AUTH) as http:
            queued = await http.post("/prompt", json={"prompt": graph, "client_id": "t"})
            assert queued.status_code == 200, "a run-time failure is still accepted by POST"
            prompt_id = queued.json()["prompt_id"]

            async def entry() -> dict[str, Any] | None:
                found: dict[str, Any] | None = (
                    (await http.get(f"/history/{prompt_id}")).json().get(prompt_id)
                )
                return found

            result: dict[str, Any] = await wait_for(entry)
            return result

    bad, good = await run_prompt(failing), await run_prompt(healthy)
    assert bad["status"]["status_str"] == "error" and bad["outputs"] == {}
    kind, data = bad["status"]["messages"][-1]
    assert kind == "execution_error"
    assert data["node_id"] == "1" and data["exception_type"] == "torch.OutOfMemoryError"
    assert good["status"]["status_str"] == "success"
    faults = {i.id: i.faults for i in sim.instances()}
    assert faults == {failing_id: ["prompt_error"], healthy_id: []}


async def test_pull_failed_scoped_by_image(api: httpx.AsyncClient, sim: Simulator) -> None:
    sim.add_fault(Fault(kind="pull_failed", image="private/missing:1"))
    bad_id, _ = await rent(api, image="private/missing:1")
    good_id, _ = await rent(api)
    bad, good = await asyncio.gather(settled(api, bad_id), settled(api, good_id))
    assert "pull access denied" in bad["status_msg"] and good["actual_status"] == "running"


async def test_count_and_probability(make_sim: MakeSim) -> None:
    sim = await make_sim(offers=60, seed=7)
    once = sim.add_fault(Fault(kind="no_space", count=1))
    sim.add_fault(Fault(kind="status", value="exited", probability=0.5))
    assert once == "f1"
    async with httpx.AsyncClient(
        base_url=sim.base_url, headers={"Authorization": f"Bearer {sim.api_key}"}
    ) as api:
        offers = (await api.post("/bundles/", json={"rentable": {"eq": True}})).json()["offers"]
        for offer in offers[:40]:
            await rent(api, offer["id"])
    kinds = [info.faults for info in sim.instances()]
    assert sum("no_space" in k for k in kinds) == 1
    exited = sum("status" in k for k in kinds)
    assert 8 <= exited <= 32  # seeded RNG: about half, never all or none


def test_fault_validation() -> None:
    assert Fault.model_validate({"kind": "status:offline"}).value == "offline"
    with pytest.raises(ValidationError):
        Fault(kind="status")
    with pytest.raises(ValidationError):
        Fault(kind="ports_late")
    with pytest.raises(ValidationError):
        Fault(kind="server_error", status_code=418)
    with pytest.raises(ValidationError):
        Fault.model_validate({"kind": "rate_limit", "surprise": 1})


# ---- API faults ----


async def test_rate_limit_variants(api: httpx.AsyncClient, sim: Simulator) -> None:
    sim.add_fault(Fault(kind="rate_limit", endpoint="show", value="text", count=1))
    text = await api.get("/instances/1/")
    assert text.status_code == 429 and "retry-after" not in text.headers
    assert text.text == "API requests too frequent endpoint threshold=2.0"
    sim.add_fault(Fault(kind="rate_limit", endpoint="create", count=1))
    create = await api.put(f"/asks/{(await good_offer(api))['id']}/", json={"image": "x"})
    assert create.json() == {"detail": "API requests too frequent endpoint threshold=4.5"}
    sim.add_fault(Fault(kind="rate_limit", endpoint="destroy", count=1, with_retry_after=1.5))
    destroy = await api.delete("/instances/1/")
    assert destroy.status_code == 429 and destroy.headers["retry-after"] == "1.5"
    assert destroy.json()["error"] == "rate_limit_exceeded"
    assert (await api.get("/instances/1/")).status_code == 200  # count used up
    calls = [(c.endpoint_key, c.status) for c in sim.calls]
    assert calls == [("show", 429), ("bundles", 200), ("create", 429), ("destroy", 429),
                     ("show", 200)]  # fmt: skip


@pytest.mark.parametrize(
    ("fault", "status", "json_body"),
    [
        (Fault(kind="server_error"), 500, True),
        (Fault(kind="server_error", status_code=502), 502, False),
        (Fault(kind="bad_key"), 401, True),
        (Fault(kind="success_false"), 200, True),
        (Fault(kind="non_json"), 200, False),
        (Fault(kind="non_json", status_code=503), 503, False),
    ],
)
async def test_answering_faults(
    api: httpx.AsyncClient, sim: Simulator, fault: Fault, status: int, json_body: bool
) -> None:
    sim.add_fault(fault)
    response = await api.get("/users/current/")
    assert response.status_code == status
    if json_body:
        assert response.json()["success"] is False
    else:
        assert response.headers["content-type"].startswith("text/html")
        with pytest.raises(ValueError):
            response.json()


async def test_slow(api: httpx.AsyncClient, sim: Simulator) -> None:
    sim.add_fault(Fault(kind="slow", seconds=0.3, endpoint="user"))
    started = time.monotonic()
    assert (await api.get("/users/current/")).status_code == 200
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("variant", ["oops", "missing"])
async def test_malformed_list(api: httpx.AsyncClient, sim: Simulator, variant: str) -> None:
    await rent(api)
    sim.add_fault(Fault(kind="malformed_list", value=variant))
    url = sim.base_url.replace("/api/v0", "/api/v1") + "/instances/"
    body = (await api.get(url)).json()
    assert body.get("instances", "absent") == ("oops" if variant == "oops" else "absent")


async def test_list_lag_hides_a_new_instance(api: httpx.AsyncClient, sim: Simulator) -> None:
    sim.add_fault(Fault(kind="list_lag", seconds=0.3))
    instance_id, _ = await rent(api)
    url = sim.base_url.replace("/api/v0", "/api/v1") + "/instances/"
    assert await show(api, instance_id) is None
    assert (await api.get(url)).json()["total_instances"] == 0
    assert await wait_for(lambda: show(api, instance_id))
    assert (await api.get(url)).json()["total_instances"] == 1


async def test_create_fail_with_contract(api: httpx.AsyncClient, sim: Simulator) -> None:
    sim.add_fault(Fault(kind="create_fail_with_contract"))
    offer = await good_offer(api)
    response = await api.put(f"/asks/{offer['id']}/", json={"image": "x", "disk": 50})
    body = response.json()
    assert response.status_code == 400
    assert body["success"] is False and body["error"] == "invalid_price"
    instance = await show(api, body["new_contract"])
    assert instance is not None and instance["cur_state"] == "stopped"
    assert (await api.delete(f"/instances/{body['new_contract']}/")).json() == {"success": True}


@pytest.mark.parametrize(("variant", "status", "error"), [(None, 404, "invalid_args"),
                                                          ("410", 410, "no_such_ask")])  # fmt: skip
async def test_vanished_offer(
    api: httpx.AsyncClient, sim: Simulator, variant: str | None, status: int, error: str
) -> None:
    offer = await good_offer(api)
    sim.add_fault(Fault(kind="vanished_offer", value=variant, offer_id=offer["id"]))
    response = await api.put(f"/asks/{offer['id']}/", json={"image": "x", "disk": 50})
    assert response.status_code == status
    body = response.json()
    assert body["error"] == error and "no_such_ask" in body["error"] + body["msg"]
    assert sim.instances() == []


async def test_gone_variants(api: httpx.AsyncClient, sim: Simulator) -> None:
    instance_id, _ = await rent(api)
    await api.delete(f"/instances/{instance_id}/")
    sim.add_fault(Fault(kind="destroy_not_found_variant"))
    sim.add_fault(Fault(kind="show_404"))
    again = await api.delete(f"/instances/{instance_id}/")
    assert again.status_code == 404
    assert again.json() == {"error": "not_found", "msg": "Instance not found"}
    gone = await api.get(f"/instances/{instance_id}/")
    assert gone.status_code == 404


async def test_destroy_delay(api: httpx.AsyncClient, sim: Simulator) -> None:
    sim.add_fault(Fault(kind="destroy_delay", seconds=0.3))
    instance_id, _ = await rent(api)
    assert (await api.delete(f"/instances/{instance_id}/")).json() == {"success": True}
    lingering = await show(api, instance_id)
    assert lingering is not None
    assert (lingering["cur_state"], lingering["next_state"]) == ("stopped", "unloaded")
    assert (await api.delete(f"/instances/{instance_id}/")).status_code == 200

    async def gone() -> bool:
        return await show(api, instance_id) is None

    await wait_for(gone)


async def test_default_fault_mix(make_sim: MakeSim) -> None:
    sim = await make_sim(fault_mix="default")
    async with httpx.AsyncClient() as http:
        state = (await http.get(f"{sim.control_url}/state")).json()
    kinds = {fault["kind"] for fault in state["faults"]}
    assert kinds == {"no_space", "status", "comfy_never_ready", "rate_limit"}
    assert all(0 < fault["probability"] < 0.1 for fault in state["faults"])
