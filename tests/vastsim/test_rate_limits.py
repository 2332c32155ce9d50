"""Does the simulator enforce Vast.ai's per-endpoint, per-key minimum intervals when asked to?

A call arriving sooner than its endpoint's interval after that key's last accepted call gets
429 without Retry-After, in the body shapes of vastai-api.md section 1; off by default.
"""

from __future__ import annotations

import asyncio

import httpx

from tests.vastsim.conftest import MakeSim
from tests.vastsim.helpers import client
from vastsim import SimConfig, Simulator
from vastsim.faults import SPEC_MIN_INTERVALS


async def test_no_limits_by_default(api: httpx.AsyncClient, sim: Simulator) -> None:
    assert SimConfig().min_intervals is None
    answers = await asyncio.gather(*(api.get("/instances/1/") for _ in range(5)))
    assert {a.status_code for a in answers} == {200}


async def test_a_call_sooner_than_the_interval_gets_429_without_retry_after(
    make_sim: MakeSim,
) -> None:
    sim = await make_sim(min_intervals={"show": 0.3, "destroy": 0.3})
    async with client(sim) as api:
        assert (await api.get("/instances/1/")).status_code == 200
        early = await api.get("/instances/1/")
        assert early.status_code == 429 and "retry-after" not in early.headers
        assert early.json() == {"detail": "API requests too frequent endpoint threshold=0.3"}
        assert (await api.get("/users/current/")).status_code == 200  # other endpoints are free
        assert (await api.delete("/instances/1/")).status_code == 404  # accepted: no such one
        destroy = await api.delete("/instances/1/")
        assert destroy.status_code == 429
        assert destroy.json()["error"] == "rate_limit_exceeded"
        await asyncio.sleep(0.32)
        assert (await api.get("/instances/1/")).status_code == 200
    assert [(c.endpoint_key, c.status) for c in sim.calls] == [
        ("show", 200),
        ("show", 429),
        ("user", 200),
        ("destroy", 404),
        ("destroy", 429),
        ("show", 200),
    ]


async def test_a_rejected_call_does_not_restart_the_interval(make_sim: MakeSim) -> None:
    sim = await make_sim(min_intervals={"show": 0.3})
    async with client(sim) as api:
        await api.get("/instances/1/")
        await asyncio.sleep(0.2)
        assert (await api.get("/instances/1/")).status_code == 429
        await asyncio.sleep(0.12)  # 0.32 s after the accepted call, 0.12 s after the 429
        assert (await api.get("/instances/1/")).status_code == 200


async def test_limits_are_per_key_and_scale_with_speed(make_sim: MakeSim) -> None:
    sim = await make_sim(min_intervals={"show": 2.0}, speed=10.0)  # 0.2 real seconds
    other = httpx.AsyncClient(
        base_url=sim.base_url, headers={"Authorization": "Bearer another-key"}, timeout=5
    )
    async with client(sim) as api, other:
        assert (await api.get("/instances/1/")).status_code == 200
        assert (await other.get("/instances/1/")).status_code == 401  # its own budget: not 429
        assert (await api.get("/instances/1/")).status_code == 429
        await asyncio.sleep(0.22)
        assert (await api.get("/instances/1/")).status_code == 200


async def test_keyless_search_is_limited_too(make_sim: MakeSim) -> None:
    sim = await make_sim(min_intervals={"bundles": 0.3})
    async with httpx.AsyncClient(base_url=sim.base_url, timeout=5) as anonymous:
        assert (await anonymous.post("/bundles/", json={})).status_code == 200
        limited = await anonymous.post("/bundles/", json={})
        assert limited.status_code == 429 and "retry-after" not in limited.headers


def test_spec_intervals() -> None:
    assert SPEC_MIN_INTERVALS == {
        "bundles": 6.0,
        "create": 4.5,
        "show": 2.0,
        "list_v1": 1.0,
        "destroy": 3.0,
        "label": 1.0,
    }
    assert SimConfig(min_intervals=SPEC_MIN_INTERVALS).min_intervals == SPEC_MIN_INTERVALS
