"""The slot lifecycle over real sockets: dev server + worker + real activities + the simulator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowHandle

from tests.helpers import in_state, wait_status
from tests.integration.conftest import INSTANCE_SECRET, Stack, assert_no_orphans
from vastsim import Fault, SimConfig
from warmpool.instance_token import derive_instance_token
from warmpool.models import SlotState, SlotStatus
from warmpool.secrets import SecretName

pytestmark = pytest.mark.integration
S = SlotState
Make = Callable[..., Any]


async def ready(stack: Stack, handle: WorkflowHandle[Any, SlotStatus], **kw: Any) -> SlotStatus:
    return await wait_status(stack.env, handle, in_state(S.READY), attempts=1500, **kw)


async def retire(stack: Stack, handle: WorkflowHandle[Any, SlotStatus]) -> SlotStatus:
    await handle.signal("retire", "test over")
    final = await handle.result()
    assert final.state == S.DONE
    assert_no_orphans(stack.sim)
    return final


async def history_bytes(handle: WorkflowHandle[Any, Any]) -> bytes:
    """Raw protobuf events: payload data is plain there (base64 only in the JSON form)."""
    history = await handle.fetch_history()
    return b"".join(event.SerializeToString() for event in history.events)


async def test_portal_instance_reaches_ready_with_token_kept_out_of_history(
    stack_factory: Make,
) -> None:
    stack: Stack = await stack_factory()
    handle = await stack.start_slot()
    status = await ready(stack, handle)
    inst = stack.sim.live_instances()[0]
    public_ip = stack.sim.config.public_ip
    assert status.connection_url == f"http://{public_ip}:{inst.host_ports['8188/tcp']}"
    assert inst.comfy_mode == "portal" and inst.label == "wp.it.0.1"
    # The portal answers 401 without the token: READY proves the activities sent it.
    async with httpx.AsyncClient() as http:
        anon = await http.get(f"{status.connection_url}/system_stats")
    assert anon.status_code == 401
    token = derive_instance_token(INSTANCE_SECRET.encode(), "wp.it.0.1")
    raw = await history_bytes(handle)
    assert b"wp.it.0.1" in raw, "the search would find a value that is there"
    for secret in (token, INSTANCE_SECRET, stack.sim.api_key):
        assert secret.encode() not in raw
    assert token not in status.model_dump_json()
    await retire(stack, handle)
    assert stack.sim.call_counts["create"] == 1


async def test_ready_only_on_the_mapped_port_with_a_stranger_on_the_public_ip(
    stack_factory: Make,
) -> None:
    """The field incident: on a shared host another tenant's ComfyUI answers 200 on
    `<public_ip>:8188`. The slot must become READY on the port the provider maps to its own
    instance, keep watching that one, and never send the stranger anything."""
    stack: Stack = await stack_factory()
    stranger = stack.stranger
    assert stranger is not None and stranger.host == stack.sim.config.public_ip
    handle = await stack.start_slot()
    status = await ready(stack, handle)
    mapped = stack.sim.live_instances()[0].host_ports["8188/tcp"]
    assert mapped != stranger.port
    assert status.connection_url == f"http://{stranger.host}:{mapped}"
    assert status.port_report is not None
    assert [(c.name, c.port, c.outcome) for c in status.port_report.candidates] == [
        ("mapped-8188", mapped, "ready")
    ]
    # A few keepalive beats (200 ms apart) go to the mapped port, not to the stranger.
    await wait_status(stack.env, handle, in_state(S.READY), attempts=10, real_pause=0.1)
    assert stranger.requests == []
    await retire(stack, handle)
    stranger.assert_no_token()


async def test_bare_comfyui_without_portal_works(stack_factory: Make) -> None:
    stack: Stack = await stack_factory(FAST_BARE)
    handle = await stack.start_slot(probe={"portal": False})
    status = await ready(stack, handle)
    assert stack.sim.live_instances()[0].comfy_mode == "bare"
    assert status.port_report is not None
    await retire(stack, handle)


async def test_bare_comfyui_in_portal_mode_is_never_ready(stack_factory: Make) -> None:
    """A mapped port that answers without the token is not this instance's gate: with
    `portal` on (the default), an un-gated ComfyUI never makes the slot READY."""
    stack: Stack = await stack_factory(FAST_BARE, readiness_timeout_s=2)
    handle = await stack.start_slot()
    status = await wait_status(
        stack.env,
        handle,
        lambda s: s.counters.failures_by_reason.get("comfy_never_ready", 0) >= 1,
        attempts=1500,
    )
    assert S.READY not in [t.to_state for t in status.transitions]
    assert status.time_to_ready_s is None
    await retire(stack, handle)


FAST_BARE = SimConfig(
    provision_s=0.1, created_s=0.1, loading_s=0.2, comfy_boot_s=0.4, comfy_mode="bare"
)


async def test_no_space_is_destroyed_and_replaced_on_another_machine(stack_factory: Make) -> None:
    stack: Stack = await stack_factory()
    stack.sim.add_fault(Fault(kind="no_space", count=1))
    handle = await stack.start_slot(fallback_image="vastai/comfyui:slim")
    status = await ready(stack, handle)
    first, second = sorted(stack.sim.instances(), key=lambda i: i.created_at)
    assert first.destroyed and not second.destroyed
    assert first.machine_id != second.machine_id
    assert first.machine_id in status.excluded_machines
    assert status.counters.failures_by_reason == {"no_space": 1}
    assert second.image == "vastai/comfyui:slim"
    await retire(stack, handle)


async def test_all_ports_blocked_is_a_firewall(stack_factory: Make) -> None:
    stack: Stack = await stack_factory()
    stack.sim.add_fault(Fault(kind="firewall", count=1))
    handle = await stack.start_slot()
    status = await ready(stack, handle)
    assert status.counters.failures_by_reason == {"firewall": 1}
    first = min(stack.sim.instances(), key=lambda i: i.created_at)
    assert first.destroyed and first.machine_id in status.excluded_machines
    await retire(stack, handle)


async def test_comfy_dying_after_ready_is_replaced(stack_factory: Make) -> None:
    stack: Stack = await stack_factory()
    stack.sim.add_fault(Fault(kind="comfy_dies_after", seconds=1.0, count=1))
    handle = await stack.start_slot()
    status = await wait_status(
        stack.env,
        handle,
        lambda s: s.state == S.READY and s.counters.keepalive_losses == 1,
        attempts=1500,
    )
    assert len(stack.sim.instances()) == 2
    assert status.counters.failures_by_reason == {"keepalive_lost": 1}
    await retire(stack, handle)


async def test_rate_limit_storm_keeps_exactly_one_instance(stack_factory: Make) -> None:
    stack: Stack = await stack_factory()
    stack.sim.add_fault(Fault(kind="rate_limit", value="json", probability=0.3))
    handle = await stack.start_slot()
    await ready(stack, handle)
    assert len(stack.sim.instances()) == 1
    assert stack.sim.call_counts["create"] >= 1
    await retire(stack, handle)


class DropAfterCreate(httpx.AsyncBaseTransport):
    """Forwards the first create, then loses the answer, as a crash right after it would."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.dropped = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "PUT" and "/asks/" in request.url.path and not self.dropped:
            self.dropped = True
            await response.aread()
            raise httpx.ReadTimeout("answer lost after create", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_crash_after_create_adopts_by_label_with_one_create(stack_factory: Make) -> None:
    stack: Stack = await stack_factory(wrap=DropAfterCreate)
    stack.sim.add_fault(Fault(kind="list_lag", seconds=1.0))
    handle = await stack.start_slot()
    await ready(stack, handle)
    creates = [c for c in stack.sim.calls if c.endpoint_key == "create"]
    assert len(creates) == 1, "a retried rent must adopt, never create again"
    assert len(stack.sim.instances()) == 1
    await retire(stack, handle)


async def test_wrong_portal_token_blocks_the_slot_instead_of_looping(stack_factory: Make) -> None:
    stack: Stack = await stack_factory()
    handle = await stack.start_slot()
    await wait_status(stack.env, handle, in_state(S.PROVISIONING, S.PROBING), attempts=1500)
    # Rotate the instance secret after the rent: the probes now send a token the portal refuses.
    stack.secrets.set(SecretName.INSTANCE, "a-different-secret")
    status = await wait_status(stack.env, handle, in_state(S.BLOCKED), attempts=1500)
    assert status.blocked_reason and "configuration error" in status.blocked_reason
    assert status.counters.failures_by_reason == {"portal_unauthorized": 1}
    assert len(stack.sim.instances()) == 1, "a config error does not rent again"
    await retire(stack, handle)
