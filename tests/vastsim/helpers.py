"""Helpers shared by the simulator's tests: renting, reading and waiting over real HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tests.helpers import assert_eventually
from vastsim import SimConfig, Simulator

# running 0.09 s after the create, ComfyUI ready 0.06 s later; a resume runs 0.05 s after its start
FAST = SimConfig(
    provision_s=0.03,
    created_s=0.03,
    loading_s=0.03,
    comfy_boot_s=0.06,
    prompt_s=0.02,
    resume_s=0.05,
)
TOKEN = "portal-secret-123"
COMFY_ENV = {"-p 8188:8188": "1", "-p 18188:18188": "1", "OPEN_BUTTON_TOKEN": TOKEN}


def client(sim: Simulator) -> httpx.AsyncClient:
    """An API client carrying the simulator's key, as our own client would."""
    headers = {"Authorization": f"Bearer {sim.api_key}"}
    return httpx.AsyncClient(base_url=sim.base_url, headers=headers, timeout=5)


async def good_offer(api: httpx.AsyncClient, **extra: Any) -> dict[str, Any]:
    query = {"rented": {"eq": False}, "rentable": {"eq": True}, "order": [["id", "asc"]], **extra}
    response = await api.post("/bundles/", json=query)
    assert response.status_code == 200
    offers: list[dict[str, Any]] = response.json()["offers"]
    assert offers
    return offers[0]


async def rent(
    api: httpx.AsyncClient, offer_id: int | None = None, **body: Any
) -> tuple[int, dict[str, Any]]:
    """Create an instance (ComfyUI ports and token by default); its id and the create answer."""
    if offer_id is None:
        offer_id = (await good_offer(api))["id"]
    payload = {"image": "vastai/comfyui:latest", "disk": 250, "env": COMFY_ENV, **body}
    response = await api.put(f"/asks/{offer_id}/", json=payload)
    answer: dict[str, Any] = response.json()
    assert response.status_code == 200, answer
    return int(answer["new_contract"]), answer


async def show(api: httpx.AsyncClient, instance_id: int) -> dict[str, Any] | None:
    response = await api.get(f"/instances/{instance_id}/", params={"owner": "me"})
    assert response.status_code == 200
    instance: dict[str, Any] | None = response.json()["instances"]
    return instance


async def wait_for(
    check: Callable[[], Awaitable[Any]], within: float = 3.0, interval: float = 0.02
) -> Any:
    """Poll until `check` returns something truthy; fail the test after `within` seconds."""
    return await assert_eventually(check, timeout=within, interval=interval)


async def wait_running(api: httpx.AsyncClient, instance_id: int) -> dict[str, Any]:
    async def running() -> dict[str, Any] | None:
        instance = await show(api, instance_id)
        return instance if instance and instance.get("ports") else None

    instance: dict[str, Any] = await wait_for(running)
    return instance


def host_port(instance: dict[str, Any], key: str = "8188/tcp") -> int:
    return int(instance["ports"][key][0]["HostPort"])
