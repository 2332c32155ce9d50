"""comfy.check_environment against the simulator: an instance rented with the studio's environment
(by `vast.rent`, so the manifest travels as the product sends it), its ComfyUI behind the
token-gated portal on the port the provider maps, found by `comfy.validate_ports` as the slot
finds it; one check per call, as the slot's loop makes them.

The simulator starts ComfyUI only once the required models are in place (as provision.sh under
the `/.provisioning` marker); a real image may start it earlier (its entrypoint removes the marker
at the end of its own boot). Optional models, which keep downloading after ComfyUI starts, stand
in for that here: the checks ask for one of them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.testing import ActivityEnvironment

from activities.comfy import ComfyActivities, ProbeInput
from activities.vast import RentInput, VastActivities
from tests.helpers import Stranger, assert_eventually, running_stranger
from tests.vastsim.helpers import FAST
from vastsim import Fault, Simulator
from warmpool.comfy import tls_context
from warmpool.environment import (
    Environment,
    EnvironmentCheckInput,
    EnvironmentReport,
    ReadinessChecks,
    parse_environment,
    provisioning_progress,
    required_checks,
)
from warmpool.errors import ErrorType
from warmpool.listing import SharedListing
from warmpool.models import ProbeConfig
from warmpool.secrets import EnvSecretStore
from warmpool.vast import VastClient

MB = 1_000_000
SECRETS = {
    "WARMPOOL_INSTANCE_SECRET": "environment-check-secret",
    "HF_TOKEN": "hf_simvalidtoken000000000000000000",
    "CIVITAI_TOKEN": "sim-civitai-token",
}
# 2 GB per simulated second: 100 MB take 0.05 s; a node installs in 0.02 s
SIM = FAST.model_copy(
    update={
        "download_bytes_per_s": 2000 * MB,
        "node_install_s": 0.02,
        "pip_install_s": 0.01,
        "model_unsized_s": 0.05,
    }
)
HF = "https://huggingface.co/studio/models/resolve/main"
FINAL = re.compile(r"warmpool: environment \S+ (complete|incomplete: .*)$")


def studio(big_optional: int = 600 * MB, **changes: Any) -> Environment:
    """Two node packs, two required models (HF, Civitai), a big optional one."""
    data: dict[str, Any] = {
        "nodes": [
            {
                "name": "ComfyUI-Studio",
                "git": "https://github.com/studio/ComfyUI-Studio",
                "commit": "abc1234",
                "classes": ["StudioLoader", "StudioMix"],
            },
            {
                "name": "ComfyUI-Extra",
                "git": "https://github.com/studio/ComfyUI-Extra",
                "commit": "def5678",
                "classes": ["ExtraNode"],
            },
        ],
        "models": [
            {
                "url": f"{HF}/studio-xl.safetensors",
                "folder": "checkpoints",
                "file": "studio-xl.safetensors",
                "size": 100 * MB,
            },
            {
                "url": "https://civitai.com/api/download/models/12345",
                "folder": "loras",
                "file": "style.safetensors",
                "size": 20 * MB,
            },
            {
                "url": "https://files.example.com/big.safetensors",
                "folder": "diffusion_models",
                "file": "big.safetensors",
                "size": big_optional,
                "required": False,
            },
        ],
        "secrets": ["hf", "civitai"],
    }
    data.update(changes)
    return parse_environment(data)


def all_required(env: Environment) -> ReadinessChecks:
    """The checks of `env` with its optional models required too (see the module docstring)."""
    everything = env.model_copy(
        update={"models": [m.model_copy(update={"required": True}) for m in env.models]}
    )
    return required_checks(everything)


@dataclass
class Stack:
    sim: Simulator
    vast: VastActivities
    comfy: ComfyActivities
    listing: SharedListing
    stranger: Stranger

    async def rent(self, env: Environment, label: str = "wp.envcheck.0.1") -> int:
        offer = next(o for o in self.sim.offers() if o["rentable"])
        rent = RentInput(
            offer_id=int(str(offer["id"])),
            label=label,
            image="vastai/comfyui:latest",
            disk_gb=250,
            runtype=None,
            onstart=None,
            ports=[8188],
            environment=env,
        )
        result = await ActivityEnvironment().run(self.vast.rent, rent)
        return result.instance_id

    async def validated_url(self, instance_id: int, label: str = "wp.envcheck.0.1") -> str:
        """The connection URL as the slot gets it: `comfy.validate_ports` once ComfyUI is up."""

        async def url() -> str | None:
            observed = await self.listing.observe(instance_id)
            if observed.instance is None:
                return None
            probe = ProbeInput(label=label, instance=observed.instance, probe=ProbeConfig())
            report = await ActivityEnvironment().run(self.comfy.validate_ports, probe)
            return report.url

        found = await assert_eventually(url, timeout=10, interval=0.02)
        assert found is not None
        return found

    async def check(
        self, url: str, checks: ReadinessChecks, label: str = "wp.envcheck.0.1"
    ) -> EnvironmentReport:
        check = EnvironmentCheckInput(label=label, url=url, checks=checks)
        return await ActivityEnvironment().run(self.comfy.check_environment, check)


@pytest.fixture(scope="module")
def stranger() -> Iterator[Stranger]:
    """Another tenant's ComfyUI on port 8188 of the instances' public IP: never to be asked (one
    for the module: its shutdown takes half a second)."""
    with running_stranger() as other:
        yield other
    other.assert_no_token()


@pytest.fixture
async def stack(stranger: Stranger) -> AsyncIterator[Stack]:
    config = SIM.model_copy(update={"public_host": stranger.host})
    async with Simulator(config) as sim:
        client = VastClient(sim.base_url, lambda: sim.api_key, timeout=5)
        secrets = EnvSecretStore(SECRETS)
        listing = SharedListing(client, ttl=0)
        yield Stack(
            sim=sim,
            vast=VastActivities(client, listing, secrets),
            comfy=ComfyActivities(listing, secrets, tls_context()),
            listing=listing,
            stranger=stranger,
        )
        await client.aclose()
    assert stranger.requests == [], "only the validated URL is ever asked"


async def test_missing_until_the_download_ends_then_nothing(stack: Stack) -> None:
    env = studio(big_optional=3000 * MB)  # 1.5 s of download after ComfyUI starts
    instance_id = await stack.rent(env)
    url = await stack.validated_url(instance_id)
    mapped = stack.sim.live_instances()[0].host_ports["8188/tcp"]
    assert url == f"http://{stack.stranger.host}:{mapped}" and mapped != stack.stranger.port

    # what READY requires of the environment as declared: there already
    declared = await stack.check(url, required_checks(env))
    assert declared.missing == [] and declared.complete
    assert declared.models_found == {"checkpoints": 1, "loras": 1}
    assert declared.classes_found > 3  # ComfyUI's own classes and the packs'

    # a model still downloading is named, and the counts say what was listed
    checks = all_required(env)
    early = await stack.check(url, checks)
    assert early.missing == ["model diffusion_models/big.safetensors"]
    assert early.models_found == {"checkpoints": 1, "diffusion_models": 0, "loras": 1}
    assert early.notes == []
    progress = provisioning_progress(stack.sim.provisioning_log(instance_id), env=env)
    assert progress is not None
    assert progress.startswith("downloading diffusion_models/big.safetensors") or progress == (
        f"environment {env.version} required complete, "
        "downloading diffusion_models/big.safetensors (optional)"
    )

    async def check() -> EnvironmentReport:
        return await stack.check(url, checks)

    done = await assert_eventually(check, lambda r: r.complete, timeout=10, interval=0.05)
    assert done.models_found["diffusion_models"] == 1
    assert provisioning_progress(stack.sim.provisioning_log(instance_id)) == (
        f"environment {env.version} complete"
    )


async def test_a_model_that_404s_stays_missing(stack: Stack) -> None:
    stack.sim.add_fault(Fault(kind="model_404", value="studio-xl.safetensors"))
    env = studio(big_optional=10 * MB)
    instance_id = await stack.rent(env)
    url = await stack.validated_url(instance_id)  # a failed model: ComfyUI starts all the same

    async def finished() -> bool:
        log = stack.sim.provisioning_log(instance_id)
        return bool(log) and FINAL.match(log[-1]) is not None

    await assert_eventually(finished, timeout=5)
    for _ in range(2):
        report = await stack.check(url, required_checks(env))
        assert report.missing == ["model checkpoints/studio-xl.safetensors"]
        assert report.models_found == {"checkpoints": 0, "loras": 1}
    assert provisioning_progress(stack.sim.provisioning_log(instance_id)) == (
        f"environment {env.version} incomplete: model checkpoints/studio-xl.safetensors"
    )


async def test_a_node_pack_that_does_not_import_is_named(stack: Stack) -> None:
    stack.sim.add_fault(Fault(kind="node_import_fails", value="ComfyUI-Studio"))
    env = studio(big_optional=10 * MB)
    url = await stack.validated_url(await stack.rent(env))
    report = await stack.check(url, required_checks(env))
    assert report.missing == [
        "node class StudioLoader (from ComfyUI-Studio)",
        "node class StudioMix (from ComfyUI-Studio)",
    ]


async def test_a_folder_comfyui_does_not_know_is_a_note_and_its_models_missing(
    stack: Stack,
) -> None:
    env = studio(big_optional=10 * MB)
    url = await stack.validated_url(await stack.rent(env))
    checks = ReadinessChecks(version=env.version, models=[("no_such_kind", "x.pt")])
    report = await stack.check(url, checks)
    assert report.missing == ["model no_such_kind/x.pt"]
    assert report.models_found == {"no_such_kind": 0} and report.classes_found == 0
    assert report.notes == [
        "ComfyUI has no models folder 'no_such_kind' (/models/no_such_kind answered 404): its "
        "models count as missing"
    ]


async def test_a_refused_token_is_the_probes_configuration_error(stack: Stack) -> None:
    env = studio(big_optional=10 * MB)
    url = await stack.validated_url(await stack.rent(env))
    with pytest.raises(ApplicationError) as refused:
        await stack.check(url, required_checks(env), label="wp.envcheck.0.2")  # another token
    assert refused.value.type == ErrorType.PORTAL_UNAUTHORIZED and refused.value.non_retryable
    assert "instance token" in str(refused.value)


async def test_comfyui_down_behind_the_portal_is_retryable(stack: Stack) -> None:
    env = studio(big_optional=10 * MB)
    instance_id = await stack.rent(env)
    url = await stack.validated_url(instance_id)
    await stack.sim.kill_comfy(instance_id)
    with pytest.raises(ApplicationError) as down:
        await stack.check(url, required_checks(env))
    assert down.value.type == ErrorType.NOT_READY and not down.value.non_retryable
    assert down.value.category == ApplicationErrorCategory.BENIGN  # the portal's placeholder


async def test_nothing_listening_is_retryable(stack: Stack) -> None:
    env = studio(big_optional=10 * MB)
    url = await stack.validated_url(await stack.rent(env))
    await ActivityEnvironment().run(
        stack.vast.destroy, stack.sim.live_instances()[0].id
    )  # the port closes with the instance

    async def refused() -> ApplicationError | None:
        try:
            await stack.check(url, required_checks(env))
        except ApplicationError as exc:
            return exc if "no answer" in str(exc) or "Connect" in str(exc) else None
        return None

    failure = await assert_eventually(refused, timeout=5)
    assert failure is not None and failure.type == ErrorType.NOT_READY and not failure.non_retryable
    assert failure.category == ApplicationErrorCategory.UNSPECIFIED


async def test_no_checks_no_requests(stack: Stack) -> None:
    """An environment that declares nothing (a provisioning_script URL) needs no request."""
    report = await stack.check(stack.stranger.url, ReadinessChecks(version="env-000000000000"))
    assert report == EnvironmentReport(missing=[], classes_found=0, models_found={})
