"""The offer search (POST /api/v0/bundles/): filters, order, limit, auth and error shapes."""

from __future__ import annotations

import httpx

from tests.vastsim.helpers import rent
from vastsim import Simulator

OFFER_FIELDS = {
    "id", "machine_id", "host_id", "gpu_name", "num_gpus", "gpu_ram", "cpu_cores",
    "cpu_cores_effective", "cpu_ram", "disk_space", "dph_base", "dph_total", "min_bid",
    "storage_cost", "inet_down", "inet_up", "reliability", "reliability2", "score",
    "direct_port_count", "public_ipaddr", "static_ip", "geolocation", "verification",
    "rentable", "rented", "external", "is_bid",
}  # fmt: skip


async def test_catalogue_has_the_documented_fields_and_bad_offers_too(
    api: httpx.AsyncClient,
) -> None:
    offers = (await api.post("/bundles/", json={})).json()["offers"]
    assert len(offers) == 40
    assert all(OFFER_FIELDS <= set(offer) for offer in offers)
    assert "verified" not in offers[0]  # `verified` is only a filter
    assert {"RTX 4090", "RTX 3090"} <= {o["gpu_name"] for o in offers}
    assert min(o["disk_space"] for o in offers) < 250 <= max(o["disk_space"] for o in offers)
    assert min(o["direct_port_count"] for o in offers) < 8
    assert all(0.15 <= o["dph_total"] <= 1.5 for o in offers)
    assert all(0.9 <= o["reliability"] <= 0.999 for o in offers)
    assert any(o["cpu_cores"] is None for o in offers)
    machines = [o["machine_id"] for o in offers]
    assert len(set(machines)) < len(machines)  # a few machines carry two offers


async def test_filters_order_and_limit(api: httpx.AsyncClient) -> None:
    query = {
        "verified": {"eq": True},
        "gpu_name": {"in": ["RTX 4090", "RTX 3090"]},
        "disk_space": {"gte": 250},
        "direct_port_count": {"gte": 8},
        "inet_down": {"gt": 500},
        "dph_total": {"lte": 1.0},
        "geolocation": {"notin": ["Tokyo, JP"]},
        "order": [["dph_total", "asc"]],
        "type": "on-demand",
        "allocated_storage": 250,
    }
    offers = (await api.post("/bundles/", json=query)).json()["offers"]
    assert offers
    for offer in offers:
        assert offer["verification"] == "verified"
        assert offer["gpu_name"] in ("RTX 4090", "RTX 3090")
        assert offer["disk_space"] >= 250 and offer["direct_port_count"] >= 8
        assert offer["inet_down"] > 500 and offer["dph_total"] <= 1.0
        assert offer["geolocation"] != "Tokyo, JP"
    prices = [o["dph_total"] for o in offers]
    assert prices == sorted(prices)
    limited = (await api.post("/bundles/", json={**query, "limit": 2})).json()["offers"]
    assert limited == offers[:2]
    descending = {"order": [["inet_down", "desc"]]}
    downs = [
        o["inet_down"] for o in (await api.post("/bundles/", json=descending)).json()["offers"]
    ]
    assert downs == sorted(downs, reverse=True)


async def test_null_never_matches_a_comparison(api: httpx.AsyncClient) -> None:
    offers = (await api.post("/bundles/", json={"cpu_cores": {"gte": 0}})).json()["offers"]
    assert offers and all(o["cpu_cores"] is not None for o in offers)


async def test_rented_offers_leave_the_search_and_come_back_after_destroy(
    api: httpx.AsyncClient,
) -> None:
    free = {"rented": {"eq": False}}
    before = {o["id"] for o in (await api.post("/bundles/", json=free)).json()["offers"]}
    offer_id = min(before)
    instance_id, _ = await rent(api, offer_id)
    during = {o["id"] for o in (await api.post("/bundles/", json=free)).json()["offers"]}
    assert offer_id not in during and during == before - {offer_id}
    everything = (await api.post("/bundles/", json={"id": {"eq": offer_id}})).json()["offers"]
    assert everything[0]["rented"] is True
    second = await api.put(f"/asks/{offer_id}/", json={"image": "x", "disk": 10})
    assert second.status_code == 404
    await api.delete(f"/instances/{instance_id}/")
    after = {o["id"] for o in (await api.post("/bundles/", json=free)).json()["offers"]}
    assert after == before


async def test_malformed_queries_are_400(api: httpx.AsyncClient) -> None:
    raw = await api.post(
        "/bundles/", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert raw.status_code == 400
    assert raw.json() == {"error": "invalid_request", "msg": "Invalid json body"}
    for query in (
        [1, 2],
        {"gpu_name": "RTX 4090"},
        {"gpu_ram": {"about": 1}},
        {"gpu_name": {"in": "RTX 4090"}},
        {"no_such_field": {"eq": 1}},
        {"order": [["dph_total", "up"]]},
        {"limit": -1},
    ):
        response = await api.post("/bundles/", json=query)
        assert response.status_code == 400, query
        assert response.json()["error"] == "invalid_request"


async def test_search_works_without_a_key_but_not_with_a_wrong_one(sim: Simulator) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url) as anonymous:
        assert (await anonymous.post("/bundles/", json={"limit": 1})).status_code == 200
        wrong = await anonymous.post("/bundles/", json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json() == {"success": False, "error": "auth_error", "msg": "Invalid user key"}
