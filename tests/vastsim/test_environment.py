"""Instances honour the studio's environment: nodes, models, their download times and faults.

Manifests are encoded here with a tiny helper of our own (gzip, base64, chunks), not with
`warmpool`, so the simulator and the product each follow the wire format on their own.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tests.vastsim.conftest import MakeSim
from tests.vastsim.helpers import COMFY_ENV, TOKEN, client, host_port, rent, wait_for, wait_running
from vastsim import Fault, Simulator
from vastsim.environment import EnvironmentFaults, ManifestError, ModelSpec, decode_manifest

AUTH = {"Authorization": f"Bearer {TOKEN}"}
MB = 1_000_000
# 2 GB per simulated second: 100 MB take 0.05 s; a node installs in 0.02 s
ENV_FAST: dict[str, Any] = {
    "download_bytes_per_s": 2000 * MB,
    "node_install_s": 0.02,
    "pip_install_s": 0.01,
    "model_unsized_s": 0.05,
}
HF = "https://huggingface.co/studio/models/resolve/main"
CIVITAI = "https://civitai.com/api/download/models"
TOKENS = {"HF_TOKEN": "hf_simvalidtoken000000000000000000", "CIVITAI_TOKEN": "sim-civitai-token"}
NODES = [
    "node\tComfyUI-Studio\thttps://github.com/studio/ComfyUI-Studio\tabc1234\tStudioLoader,StudioMix\t1",
    "node\tComfyUI-Extra\thttps://github.com/studio/ComfyUI-Extra\tdef5678\tExtraNode\t0",
    "pip\tonnxruntime-gpu==1.20.1",
]


def model(folder: str, file: str, url: str, size: int | None, required: bool = True) -> str:
    size_field = "-" if size is None else str(size)
    return f"model\t{folder}\t{file}\t{url}\t-\t{size_field}\t{int(required)}"


def manifest_env(lines: list[str], version: str = "v1", **extra: str) -> dict[str, str]:
    """The rent's env: ComfyUI ports and token, the version and the manifest in chunks."""
    packed = base64.b64encode(gzip.compress("\n".join(lines).encode())).decode()
    chunks = [packed[i : i + 200] for i in range(0, len(packed), 200)]
    env = {**COMFY_ENV, "WARMPOOL_ENV_VERSION": version, **extra}
    env.update({f"WARMPOOL_MANIFEST_{n:02}": chunk for n, chunk in enumerate(chunks)})
    env["WARMPOOL_SCRIPT_00"] = "IyEvYmluL2Jhc2gK"  # ignored: its effect is simulated
    return env


def studio_manifest(
    big: int = 300 * MB, small: int = 100 * MB, optional: int = 500 * MB
) -> list[str]:
    """Two nodes, two required models (HF, Civitai) and an optional one (plain HTTPS)."""
    return [
        *NODES,
        model("checkpoints", "studio-xl.safetensors", f"{HF}/studio-xl.safetensors", big),
        model("loras", "style.safetensors", f"{CIVITAI}/12345", small),
        model("vae", "extra-vae.safetensors", "https://files.example.com/vae.bin", optional, False),
    ]


async def offers_on_distinct_machines(api: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    query = {"rented": {"eq": False}, "rentable": {"eq": True}, "order": [["id", "asc"]]}
    offers = (await api.post("/bundles/", json=query)).json()["offers"]
    chosen: dict[int, dict[str, Any]] = {}
    for offer in offers:
        chosen.setdefault(offer["machine_id"], offer)
    assert len(chosen) >= count
    return list(chosen.values())[:count]


class Comfy:
    """One instance's ComfyUI through its portal, with the instance token."""

    def __init__(self, http: httpx.AsyncClient, instance: dict[str, Any]) -> None:
        self.http = http
        self.id = int(instance["id"])
        self.base = f"http://127.0.0.1:{host_port(instance)}"

    async def get(self, path: str) -> httpx.Response:
        return await self.http.get(f"{self.base}{path}", headers=AUTH)

    async def status(self) -> int:
        return (await self.get("/system_stats")).status_code

    async def ready(self, within: float = 5.0) -> None:
        async def up() -> bool:
            return await self.status() == 200

        await wait_for(up, within=within, interval=0.01)

    async def models(self, folder: str) -> list[str]:
        response = await self.get(f"/models/{folder}")
        assert response.status_code == 200
        files: list[str] = response.json()
        return files

    async def classes(self) -> set[str]:
        return set((await self.get("/object_info")).json())


async def start(
    api: httpx.AsyncClient,
    http: httpx.AsyncClient,
    env: dict[str, str],
    offer_id: int | None = None,
) -> Comfy:
    instance_id, _ = await rent(api, offer_id, env=env)
    return Comfy(http, await wait_running(api, instance_id))


async def provisioning_log(sim: Simulator, instance_id: int) -> list[str]:
    async with httpx.AsyncClient(base_url=sim.control_url) as control:
        answer = await control.get(f"/instances/{instance_id}/provisioning-log")
    assert answer.status_code == 200
    lines: list[str] = answer.json()["lines"]
    assert sim.provisioning_log(instance_id)[: len(lines)] == lines  # the same, or grown since
    return lines


# ---- the manifest on the instance ----


async def test_nodes_and_models_appear_after_a_time_proportional_to_sizes(
    make_sim: MakeSim,
) -> None:
    sim = await make_sim(**ENV_FAST)
    async with client(sim) as api, httpx.AsyncClient() as http:
        light_offer, heavy_offer = await offers_on_distinct_machines(api, 2)
        env = {**TOKENS}
        started = time.monotonic()
        light_env = manifest_env(studio_manifest(optional=1500 * MB), **env)
        light = await start(api, http, light_env, light_offer["id"])
        heavy_env = manifest_env(studio_manifest(big=900 * MB, small=300 * MB), **env)
        heavy = await start(api, http, heavy_env, heavy_offer["id"])
        assert await light.status() == await heavy.status() == 502  # provisioning: the placeholder

        await light.ready()
        light_s = time.monotonic() - started
        assert await heavy.status() == 502  # 800 MB more to download: 0.4 s more
        assert await light.models("checkpoints") == ["studio-xl.safetensors"]
        assert await light.models("loras") == ["style.safetensors"]
        assert await light.models("vae") == []  # optional: still downloading after ComfyUI is up
        classes = await light.classes()
        assert {"StudioLoader", "StudioMix", "ExtraNode", "EmptyImage", "SaveImage"} <= classes
        one = (await light.get("/object_info/StudioMix")).json()
        assert one["StudioMix"]["python_module"] == "custom_nodes.ComfyUI-Studio"
        assert {"input", "output", "output_node", "category", "display_name"} <= set(
            one["StudioMix"]
        )
        loader = (await light.get("/object_info/CheckpointLoaderSimple")).json()
        ckpt_name = loader["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"]
        assert ckpt_name == [["studio-xl.safetensors"]]

        await heavy.ready()
        heavy_s = time.monotonic() - started
    # running 0.09 s, nodes 0.04 s, pip 0.01 s, 0.2 s (light) or 0.6 s (heavy), boot 0.06 s
    assert 0.35 < light_s < 2.0
    assert heavy_s - light_s > 0.25


async def test_optional_models_arrive_after_ready(make_sim: MakeSim) -> None:
    sim = await make_sim(**ENV_FAST)
    async with client(sim) as api, httpx.AsyncClient() as http:
        comfy = await start(api, http, manifest_env(studio_manifest(optional=1000 * MB), **TOKENS))
        await comfy.ready()
        ready_at = time.monotonic()
        assert await comfy.models("vae") == []

        async def vae() -> list[str]:
            return await comfy.models("vae")

        assert await wait_for(vae) == ["extra-vae.safetensors"]
        assert time.monotonic() - ready_at > 0.3  # 0.5 s of download, less ComfyUI's boot
        log = await provisioning_log(sim, comfy.id)
    assert log[-2:] == [
        "warmpool: model vae/extra-vae.safetensors done",
        "warmpool: environment v1 complete",
    ]


async def test_models_listing_without_an_environment(sim: Simulator) -> None:
    async with client(sim) as api, httpx.AsyncClient() as http:
        comfy = await start(api, http, COMFY_ENV)
        await comfy.ready()
        folders = (await comfy.get("/models")).json()
        assert {"checkpoints", "loras", "vae", "text_encoders", "diffusion_models"} <= set(folders)
        assert await comfy.models("checkpoints") == []
        assert (await comfy.get("/api/models/loras")).json() == []
        unknown = await comfy.get("/models/no_such_kind")
        assert unknown.status_code == 404 and unknown.content == b""
        assert (await comfy.get("/object_info/StudioMix")).json() == {}
    assert await provisioning_log(sim, comfy.id) == []
    async with httpx.AsyncClient(base_url=sim.control_url) as control:
        assert (await control.get("/instances/1/provisioning-log")).status_code == 404


async def test_a_provisioning_script_url_takes_its_time_and_declares_nothing(
    make_sim: MakeSim,
) -> None:
    sim = await make_sim(provisioning_script_s=0.5, **ENV_FAST)
    sim.add_fault(Fault(kind="model_404", value="anything", count=1))
    async with client(sim) as api, httpx.AsyncClient() as http:
        env = {**COMFY_ENV, "PROVISIONING_SCRIPT": "https://example.com/provision.sh", **TOKENS}
        started = time.monotonic()
        comfy = await start(api, http, env)
        await asyncio.sleep(0.2)  # past the 0.15 s of an instance without provisioning
        assert await comfy.status() == 502
        await comfy.ready()
        assert time.monotonic() - started > 0.6  # 0.09 running + 0.5 script + 0.06 boot
        assert await comfy.models("checkpoints") == []
        assert "StudioLoader" not in await comfy.classes()
    assert sim.provisioning_log(comfy.id) == []
    assert sim.instances()[0].faults == ["model_404"]  # used up by this rental


async def test_an_unreadable_manifest_lets_comfy_start_and_says_so(sim: Simulator) -> None:
    env = {**COMFY_ENV, "WARMPOOL_ENV_VERSION": "v9", "WARMPOOL_MANIFEST_00": "not base64!"}
    async with client(sim) as api, httpx.AsyncClient() as http:
        comfy = await start(api, http, env)
        await comfy.ready()
        log = await provisioning_log(sim, comfy.id)
    assert log == ["warmpool: environment v9 incomplete: unpack failed"]  # the bootstrap's words


def test_manifest_decoding() -> None:
    env = manifest_env(
        [*studio_manifest(), model("unet", "f.gguf", "https://x/f", None), "future\tx"]
    )
    decoded = decode_manifest(env)
    assert decoded is not None
    assert [n.name for n in decoded.nodes] == ["ComfyUI-Studio", "ComfyUI-Extra"]
    assert decoded.nodes[0].classes == ("StudioLoader", "StudioMix") and decoded.nodes[0].required
    assert not decoded.nodes[1].required and decoded.pip == ("onnxruntime-gpu==1.20.1",)
    assert [(m.path, m.size, m.required) for m in decoded.models] == [
        ("checkpoints/studio-xl.safetensors", 300 * MB, True),
        ("loras/style.safetensors", 100 * MB, True),
        ("vae/extra-vae.safetensors", 500 * MB, False),
        ("unet/f.gguf", None, True),
    ]
    assert decoded.ignored == ("future",)
    assert decode_manifest(COMFY_ENV) is None
    with pytest.raises(ManifestError, match="numbered"):
        decode_manifest({"WARMPOOL_MANIFEST_00": "H4sI", "WARMPOOL_MANIFEST_02": "AAAA"})
    with pytest.raises(ManifestError, match="fields"):
        decode_manifest(manifest_env(["node\tonly-a-name"]))
    with pytest.raises(ManifestError, match="size"):
        decode_manifest(
            manifest_env([model("vae", "v", "https://x/v", None).replace("\t-\t1", "\tbig\t1")])
        )


# ---- faults ----


async def test_model_404_scoped_to_one_machine(make_sim: MakeSim) -> None:
    sim = await make_sim(**ENV_FAST)
    async with client(sim) as api, httpx.AsyncClient() as http:
        broken_offer, healthy_offer = await offers_on_distinct_machines(api, 2)
        async with httpx.AsyncClient(base_url=sim.control_url) as control:
            for matcher in ("studio-xl.safetensors", "files.example.com/vae"):
                fault = {
                    "kind": "model_404",
                    "value": matcher,
                    "machine_id": broken_offer["machine_id"],
                }
                assert (await control.post("/faults", json=fault)).status_code == 200
            missing_value = await control.post("/faults", json={"kind": "model_404"})
            assert missing_value.status_code == 400
        env = manifest_env(studio_manifest(optional=100 * MB), **TOKENS)
        broken = await start(api, http, env, broken_offer["id"])
        healthy = await start(api, http, env, healthy_offer["id"])
        await broken.ready()  # a required model failed: ComfyUI starts all the same
        await healthy.ready()
        assert await broken.models("checkpoints") == []
        assert await broken.models("loras") == ["style.safetensors"]
        assert await healthy.models("checkpoints") == ["studio-xl.safetensors"]

        async def both_vaes() -> bool:
            return await healthy.models("vae") == ["extra-vae.safetensors"]

        await wait_for(both_vaes)
        await asyncio.sleep(0.05)
        assert await broken.models("vae") == []  # the optional one never appears either
        log = await provisioning_log(sim, broken.id)
    assert "warmpool: model checkpoints/studio-xl.safetensors FAILED: http 404" in log
    assert (
        "warmpool: environment v1 required incomplete: model checkpoints/studio-xl.safetensors"
    ) in log
    assert log[-1] == (
        "warmpool: environment v1 incomplete: model checkpoints/studio-xl.safetensors, "
        "model vae/extra-vae.safetensors (optional)"
    )
    assert sim.provisioning_log(healthy.id)[-1] == "warmpool: environment v1 complete"
    kinds = {info.id: info.faults for info in sim.instances()}
    assert kinds == {broken.id: ["model_404"], healthy.id: []}


async def test_token_refused_and_a_missing_token(make_sim: MakeSim) -> None:
    sim = await make_sim(**ENV_FAST)
    sim.add_fault(Fault(kind="token_refused", value="civitai", count=1))
    async with client(sim) as api, httpx.AsyncClient() as http:
        refused = await start(api, http, manifest_env(studio_manifest(), **TOKENS))
        no_hf = await start(api, http, manifest_env(studio_manifest(), CIVITAI_TOKEN="c"))
        await refused.ready()
        await no_hf.ready()
        assert await refused.models("checkpoints") == ["studio-xl.safetensors"]  # HF accepted
        assert await refused.models("loras") == []  # Civitai refused the token
        assert await no_hf.models("checkpoints") == []  # no HF_TOKEN: 401
        assert await no_hf.models("loras") == ["style.safetensors"]
        refused_log = await provisioning_log(sim, refused.id)
        no_hf_log = await provisioning_log(sim, no_hf.id)
    assert "warmpool: model loras/style.safetensors FAILED: http 401" in refused_log
    assert "warmpool: model checkpoints/studio-xl.safetensors FAILED: http 401" in no_hf_log
    with pytest.raises(ValidationError):
        Fault(kind="token_refused", value="github")


async def test_slow_host_divides_the_bandwidth(make_sim: MakeSim) -> None:
    sim = await make_sim(**ENV_FAST)
    async with client(sim) as api, httpx.AsyncClient() as http:
        slow_offer, fast_offer = await offers_on_distinct_machines(api, 2)
        sim.add_fault(Fault(kind="slow_host", factor=5, machine_id=slow_offer["machine_id"]))
        env = manifest_env(studio_manifest(big=200 * MB, small=50 * MB), **TOKENS)
        started = time.monotonic()
        slow = await start(api, http, env, slow_offer["id"])
        fast = await start(api, http, env, fast_offer["id"])
        await fast.ready()
        fast_s = time.monotonic() - started
        assert await slow.status() == 502  # 0.125 s of downloads take 0.625 s there
        await slow.ready()
        slow_s = time.monotonic() - started
    assert slow_s - fast_s > 0.3
    with pytest.raises(ValidationError, match="factor"):
        Fault(kind="slow_host")


async def test_node_import_fails_hides_its_classes_only(make_sim: MakeSim) -> None:
    sim = await make_sim(**ENV_FAST)
    async with httpx.AsyncClient(base_url=sim.control_url) as control:
        fault = {"kind": "node_import_fails", "value": "ComfyUI-Studio"}
        assert (await control.post("/faults", json=fault)).status_code == 200
    async with client(sim) as api, httpx.AsyncClient() as http:
        comfy = await start(api, http, manifest_env(studio_manifest(), **TOKENS))
        await comfy.ready()
        classes = await comfy.classes()
        assert "ExtraNode" in classes and not {"StudioLoader", "StudioMix"} & classes
        assert (await comfy.get("/object_info/StudioLoader")).json() == {}
        log = await provisioning_log(sim, comfy.id)
    assert "warmpool: node ComfyUI-Studio at abc1234 done" in log  # it installed


# ---- the provisioning log ----


async def test_provisioning_log_lines(make_sim: MakeSim, tmp_path: Path) -> None:
    """provision.sh's lines, at its times: 50x speed, 100 bytes per simulated second."""
    log_file = tmp_path / "provisioning.log"
    sim = await make_sim(
        speed=50,
        download_bytes_per_s=100,
        node_install_s=1,
        pip_install_s=1,
        model_unsized_s=2,
        provisioning_log_path=str(log_file),
    )
    sim.add_fault(Fault(kind="model_404", value="missing.safetensors"))
    lines = [
        NODES[0],
        NODES[2],
        model("checkpoints", "base.safetensors", f"{HF}/base.safetensors", 1200),  # 12 s
        model("loras", "missing.safetensors", "https://files.example.com/missing", 10),
        model("unet", "flux.gguf", "https://files.example.com/flux.gguf", 100, False),
        model("embeddings", "unsized.pt", "https://files.example.com/unsized.pt", None, False),
    ]
    async with client(sim) as api, httpx.AsyncClient() as http:
        comfy = await start(api, http, manifest_env(lines, version="sha-42", **TOKENS))
        early = await provisioning_log(sim, comfy.id)

        async def finished() -> list[str] | None:
            log = await provisioning_log(sim, comfy.id)
            return log if log and log[-1].startswith("warmpool: environment sha-42 inc") else None

        log = await wait_for(finished)
        await comfy.ready()
        assert await comfy.models("embeddings") == ["unsized.pt"]
        assert await comfy.models("diffusion_models") == ["flux.gguf"]
        assert (await comfy.get("/models/unet")).status_code == 404  # a legacy name: not a kind

        async def written() -> list[str] | None:
            text = log_file.read_text() if log_file.exists() else ""
            return text.splitlines() if text.count("\n") == len(log) else None

        assert await wait_for(written) == log
    assert len(early) < len(log)  # the lines come as provisioning goes
    base = "warmpool: model checkpoints/base.safetensors"
    assert log == [
        "warmpool: environment sha-42 start",
        "warmpool: node ComfyUI-Studio at abc1234 done",
        "warmpool: pip onnxruntime-gpu==1.20.1 done",
        f"{base} 41% (500/1200 bytes)",  # every 5 s (WARMPOOL_PROGRESS_SECONDS) while it runs
        f"{base} 83% (1000/1200 bytes)",
        f"{base} 100% (1200/1200 bytes)",
        f"{base} done",
        "warmpool: model loras/missing.safetensors FAILED: http 404",
        "warmpool: environment sha-42 required incomplete: model loras/missing.safetensors",
        "warmpool: model unet/flux.gguf 100% (100/100 bytes)",
        "warmpool: model unet/flux.gguf done",
        "warmpool: model embeddings/unsized.pt 200 bytes",
        "warmpool: model embeddings/unsized.pt done",
        "warmpool: environment sha-42 incomplete: model loras/missing.safetensors",
    ]


def test_which_downloads_get_a_token() -> None:
    """provision.sh sends HF_TOKEN only to huggingface.co over https, CIVITAI_TOKEN only to
    civitai.com: anything else on those sites answers 401."""
    faults = EnvironmentFaults()

    def fault(url: str, **env: str) -> str | None:
        return faults.model_fault(ModelSpec("loras", "x", url, None, 10, True), env)

    assert fault(f"{HF}/x", HF_TOKEN="t") is None
    assert fault("https://cdn-lfs.huggingface.co/x", HF_TOKEN="t") is None
    assert fault("https://hf.co/studio/x", HF_TOKEN="t") == "http 401"  # short link: no token
    assert fault("http://huggingface.co/x", HF_TOKEN="t") == "http 401"  # not over https
    assert fault(f"{HF}/x", CIVITAI_TOKEN="t") == "http 401"
    assert fault(f"{CIVITAI}/1", CIVITAI_TOKEN="t") is None
    assert fault("https://files.example.com/x") is None
    refused = EnvironmentFaults.from_faults([Fault(kind="token_refused")])
    assert refused.model_fault(ModelSpec("vae", "v", f"{HF}/v", None, 1, False), TOKENS)
