"""vast.rent after a create whose answer was lost: a failed look-up neither ends the wait for the
label nor lets the rent create a second instance (found by the chaos suite's API-fault run)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.vast import CREATE_SENT, RentInput, VastActivities
from tests.vastsim.helpers import FAST
from vastsim import Fault, Simulator
from warmpool.listing import SharedListing
from warmpool.secrets import EnvSecretStore
from warmpool.vast import CreateRequest, VastClient

LABEL = "wp.rent.0.1"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(FAST) as simulator:
        yield simulator


@pytest.fixture
async def vast(sim: Simulator) -> AsyncIterator[VastClient]:
    client = VastClient(sim.base_url, lambda: sim.api_key, timeout=5)
    yield client
    await client.aclose()


def activities(vast: VastClient) -> VastActivities:
    secrets = EnvSecretStore({"WARMPOOL_INSTANCE_SECRET": "rent-test-secret"})
    return VastActivities(
        vast,
        SharedListing(vast, ttl=0),
        secrets,
        adopt_wait=timedelta(seconds=1),
        adopt_poll=timedelta(seconds=0.05),
    )


def retry_after_create(on_heartbeat: Any) -> ActivityEnvironment:
    """The second attempt of a rent whose first one sent a create and lost the answer."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[CREATE_SENT])
    env.on_heartbeat = on_heartbeat
    return env


def offer_id(sim: Simulator) -> int:
    return int(str(next(o for o in sim.offers() if o["rentable"])["id"]))


def rent_input(sim: Simulator) -> RentInput:
    return RentInput(
        offer_id=offer_id(sim),
        label=LABEL,
        image="vastai/comfyui:latest",
        disk_gb=250,
        runtype=None,
        onstart=None,
        ports=[8188],
    )


def fail_lists_from_first_heartbeat(sim: Simulator, **fault: Any) -> Any:
    added: list[str] = []

    def beat(*_: object) -> None:
        if not added:
            added.append(sim.add_fault(Fault(endpoint="list_v1", **fault)))

    return beat


async def test_failed_looks_do_not_end_the_wait_and_the_late_instance_is_adopted(
    sim: Simulator, vast: VastClient
) -> None:
    sim.add_fault(Fault(kind="list_lag", seconds=0.6, count=1))  # visible only 0.6 s later
    lost = await vast.create_instance(
        offer_id(sim), CreateRequest(image="vastai/comfyui:latest", disk=250, label=LABEL)
    )
    beat = fail_lists_from_first_heartbeat(sim, kind="server_error", status_code=503, count=4)
    result = await retry_after_create(beat).run(activities(vast).rent, rent_input(sim))
    assert (result.instance_id, result.adopted) == (lost, True)
    assert sim.call_counts["create"] == 1
    assert sim.calls[-1].status == 200 and any(c.status == 503 for c in sim.calls)


async def test_looks_that_keep_failing_fail_the_attempt_without_creating(
    sim: Simulator, vast: VastClient
) -> None:
    beat = fail_lists_from_first_heartbeat(sim, kind="server_error")
    with pytest.raises(ApplicationError) as failed:
        await retry_after_create(beat).run(activities(vast).rent, rent_input(sim))
    assert failed.value.type == "VastServerError" and not failed.value.non_retryable
    assert sim.call_counts.get("create", 0) == 0


async def test_when_looks_succeed_and_nothing_shows_up_it_creates_after_the_window(
    sim: Simulator, vast: VastClient
) -> None:
    result = await retry_after_create(lambda *_: None).run(activities(vast).rent, rent_input(sim))
    assert not result.adopted
    assert sim.call_counts["create"] == 1 and sim.call_counts["list_v1"] >= 3
