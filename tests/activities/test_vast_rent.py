"""vast.rent after a create whose answer was lost: a failed look-up neither ends the wait for the
label nor lets the rent create a second instance (found by the chaos suite's API-fault run). And
the rent's env: the pool's environment (manifest, script, bootstrap), the tokens it declares, the
portal token and ports last."""

from __future__ import annotations

import dataclasses
import json
import secrets as random_secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.vast import CREATE_SENT, RentInput, VastActivities
from tests.helpers import assert_eventually
from tests.vastsim.helpers import FAST
from vastsim import Fault, Simulator
from warmpool.environment import (
    Environment,
    bootstrap,
    decode_manifest,
    decode_script,
    manifest_lines,
    parse_environment,
    shipped_script,
)
from warmpool.errors import ErrorType
from warmpool.instance_token import derive_instance_token
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


def activities(vast: VastClient, **tokens: str) -> VastActivities:
    secrets = EnvSecretStore({"WARMPOOL_INSTANCE_SECRET": "rent-test-secret", **tokens})
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


# --- the rent's env ---------------------------------------------------------------------------

HF = "hf_simvalidtoken000000000000000000"
CIVITAI = "sim-civitai-token"
TOKENS = {"HF_TOKEN": HF, "CIVITAI_TOKEN": CIVITAI}
PORTAL = derive_instance_token(b"rent-test-secret", LABEL)


class CreateRecorder(httpx.AsyncBaseTransport):
    """The real transport, keeping every create body (PUT /asks/{id}/) the activity sent."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.creates: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and "/asks/" in request.url.path:
            self.creates.append(json.loads(await request.aread()))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
async def recorded(sim: Simulator) -> AsyncIterator[tuple[VastClient, CreateRecorder]]:
    recorder = CreateRecorder()
    client = VastClient(sim.base_url, lambda: sim.api_key, timeout=5, transport=recorder)
    yield client, recorder
    await client.aclose()


def studio(**changes: Any) -> Environment:
    """Two node packs, pip, two required models and an optional one; HF declared."""
    data: dict[str, Any] = {
        "nodes": [
            {
                "name": "comfyui-foo",
                "git": "https://g/foo",
                "commit": "0123abc",
                "classes": ["Foo"],
            },
            {
                "name": "comfyui-bar",
                "git": "https://g/bar",
                "commit": "0123abd",
                "classes": ["Bar"],
            },
        ],
        "pip": ["rich>=13"],
        "models": [
            {
                "url": "https://huggingface.co/s/resolve/main/xl.safetensors",
                "folder": "checkpoints",
                "file": "xl.safetensors",
                "size": 1000,
            },
            {"url": "https://files.example.com/vae", "folder": "vae", "file": "v.pt", "size": 10},
            {
                "url": "https://files.example.com/lora",
                "folder": "loras",
                "file": "l.safetensors",
                "required": False,
            },
        ],
        "env": {"STUDIO_MODE": "warm"},
        "secrets": ["hf"],
    }
    data.update(changes)
    return parse_environment(data)


async def rent_with(
    sim: Simulator, client: VastClient, recorder: CreateRecorder, **changes: Any
) -> tuple[int, dict[str, Any]]:
    """Rent once with `changes` to the input and both tokens in the worker's secrets; the
    instance id and the create body sent."""
    tokens = changes.pop("tokens", TOKENS)
    rent = rent_input(sim).model_copy(update=changes)
    result = await ActivityEnvironment().run(activities(client, **tokens).rent, rent)
    assert not result.adopted and len(recorder.creates) == 1
    return result.instance_id, recorder.creates[0]


async def test_the_rent_carries_the_environment_and_only_the_declared_token(
    sim: Simulator, recorded: tuple[VastClient, CreateRecorder]
) -> None:
    env = studio()
    instance_id, body = await rent_with(sim, *recorded, environment=env)
    sent: dict[str, str] = body["env"]
    assert sent["WARMPOOL_ENV_VERSION"] == env.version
    assert decode_manifest(sent) == manifest_lines(env)
    assert decode_script(sent) == shipped_script()
    assert any(k.startswith("WARMPOOL_MANIFEST_") for k in sent)
    assert sent["STUDIO_MODE"] == "warm"
    assert sent["HF_TOKEN"] == HF and "CIVITAI_TOKEN" not in sent  # only `hf` is declared
    assert sent["OPEN_BUTTON_TOKEN"] == PORTAL and sent["OPEN_BUTTON_PORT"] == "8188"
    assert sent["-p 8188:8188"] == "1"
    assert body["onstart"] == bootstrap("entrypoint.sh")  # no onstart given: the image's own
    # the token never entered the activity's input (what workflow history would hold)
    assert HF not in rent_input(sim).model_copy(update={"environment": env}).model_dump_json()
    # the simulator unpacked the manifest: the instance provisions this version
    expected = f"warmpool: environment {env.version} start"

    async def started() -> list[str]:
        return sim.provisioning_log(instance_id)

    log = await assert_eventually(started, lambda lines: expected in lines, timeout=5)
    assert log[0] == expected


async def test_without_an_environment_the_rent_is_as_before(
    sim: Simulator, recorded: tuple[VastClient, CreateRecorder]
) -> None:
    _, body = await rent_with(sim, *recorded, onstart="entrypoint.sh")
    assert body["env"] == {
        "-p 8188:8188": "1",
        "OPEN_BUTTON_PORT": "8188",
        "OPEN_BUTTON_TOKEN": PORTAL,
        **TOKENS,
    }
    assert body["onstart"] == "entrypoint.sh"


@pytest.mark.parametrize(
    ("declared", "expected"),
    [([], set()), (["civitai"], {"CIVITAI_TOKEN"}), (["hf", "civitai"], set(TOKENS))],
)
async def test_tokens_follow_the_environments_secrets(
    sim: Simulator,
    recorded: tuple[VastClient, CreateRecorder],
    declared: list[str],
    expected: set[str],
) -> None:
    _, body = await rent_with(sim, *recorded, environment=studio(secrets=declared))
    assert set(body["env"]) & set(TOKENS) == expected


async def test_a_declared_token_the_worker_lacks_is_left_out(
    sim: Simulator, recorded: tuple[VastClient, CreateRecorder]
) -> None:
    _, body = await rent_with(sim, *recorded, environment=studio(), tokens={})
    assert not set(body["env"]) & set(TOKENS)


async def test_a_provisioning_script_keeps_the_images_onstart(
    sim: Simulator, recorded: tuple[VastClient, CreateRecorder]
) -> None:
    env = parse_environment({"provisioning_script": "https://studio.example/provision.sh"})
    _, body = await rent_with(sim, *recorded, environment=env, onstart="entrypoint.sh")
    assert body["env"]["PROVISIONING_SCRIPT"] == "https://studio.example/provision.sh"
    assert body["env"]["WARMPOOL_ENV_VERSION"] == env.version
    assert not any(k.startswith("WARMPOOL_MANIFEST_") for k in body["env"])
    assert body["onstart"] == "entrypoint.sh"


async def test_the_portal_token_and_ports_win_over_the_environment(
    sim: Simulator, recorded: tuple[VastClient, CreateRecorder]
) -> None:
    """Validation refuses these names in `env`; an environment built around it still loses."""
    sneaky = Environment.model_construct(
        **{
            **studio().__dict__,
            "env": {"OPEN_BUTTON_TOKEN": "known", "OPEN_BUTTON_PORT": "1111", "-p 8188:8188": "0"},
        }
    )
    _, body = await rent_with(sim, *recorded, environment=sneaky)
    assert body["env"]["OPEN_BUTTON_TOKEN"] == PORTAL
    assert body["env"]["OPEN_BUTTON_PORT"] == "8188" and body["env"]["-p 8188:8188"] == "1"


async def test_an_environment_too_large_for_a_rent_is_a_configuration_error(
    sim: Simulator, recorded: tuple[VastClient, CreateRecorder]
) -> None:
    models = [
        {
            "url": f"https://files.example.com/{i}",
            "folder": "loras",
            "file": f"m{i}.safetensors",
            "sha256": random_secrets.token_hex(32),
            "size": 1000 + i,
        }
        for i in range(400)
    ]
    with pytest.raises(ApplicationError) as failed:
        await rent_with(sim, *recorded, environment=studio(models=models))
    assert failed.value.type == ErrorType.CONFIGURATION and failed.value.non_retryable
    assert "does not fit" in str(failed.value)
    assert recorded[1].creates == [] and sim.call_counts.get("create", 0) == 0
