"""vast.stop and vast.start against the simulator: they only send the call, are idempotent, and
tell a gone instance apart (a result, not a failure) from a refusal (a failure)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import build_activities
from activities.vast import StateResult, VastActivities
from tests.vastsim.helpers import FAST
from vastsim import Fault, Simulator
from warmpool.errors import ErrorType
from warmpool.listing import SharedListing
from warmpool.queues import vast_queue
from warmpool.secrets import EnvSecretStore
from warmpool.settings import Settings
from warmpool.vast import CreateRequest, VastClient
from workflows import options


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(FAST) as simulator:
        yield simulator


@pytest.fixture
async def vast(sim: Simulator) -> AsyncIterator[VastClient]:
    client = VastClient(sim.base_url, lambda: sim.api_key, timeout=5)
    yield client
    await client.aclose()


@pytest.fixture
def acts(vast: VastClient) -> VastActivities:
    return VastActivities(vast, SharedListing(vast, ttl=0), EnvSecretStore({}))


async def rented(sim: Simulator, vast: VastClient) -> int:
    offer = next(o for o in sim.offers() if o["rentable"] and not o["rented"])
    request = CreateRequest(image="vastai/comfyui:latest", disk=250, label="wp.park.0.1")
    return await vast.create_instance(int(str(offer["id"])), request)


def status(sim: Simulator, instance_id: int) -> tuple[str | None, str | None]:
    info = next(i for i in sim.instances() if i.id == instance_id)
    return info.actual_status, info.intended_status


async def test_stop_and_start_are_idempotent(
    sim: Simulator, vast: VastClient, acts: VastActivities
) -> None:
    env = ActivityEnvironment()
    instance_id = await rented(sim, vast)
    for _ in range(2):
        stopped = await env.run(acts.stop, instance_id)
        assert stopped == StateResult(instance_id=instance_id, state="stopped")
        assert status(sim, instance_id) == ("stopped", "stopped")
    for _ in range(2):
        started = await env.run(acts.start, instance_id)
        assert started == StateResult(instance_id=instance_id, state="running")
        assert status(sim, instance_id)[1] == "running"  # asked; the slot watches the outcome
    assert sim.call_counts["label"] == 4  # one PUT per call, nothing else but these


async def test_a_gone_instance_is_a_result_not_a_failure(
    sim: Simulator, vast: VastClient, acts: VastActivities
) -> None:
    env = ActivityEnvironment()
    instance_id = await rented(sim, vast)
    await vast.destroy_instance(instance_id)
    assert await env.run(acts.stop, instance_id) == StateResult(
        instance_id=instance_id, state="stopped", gone=True
    )
    assert (await env.run(acts.start, instance_id)).gone
    assert (await env.run(acts.stop, 11_111_111)).gone


async def test_a_refusal_of_what_is_already_asked_is_success(
    sim: Simulator, vast: VastClient, acts: VastActivities
) -> None:
    env = ActivityEnvironment()
    instance_id = await rented(sim, vast)
    await env.run(acts.stop, instance_id)
    sim.add_fault(Fault(kind="success_false", endpoint="label", value="already_stopped", count=1))
    assert not (await env.run(acts.stop, instance_id)).gone
    sim.add_fault(Fault(kind="success_false", endpoint="label", value="busy", count=1))
    with pytest.raises(ApplicationError) as refused:
        await env.run(acts.start, instance_id)  # intended is "stopped": a real refusal
    assert refused.value.type == ErrorType.VAST_REJECTED and refused.value.non_retryable
    assert status(sim, instance_id) == ("stopped", "stopped")


@pytest.mark.parametrize(
    ("fault", "error_type", "non_retryable"),
    [
        (Fault(kind="rate_limit", endpoint="label"), ErrorType.VAST_RATE_LIMITED, False),
        (Fault(kind="server_error", endpoint="label"), ErrorType.VAST_SERVER, False),
        (Fault(kind="bad_key", endpoint="label"), ErrorType.VAST_AUTH, True),
    ],
)
async def test_failures_leave_as_typed_application_errors(
    sim: Simulator,
    vast: VastClient,
    acts: VastActivities,
    fault: Fault,
    error_type: ErrorType,
    non_retryable: bool,
) -> None:
    instance_id = await rented(sim, vast)
    sim.add_fault(fault)
    with pytest.raises(ApplicationError) as failed:
        await ActivityEnvironment().run(acts.stop, instance_id)
    assert failed.value.type == error_type and failed.value.non_retryable is non_retryable


async def test_registered_on_the_shared_provider_queue(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no `.env` of the checkout
    assert options.stop("q")["task_queue"] == options.start("q")["task_queue"] == vast_queue("q")
    assert options.stop("q")["retry_policy"] is options.VAST_RETRY
    built = build_activities(Settings(), EnvSecretStore({}), vast_base_url="http://x.test/api/v0")
    try:
        names = {fn.__temporal_activity_definition.name for fn in built.vast}  # type: ignore[attr-defined]
        assert {"vast.stop", "vast.start"} <= names
        assert all(
            "vast.stop" not in {f.__temporal_activity_definition.name for f in fns}  # type: ignore[attr-defined]
            for fns in built.paced.values()
        )
    finally:
        await built.aclose()
