"""Create, show, list, label, stop, destroy, logs and the account: the shapes of vastai-api.md."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest

from tests.vastsim.conftest import MakeSim
from tests.vastsim.helpers import (
    TOKEN,
    client,
    good_offer,
    host_port,
    rent,
    show,
    wait_for,
    wait_running,
)
from vastsim import Simulator


def v1(sim: Simulator) -> str:
    return sim.base_url.replace("/api/v0", "/api/v1") + "/instances/"


async def list_v1(api: httpx.AsyncClient, sim: Simulator, **params: Any) -> httpx.Response:
    encoded = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    return await api.get(v1(sim), params=encoded)


async def test_create_answers_new_contract_and_no_id(api: httpx.AsyncClient) -> None:
    offer = await good_offer(api)
    response = await api.put(
        f"/asks/{offer['id']}/",
        json={
            "client_id": "me",
            "image": "img:1",
            "disk": 250,
            "label": "wp.a.0.1",
            "env": {"-p 8188:8188": "1"},
            "runtype": "jupyter_direct",
            "onstart": "entrypoint.sh",
            "cancel_unavail": True,
            "target_state": "running",
        },
    )
    body = response.json()
    assert response.status_code == 200
    assert set(body) == {"success", "new_contract", "instance_api_key"}
    assert body["success"] is True
    assert 10_000_000 <= body["new_contract"] <= 99_999_999


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"image": "x", "disk": 10, "env": "-p 8188:8188"}, "invalid_args"),
        ({"image": "x", "disk": 4}, "invalid_args"),
        ({"image": "x", "disk": 10, "label": "l" * 257}, "invalid_args"),
        ({"disk": 10}, "invalid_args"),
        ({"image": "x", "disk": 10, "price": 500}, "invalid_price"),
    ],
)
async def test_create_validation(api: httpx.AsyncClient, body: dict[str, Any], error: str) -> None:
    offer = await good_offer(api)
    response = await api.put(f"/asks/{offer['id']}/", json=body)
    assert response.status_code == 400
    answer = response.json()
    assert answer["success"] is False and answer["error"] == error
    assert answer["ask_id"] == offer["id"]


async def test_create_on_unknown_offer_is_404_no_such_ask(api: httpx.AsyncClient) -> None:
    response = await api.put("/asks/123/", json={"image": "x", "disk": 10})
    assert response.status_code == 404
    assert response.json() == {
        "success": False,
        "error": "invalid_args",
        "msg": "error 404/3603: no_such_ask Instance type by id 123 is not available.",
        "ask_id": 123,
    }


async def test_status_clock_and_ports(make_sim: MakeSim) -> None:
    async with client(await make_sim(provision_s=0.12, created_s=0.12, loading_s=0.12)) as api:
        await check_clock_and_ports(api)


async def check_clock_and_ports(api: httpx.AsyncClient) -> None:
    instance_id, _ = await rent(api, label="wp.clock.0.1")
    first = await show(api, instance_id)
    assert first is not None
    seen: list[str | None] = [first["actual_status"]]
    assert first["actual_status"] is None and "ports" not in first
    assert first["direct_port_start"] == -1 and first["direct_port_end"] == -1
    assert first["intended_status"] == first["cur_state"] == first["next_state"] == "running"

    async def observe() -> dict[str, Any] | None:
        instance = await show(api, instance_id)
        assert instance is not None
        if seen[-1:] != [instance["actual_status"]]:
            seen.append(instance["actual_status"])
        if instance["actual_status"] != "running":
            assert "ports" not in instance
            return None
        return instance

    instance = await wait_for(observe, interval=0.01)
    assert seen == [None, "created", "loading", "running"]
    ports = instance["ports"]
    assert set(ports) == {"8188/tcp", "18188/tcp"}
    entry = ports["8188/tcp"]
    assert entry[0]["HostIp"] == "0.0.0.0" and isinstance(entry[0]["HostPort"], str)
    hosts = [host_port(instance, key) for key in ports]
    assert instance["direct_port_start"] <= min(hosts) <= max(hosts) <= instance["direct_port_end"]
    assert instance["status_msg"] == "success, running vastai/comfyui:latest/ssh"
    assert instance["public_ipaddr"] == "127.0.0.1\n"  # as the real API does: clients strip
    assert instance["label"] == "wp.clock.0.1"
    assert instance["image_uuid"] == "vastai/comfyui:latest"
    assert isinstance(instance["start_date"], float)


async def test_extra_env_is_pairs_and_hides_secrets(api: httpx.AsyncClient) -> None:
    secrets = {
        "OPEN_BUTTON_TOKEN": TOKEN,
        "HF_TOKEN": "hf_abc",
        "CIVITAI_TOKEN": "c1",
        "MY_API_KEY": "k",
        "WEB_PASSWORD": "p",
    }
    env = {"-p 8188:8188": "1", **secrets, "MODE": "fast"}
    instance_id, _ = await rent(api, env=env)
    instance = await show(api, instance_id)
    assert instance is not None
    pairs = dict(instance["extra_env"])
    assert pairs == {"-p 8188:8188": "1", **dict.fromkeys(secrets, "***"), "MODE": "fast"}
    assert all(isinstance(pair, list) and len(pair) == 2 for pair in instance["extra_env"])
    assert TOKEN not in json.dumps(instance)


async def test_destroy_then_show_null_and_destroy_again_404(
    api: httpx.AsyncClient, sim: Simulator
) -> None:
    instance_id, _ = await rent(api)
    running = await wait_running(api, instance_id)
    port = host_port(running)
    first = await api.request("DELETE", f"/instances/{instance_id}/", json={})
    assert first.status_code == 200 and first.json() == {"success": True}
    assert (await api.get(f"/instances/{instance_id}/")).json() == {"instances": None}
    again = await api.delete(f"/instances/{instance_id}/")
    assert again.status_code == 404
    assert again.json() == {
        "success": False,
        "error": "no_such_instance",
        "msg": f"Instance {instance_id} not found.",
    }
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 1):
        pass
    (info,) = sim.instances()
    assert info.destroyed and info.destroyed_at is not None and sim.live_instances() == []


async def test_ssh_fields(make_sim: MakeSim) -> None:
    async with client(await make_sim()) as api:
        plain = await wait_running(api, (await rent(api))[0])
    assert plain["ssh_host"] == "127.0.0.1" and "22/tcp" not in plain["ports"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", plain["ssh_port"]), 1)
    async with client(await make_sim(ssh_host="ssh.example", ssh_port=2222)) as api:
        with_sshd = await wait_running(api, (await rent(api))[0])
    assert (with_sshd["ssh_host"], with_sshd["ssh_port"]) == ("ssh.example", 2222)
    assert with_sshd["ports"]["22/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": "2222"}]


async def test_show_unknown_is_null_and_bad_key_is_401(
    api: httpx.AsyncClient, sim: Simulator
) -> None:
    assert (await api.get("/instances/12345678/")).json() == {"instances": None}
    async with httpx.AsyncClient(base_url=sim.base_url) as anonymous:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = await anonymous.get("/instances/12345678/", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"] == "auth_error"
        by_query = await anonymous.get("/users/current/", params={"api_key": sim.api_key})
        assert by_query.status_code == 200


async def test_deprecated_v0_list_is_always_empty(api: httpx.AsyncClient) -> None:
    await rent(api)
    response = await api.get("/instances/")
    assert response.json() == {"instances_found": 0, "instances": []}


async def test_v1_pagination_label_filter_and_errors(
    api: httpx.AsyncClient, sim: Simulator
) -> None:
    offers = (await api.post("/bundles/", json={"rentable": {"eq": True}})).json()["offers"]
    created = []
    for index, offer in enumerate(offers[:30]):
        label = "wp.big.0.1" if index % 3 == 0 else f"wp.other.{index}.1"
        created.append((await rent(api, offer["id"], label=label))[0])
    seen: list[int] = []
    token: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 100, "order_by": [{"col": "id", "dir": "asc"}]}
        if token:
            params["after_token"] = token
        body = (await list_v1(api, sim, **params)).json()
        pages += 1
        assert body["success"] is True and body["total_instances"] == 30
        assert body["instances_found"] == len(body["instances"]) <= 25
        seen += [instance["id"] for instance in body["instances"]]
        token = body["next_token"]
        if token is None:
            break
    assert pages == 2 and seen == sorted(created)
    assert body["label_counts"]["wp.big.0.1"] == 10

    labelled = (await list_v1(api, sim, select_filters={"label": {"eq": "wp.big.0.1"}})).json()
    assert labelled["total_instances"] == 10 and labelled["next_token"] is None
    assert {i["label"] for i in labelled["instances"]} == {"wp.big.0.1"}
    newest = (await list_v1(api, sim, limit=3, order_by=[{"col": "id", "dir": "desc"}])).json()
    assert [i["id"] for i in newest["instances"]] == sorted(created, reverse=True)[:3]

    slim = (await list_v1(api, sim, limit=1, select_cols=["label"])).json()["instances"]
    assert slim == [{"id": min(created), "label": "wp.big.0.1"}]
    for column in ("dph_total", "num_gpus"):
        bad = await list_v1(api, sim, select_filters={column: {"lte": 1}})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"
    cursor = await list_v1(api, sim, after_token="not-a-cursor")
    assert cursor.status_code == 400 and cursor.json()["error"] == "invalid_token"

    await api.delete(f"/instances/{created[0]}/")
    after = (await list_v1(api, sim)).json()
    assert after["total_instances"] == 29 and created[0] not in {
        i["id"] for i in after["instances"]
    }


async def test_label_and_state_changes(api: httpx.AsyncClient) -> None:
    instance_id, _ = await rent(api)
    await wait_running(api, instance_id)
    relabel = await api.put(f"/instances/{instance_id}/", json={"label": "wp.new.1.2"})
    assert relabel.json() == {
        "success": True,
        "msg": f"label for {instance_id} set to 'wp.new.1.2'",
    }
    stopped = await api.put(f"/instances/{instance_id}/", json={"state": "stopped"})
    assert stopped.json() == {"success": True}
    instance = await show(api, instance_id)
    assert instance is not None and instance["label"] == "wp.new.1.2"
    assert instance["actual_status"] == instance["cur_state"] == "stopped"
    assert "ports" not in instance
    await api.put(f"/instances/{instance_id}/", json={"state": "running"})
    assert (await wait_running(api, instance_id))["actual_status"] == "running"
    missing = await api.put("/instances/11111111/", json={"label": "x"})
    assert missing.status_code == 404 and missing.json()["error"] == "no_such_instance"


async def test_current_user_with_and_without_slash(api: httpx.AsyncClient, sim: Simulator) -> None:
    for path in ("/users/current/", "/users/current"):
        user = (await api.get(path)).json()
        assert user["api_key"] == sim.api_key and user["credit"] == 25.0
        assert {"id", "email", "balance", "ssh_key", "username"} <= set(user)


async def test_request_logs_appear_late_and_without_auth(api: httpx.AsyncClient) -> None:
    instance_id, _ = await rent(api)
    answer = await api.put(f"/instances/request_logs/{instance_id}/", json={"tail": "1000"})
    body = answer.json()
    assert body["success"] is True and body["result_url"].startswith("http://127.0.0.1:")
    async with httpx.AsyncClient() as anonymous:

        async def fetched() -> str | None:
            response = await anonymous.get(body["result_url"])
            return response.text if response.status_code == 200 else None

        first = await anonymous.get(body["result_url"])
        assert first.status_code == 404  # the file appears late, as on S3
        text = await wait_for(fetched)
    assert "vastai/comfyui:latest" in text and TOKEN not in text
    missing = await api.put("/instances/request_logs/11111111/", json={})
    assert missing.status_code == 404 and missing.json()["error"] == "invalid_id"


async def test_every_call_is_recorded_without_query_strings(
    api: httpx.AsyncClient, sim: Simulator
) -> None:
    await api.get("/users/current/", params={"api_key": sim.api_key})
    await api.get("/instances/1/")
    await api.get("/nope/")
    keys = [(call.endpoint_key, call.status) for call in sim.calls]
    assert keys == [("user", 200), ("show", 200), ("unknown", 404)]
    assert all("?" not in call.path and sim.api_key not in call.path for call in sim.calls)
