"""Stop and start (the stopped tier): a stopped instance keeps its disk and label, loses its
ports and GPU billing; a start resumes it on new ports after `resume_s`, unless its GPU was
taken meanwhile (`gpu_taken`); destroying a stopped instance works as for a running one."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import httpx
import pytest

from tests.vastsim.conftest import MakeSim
from tests.vastsim.helpers import FAST, client, host_port, rent, show, wait_for, wait_running
from vastsim import Fault, Simulator
from vastsim.faults import InstanceFaults
from vastsim.instance import GPU_TAKEN_MSG, HOURS_PER_MONTH, Instance, RentRequest

STATES = ("actual_status", "intended_status", "cur_state", "next_state")


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def states(instance: dict[str, Any]) -> tuple[str | None, ...]:
    return tuple(instance[k] for k in STATES)


async def put_state(api: httpx.AsyncClient, instance_id: int, state: str) -> httpx.Response:
    return await api.put(f"/instances/{instance_id}/", json={"state": state})


async def comfy_up(port: int) -> bool:
    async with httpx.AsyncClient() as http:
        try:
            return (await http.get(f"http://127.0.0.1:{port}/system_stats")).status_code == 200
        except httpx.ConnectError:
            return False


async def ready_instance(api: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    """A running instance whose ComfyUI answers on its direct port."""
    instance_id, _ = await rent(api, label="wp.stop.0.1")
    instance = await wait_running(api, instance_id)
    await wait_for(lambda: comfy_up(host_port(instance, "18188/tcp")))
    return instance_id, instance


async def listed(api: httpx.AsyncClient, sim: Simulator) -> list[dict[str, Any]]:
    url = sim.base_url.replace("/api/v0", "/api/v1") + "/instances/"
    filters = json.dumps({"label": {"eq": "wp.stop.0.1"}})
    rows: list[dict[str, Any]] = (await api.get(url, params={"select_filters": filters})).json()[
        "instances"
    ]
    return rows


async def test_stop_keeps_disk_and_label_and_closes_the_ports(
    api: httpx.AsyncClient, sim: Simulator
) -> None:
    instance_id, running = await ready_instance(api)
    ports = [host_port(running), host_port(running, "18188/tcp")]
    [info] = sim.instances()
    assert info.dph_now == running["dph_total"]  # the GPU bills while it runs

    assert (await put_state(api, instance_id, "stopped")).json() == {"success": True}
    stopped = await show(api, instance_id)
    assert stopped is not None and states(stopped) == ("stopped",) * 4
    assert "ports" not in stopped and stopped["direct_port_start"] == -1
    assert stopped["label"] == "wp.stop.0.1" and stopped["dph_total"] == running["dph_total"]
    storage = stopped["disk_space"] * stopped["storage_cost"] / HOURS_PER_MONTH
    assert stopped["storage_total_cost"] == pytest.approx(storage, abs=1e-6)
    assert all(refused(port) for port in ports)  # a stopped container has no ports
    assert [row["id"] for row in await listed(api, sim)] == [instance_id]
    [info] = sim.instances()
    assert info.dph_now == pytest.approx(storage) and not info.comfy_ready
    assert info.host_ports == {}

    again = await put_state(api, instance_id, "stopped")  # idempotent
    assert again.json() == {"success": True}
    after = await show(api, instance_id)
    assert after is not None and states(after) == ("stopped",) * 4


async def test_start_resumes_on_new_ports_after_resume_s(make_sim: MakeSim) -> None:
    sim = await make_sim(resume_s=0.4)
    async with client(sim) as api:
        instance_id, running = await ready_instance(api)
        old_ports = {host_port(running), host_port(running, "18188/tcp")}
        await put_state(api, instance_id, "stopped")
        asked = time.monotonic()
        assert (await put_state(api, instance_id, "running")).json() == {"success": True}
        resuming = await show(api, instance_id)
        assert resuming is not None and "ports" not in resuming
        assert states(resuming) == ("stopped", "running", "stopped", "running")
        assert resuming["status_msg"] == "Instance is starting"
        await put_state(api, instance_id, "running")  # a repeated start does not restart the clock

        resumed = await wait_running(api, instance_id)
        took = time.monotonic() - asked
        assert 0.38 <= took < 1.5, took
        assert states(resumed) == ("running",) * 4
        new_ports = {host_port(resumed), host_port(resumed, "18188/tcp")}
        assert new_ports != old_ports  # a restart maps the ports anew
        assert all(refused(port) for port in old_ports - new_ports)
        await wait_for(lambda: comfy_up(host_port(resumed, "18188/tcp")))
        [info] = sim.instances()
        assert info.comfy_ready and info.dph_now == resumed["dph_total"]

        same = await put_state(api, instance_id, "running")  # already running: nothing changes
        assert same.json() == {"success": True}
        unchanged = await show(api, instance_id)
        assert unchanged is not None and host_port(unchanged) == host_port(resumed)


async def test_gpu_taken_resume_never_runs(make_sim: MakeSim) -> None:
    sim = await make_sim(resume_s=0.05)
    async with client(sim) as api:
        instance_id, _ = await ready_instance(api)
        machine = sim.instances()[0].machine_id
        noop = await put_state(api, instance_id, "running")  # running: uses up no fault
        assert noop.json() == {"success": True}
        async with httpx.AsyncClient() as control:
            added = await control.post(
                f"{sim.control_url}/faults",
                json={"kind": "gpu_taken", "machine_id": machine, "count": 1},
            )
            assert added.status_code == 200
            state = await control.get(f"{sim.control_url}/state")
            assert state.json()["faults_fired"] == {}
        await put_state(api, instance_id, "stopped")
        assert (await put_state(api, instance_id, "running")).json() == {"success": True}
        await asyncio.sleep(0.2)  # four resume times: it would be running by now
        taken = await show(api, instance_id)
        assert taken is not None and "ports" not in taken
        assert states(taken) == ("stopped", "running", "stopped", "running")
        assert taken["status_msg"] == GPU_TAKEN_MSG and "GPU" in GPU_TAKEN_MSG
        [info] = sim.instances()
        assert info.dph_now == pytest.approx(taken["storage_total_cost"], abs=1e-6)  # disk only

        # Stopped again and resumed (the one-shot fault is used up): it runs.
        await put_state(api, instance_id, "stopped")
        await put_state(api, instance_id, "running")
        resumed = await wait_running(api, instance_id)
        assert resumed["actual_status"] == "running"
        assert sim.cloud.faults.fired == {"f1": 1} and sim.cloud.faults.listing() == []


async def test_destroying_a_stopped_or_resuming_instance(
    api: httpx.AsyncClient, sim: Simulator
) -> None:
    parked, _ = await rent(api)
    resuming, _ = await rent(api)
    for instance_id in (parked, resuming):
        await wait_running(api, instance_id)
        await put_state(api, instance_id, "stopped")
    sim.add_fault(Fault(kind="gpu_taken"))
    await put_state(api, resuming, "running")
    for instance_id in (parked, resuming):
        assert (await api.delete(f"/instances/{instance_id}/")).json() == {"success": True}
        assert await show(api, instance_id) is None
        gone = await put_state(api, instance_id, "running")
        assert gone.status_code == 404 and gone.json()["error"] == "no_such_instance"
    assert all(info.destroyed and info.dph_now == 0.0 for info in sim.instances())


def test_spent_bills_the_gpu_only_while_it_runs() -> None:
    """The billing arithmetic on one instance, with explicit clocks (no waiting)."""
    offer = {"id": 1, "machine_id": 2, "host_id": 3, "dph_total": 0.5, "storage_cost": 0.144}
    config = FAST.model_copy(update={"speed": 10.0})
    instance = Instance(
        instance_id=9,
        offer=offer,
        rent=RentRequest(image="img", disk=250.0, stopped=True),
        faults=InstanceFaults(),
        config=config,
        dead_port=1,
    )
    storage = 250.0 * 0.144 / HOURS_PER_MONTH
    assert instance.storage_per_hour() == pytest.approx(storage)
    born = instance._created_at
    assert instance.dph_now(born + 1) == pytest.approx(storage)
    # Created stopped: one real hour is ten simulated hours of disk, no GPU.
    assert instance.spent(born + 3600) == pytest.approx(10 * storage)
    # Suppose it ran its GPU for 360 real s (one simulated hour) in an earlier run:
    instance._gpu_billed = 360.0
    assert instance.spent(born + 3600) == pytest.approx(10 * storage + (0.5 - storage))
