"""The environment declaration: validation naming the field, the version as a content hash, the
wire format an instance receives (and its size limits), and what readiness checks."""

from __future__ import annotations

import base64
import gzip
import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from warmpool.environment import (
    CHUNK_CHARS,
    ENV_BUDGET,
    ENV_ENTRY_MAX,
    MANIFEST_PREFIX,
    ONSTART_MAX,
    SCRIPT_PREFIX,
    VERSION_VAR,
    Environment,
    EnvironmentFileError,
    EnvironmentTooLarge,
    ModelSpec,
    NodeSpec,
    ReadinessChecks,
    check_fits,
    decode_chunks,
    decode_manifest,
    decode_script,
    encode_chunks,
    instance_setup,
    load_environment,
    manifest_lines,
    missing,
    parse_environment,
    provisioning_progress,
    required_checks,
    secret_env_names,
    shipped_script,
)

EXAMPLE = Path(__file__).parents[2] / "examples" / "environment.yaml"
SHA = "0" * 63 + "1"


def studio_env() -> dict[str, Any]:
    """Two nodes (one optional), three models (one optional), pip, env, secrets."""
    return {
        "image": "vastai/comfyui:v0.3.64",
        "fallback_image": "vastai/comfyui:slim",
        "nodes": [
            {
                "name": "comfyui-foo",
                "git": "https://github.com/studio/comfyui-foo",
                "commit": "0123abc",
                "classes": ["FooNode", "Foo Loader"],
            },
            {
                "name": "comfyui-bar",
                "git": "https://github.com/studio/comfyui-bar.git",
                "commit": "a" * 40,
                "classes": ["BarNode"],
                "required": False,
            },
        ],
        "pip": ["onnxruntime-gpu>=1.18", "insightface==0.7.3"],
        "models": [
            {
                "url": "https://huggingface.co/stabilityai/sdxl/resolve/main/sd_xl_base_1.0.safetensors",
                "folder": "checkpoints",
                "file": "sdxl.safetensors",
                "sha256": SHA,
                "size": 6_938_078_334,
            },
            {
                "url": "https://civitai.com/api/download/models/12345",
                "folder": "loras",
                "file": "style.safetensors",
            },
            {
                "url": "https://example.com/upscale.pth",
                "folder": "upscale_models",
                "file": "4x.pth",
                "required": False,
            },
        ],
        "env": {"COMFYUI_EXTRA": "1", "TOKENIZERS_PARALLELISM": "false"},
        "secrets": ["hf", "civitai"],
    }


def problems_of(data: object) -> list[str]:
    with pytest.raises(EnvironmentFileError) as caught:
        parse_environment(data, source="env.yaml")
    return caught.value.problems


# --- validation ----------------------------------------------------------------------------------


def test_the_studio_example_is_valid() -> None:
    env = parse_environment(studio_env())
    assert env.secrets == ["civitai", "hf"]
    assert env.declarative


def test_the_shipped_example_file_loads() -> None:
    env = load_environment(EXAMPLE)
    assert len(env.nodes) == 2 and len(env.models) == 3
    check_fits(env)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("models", 1, "sha256"), "abc", "models[1].sha256"),
        (("models", 0, "size"), 0, "models[0].size"),
        (("models", 0, "url"), "ftp://host/x", "models[0].url"),
        (("models", 2, "folder"), "Check Points", "models[2].folder"),
        (("models", 2, "file"), "../etc/passwd", "models[2].file"),
        (("models", 2, "file"), "a/b.safetensors", "models[2].file"),
        (("models", 2, "file"), "x.safetensors.part", "models[2].file"),
        (("nodes", 0, "name"), "../evil", "nodes[0].name"),
        (("nodes", 0, "name"), ".hidden", "nodes[0].name"),
        (("nodes", 1, "git"), "git@github.com:x/y.git", "nodes[1].git"),
        (("nodes", 1, "git"), "ssh://github.com/x/y", "nodes[1].git"),
        (("nodes", 0, "commit"), "main", "nodes[0].commit"),
        (("nodes", 0, "commit"), "abc12", "nodes[0].commit"),
        (("nodes", 0, "commit"), 1234567, "nodes[0].commit"),
        (("nodes", 0, "classes", 1), "A,B", "nodes[0].classes[1]"),
        (("pip", 0), "numpy; rm -rf /", "pip[0]"),
        (("pip", 1), "--index-url=https://evil", "pip[1]"),
        (("pip", 1), "$(curl x)", "pip[1]"),
        (("secrets", 0), "vast", "secrets[0]"),
        (("provisioning_script",), "http://x/p.sh", "provisioning_script"),
    ],
)
def test_a_bad_value_names_its_field(
    path: tuple[str | int, ...], value: object, field: str
) -> None:
    data = studio_env()
    target: Any = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    found = problems_of(data)
    assert any(p.startswith(f"env.yaml: {field}: ") for p in found), found
    assert all("pydantic" not in p and "https://errors" not in p for p in found)


def test_unknown_fields_are_refused() -> None:
    data = studio_env()
    data["models"][0]["checksum"] = SHA
    assert problems_of(data) == ["env.yaml: models[0].checksum: unknown field"]


def test_every_problem_gets_its_own_line() -> None:
    data = studio_env()
    data["models"][1]["sha256"] = "abc"
    data["nodes"][0]["commit"] = "zzz"
    found = problems_of(data)
    assert len(found) == 2
    assert {p.split(":")[1].strip() for p in found} == {"nodes[0].commit", "models[1].sha256"}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("HF_TOKEN", "secrets"),
        ("CIVITAI_TOKEN", "secrets"),
        ("OPEN_BUTTON_TOKEN", "set by the pool"),
        ("OPEN_BUTTON_PORT", "set by the pool"),
        ("WEB_PASSWORD", "set by the pool"),
        ("PROVISIONING_SCRIPT", "set by the pool"),
        ("WARMPOOL_ANYTHING", "set by the pool"),
        ("-p 8188:8188", "ports"),
        ("lower_case", "upper case"),
        ("MY_API_KEY", "looks like a secret"),
        ("S3_SECRET", "looks like a secret"),
    ],
)
def test_env_names_the_pool_owns_or_that_hold_secrets_are_refused(name: str, reason: str) -> None:
    data = studio_env()
    data["env"] = {name: "x"}
    found = problems_of(data)
    assert len(found) == 1 and found[0].startswith(f"env.yaml: env.{name}: "), found
    assert reason in found[0]


@pytest.mark.parametrize("value", ["hf_abcdefghijklmnop", "0123456789abcdef0123456789abcdef"])
def test_token_like_values_point_to_secrets(value: str) -> None:
    data = studio_env()
    data["env"] = {"SOME_SETTING": value}
    found = problems_of(data)
    assert found[0].startswith("env.yaml: env.SOME_SETTING: ") and "`secrets`" in found[0]


def test_an_env_entry_longer_than_vast_allows_is_refused() -> None:
    data = studio_env()
    data["env"] = {"LONG": "x" * (ENV_ENTRY_MAX - 3)}
    assert problems_of(data) == [
        f"env.yaml: env.LONG: name and value are {ENV_ENTRY_MAX + 1} characters; "
        f"Vast.ai allows {ENV_ENTRY_MAX} per entry"
    ]


def test_script_url_and_manifest_are_exclusive() -> None:
    data = studio_env()
    data["provisioning_script"] = "https://studio.example/provision.sh"
    (found,) = problems_of(data)
    assert found.startswith("env.yaml: provisioning_script: give either")


def test_duplicates_are_refused_with_both_places() -> None:
    data = studio_env()
    data["nodes"].append(dict(data["nodes"][1], classes=["FooNode"]))
    data["models"].append(dict(data["models"][0]))
    found = problems_of(data)
    assert "env.yaml: nodes[2].name: 'comfyui-bar' is already declared by nodes[1]" in found
    assert "env.yaml: nodes[2].classes[0]: 'FooNode' is already provided by 'comfyui-foo'" in found
    assert (
        "env.yaml: models[3].file: checkpoints/sdxl.safetensors is already declared by models[0]"
        in found
    )


def test_files_errors_name_the_file_and_never_show_a_traceback(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "env.yaml"
    bad_yaml.write_text("nodes: [\n  - {name: x\n")
    with pytest.raises(EnvironmentFileError) as caught:
        load_environment(bad_yaml)
    assert str(caught.value).startswith(f"{bad_yaml}: line ")
    assert "\n" not in str(caught.value)

    twice = tmp_path / "twice.yaml"
    twice.write_text("image: a\nimage: b\n")
    with pytest.raises(EnvironmentFileError, match=r"twice.yaml: line 2, column 1: duplicate key"):
        load_environment(twice)

    bad_json = tmp_path / "env.json"
    bad_json.write_text('{"image": "a", "image": "b"}')
    with pytest.raises(EnvironmentFileError, match=r"env.json: duplicate key 'image'"):
        load_environment(bad_json)

    with pytest.raises(EnvironmentFileError, match=r"nope.yaml: cannot read: No such file"):
        load_environment(tmp_path / "nope.yaml")
    with pytest.raises(EnvironmentFileError, match=r"env.toml: must end in"):
        load_environment(tmp_path / "env.toml")

    a_list = tmp_path / "list.json"
    a_list.write_text("[]")
    with pytest.raises(EnvironmentFileError, match=r"list.json: must be a mapping"):
        load_environment(a_list)

    field = tmp_path / "field.yaml"
    field.write_text("models:\n  - {url: 'https://h/x', folder: vae, file: v.pt, size: -1}\n")
    with pytest.raises(EnvironmentFileError) as caught:
        load_environment(field)
    assert caught.value.problems == [f"{field}: models[0].size: Input should be greater than 0"]


# --- version -------------------------------------------------------------------------------------


def _shuffled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rng) for v in value]
    return value


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_version_ignores_key_order(seed: int) -> None:
    data = studio_env()
    assert (
        parse_environment(_shuffled(data, random.Random(seed))).version
        == parse_environment(data).version
    )


def test_version_is_the_same_from_yaml_and_json(tmp_path: Path) -> None:
    data = studio_env()
    (tmp_path / "env.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "env.json").write_text(json.dumps(_shuffled(data, random.Random(1)), indent=2))
    from_yaml = load_environment(tmp_path / "env.yaml")
    from_json = load_environment(tmp_path / "env.json")
    assert from_yaml == from_json
    assert from_yaml.version == from_json.version
    assert re.fullmatch(r"env-[0-9a-f]{12}", from_yaml.version)


def test_defaults_spelled_out_or_not_give_the_same_version() -> None:
    data = studio_env()
    explicit = studio_env()
    explicit["nodes"][0]["required"] = True
    explicit["secrets"] = ["hf", "civitai", "hf"]
    explicit["nodes"][0]["commit"] = "0123ABC"
    assert parse_environment(explicit).version == parse_environment(data).version


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(image="vastai/comfyui:other"),
        lambda d: d["nodes"][0].update(commit="0123abd"),
        lambda d: d["nodes"][1].update(required=True),
        lambda d: d["models"][0].update(size=1),
        lambda d: d["models"].reverse(),
        lambda d: d["pip"].append("rich"),
        lambda d: d["env"].update(NEW="1"),
        lambda d: d.update(secrets=["hf"]),
    ],
)
def test_any_change_gives_a_new_version(change: Any) -> None:
    data = studio_env()
    before = parse_environment(data).version
    change(data)
    assert parse_environment(data).version != before


def test_version_survives_a_round_trip_through_json() -> None:
    env = parse_environment(studio_env())
    again = Environment.model_validate_json(env.model_dump_json())
    assert again.version == env.version


# --- wire format ---------------------------------------------------------------------------------


def test_manifest_lines_are_the_documented_format() -> None:
    env = parse_environment(studio_env())
    assert manifest_lines(env) == [
        "node\tcomfyui-foo\thttps://github.com/studio/comfyui-foo\t0123abc\tFooNode,Foo Loader\t1",
        "node\tcomfyui-bar\thttps://github.com/studio/comfyui-bar.git\t"
        + "a" * 40
        + "\tBarNode\t0",
        "pip\tonnxruntime-gpu>=1.18",
        "pip\tinsightface==0.7.3",
        "model\tcheckpoints\tsdxl.safetensors\thttps://huggingface.co/stabilityai/sdxl/resolve/"
        f"main/sd_xl_base_1.0.safetensors\t{SHA}\t6938078334\t1",
        "model\tloras\tstyle.safetensors\thttps://civitai.com/api/download/models/12345\t-\t-\t1",
        "model\tupscale_models\t4x.pth\thttps://example.com/upscale.pth\t-\t-\t0",
    ]


def test_instance_setup_round_trips_the_manifest_and_script() -> None:
    env = parse_environment(studio_env())
    setup = instance_setup(env, onstart="entrypoint.sh")
    assert setup.env_vars[VERSION_VAR] == env.version
    assert decode_manifest(setup.env_vars) == manifest_lines(env)
    assert decode_script(setup.env_vars) == shipped_script()
    assert setup.env_vars["COMFYUI_EXTRA"] == "1"
    assert setup.onstart.rstrip().endswith("entrypoint.sh")
    assert len(setup.onstart) <= ONSTART_MAX
    # The standard encoding, done by hand: the simulator's side of the contract.
    data = "".join(
        setup.env_vars[f"{MANIFEST_PREFIX}{i:02d}"]
        for i in range(sum(k.startswith(MANIFEST_PREFIX) for k in setup.env_vars))
    )
    assert gzip.decompress(base64.b64decode(data)).decode().split("\n") == manifest_lines(env)


def test_chunks_fit_vast_entries_and_are_at_most_255_characters() -> None:
    rng = random.Random(7)
    models = [
        {
            "url": f"https://huggingface.co/org/m{i}/resolve/main/x.safetensors",
            "folder": "loras",
            "file": f"lora{i}.safetensors",
            "sha256": f"{rng.getrandbits(256):064x}",
        }
        for i in range(40)
    ]
    setup = instance_setup(parse_environment({"models": models}), onstart="entrypoint.sh")
    chunks = {k: v for k, v in setup.env_vars.items() if k.startswith(MANIFEST_PREFIX)}
    assert len(chunks) > 3
    assert sorted(chunks) == [f"{MANIFEST_PREFIX}{i:02d}" for i in range(len(chunks))]
    for key, value in setup.env_vars.items():
        assert len(value) <= 255 and len(key) + len(value) <= ENV_ENTRY_MAX, key
        assert "\n" not in value
    assert all(len(v) == CHUNK_CHARS for k, v in sorted(chunks.items())[:-1])


def test_the_same_environment_gives_the_same_env_vars() -> None:
    one = instance_setup(parse_environment(studio_env()), onstart="entrypoint.sh")
    two = instance_setup(
        parse_environment(_shuffled(studio_env(), random.Random(3))), onstart="entrypoint.sh"
    )
    assert one == two


def test_a_provisioning_script_url_passes_through_unchanged() -> None:
    env = parse_environment(
        {"provisioning_script": "https://studio.example/p.sh", "env": {"A": "1"}, "secrets": ["hf"]}
    )
    setup = instance_setup(env, onstart="entrypoint.sh")
    assert setup.env_vars == {
        "PROVISIONING_SCRIPT": "https://studio.example/p.sh",
        VERSION_VAR: env.version,
        "A": "1",
    }
    assert setup.onstart == "entrypoint.sh"
    assert required_checks(env).empty


def test_an_empty_environment_ships_only_its_version() -> None:
    env = Environment()
    setup = instance_setup(env, onstart="entrypoint.sh")
    assert setup.env_vars == {VERSION_VAR: env.version}
    assert setup.onstart == "entrypoint.sh"


def test_a_huge_manifest_is_refused_with_a_hint() -> None:
    rng = random.Random(1)
    models = [
        {
            "url": f"https://huggingface.co/org/repo{i}/resolve/main/model.safetensors",
            "folder": "checkpoints",
            "file": f"model{i}.safetensors",
            "sha256": f"{rng.getrandbits(256):064x}",
            "size": rng.randrange(1, 10**10),
        }
        for i in range(2000)
    ]
    env = parse_environment({"models": models})
    with pytest.raises(EnvironmentTooLarge, match="provisioning_script") as caught:
        check_fits(env)
    assert re.search(r"\d+ characters", str(caught.value))


def test_the_env_budget_leaves_room_for_the_rent() -> None:
    env = parse_environment({"env": {f"VAR_{i:03d}": "x" * 240 for i in range(ENV_BUDGET // 248)}})
    check_fits(env)
    bigger = parse_environment(
        {"env": {f"VAR_{i:03d}": "x" * 240 for i in range(ENV_BUDGET // 248 + 2)}}
    )
    with pytest.raises(EnvironmentTooLarge, match=f"the limit is {ENV_BUDGET}"):
        check_fits(bigger)


def test_a_long_image_start_command_overflows_onstart() -> None:
    env = parse_environment(studio_env())
    with pytest.raises(EnvironmentTooLarge, match="onstart"):
        check_fits(env, onstart="x" * ONSTART_MAX)


@settings(max_examples=25, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=["Cs"]), max_size=3000))
def test_chunk_encoding_round_trips(text: str) -> None:
    for prefix in (MANIFEST_PREFIX, SCRIPT_PREFIX):
        encoded = encode_chunks(text, prefix)
        assert all(len(v) <= CHUNK_CHARS for v in encoded.values())
        assert decode_chunks(encoded, prefix) == text


def test_no_token_ever_reaches_the_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secretvalue123")
    monkeypatch.setenv("CIVITAI_TOKEN", "c1v1t41secret")
    env = parse_environment(studio_env())
    assert secret_env_names(env) == ["CIVITAI_TOKEN", "HF_TOKEN"]
    setup = instance_setup(env, onstart="entrypoint.sh")
    blob = json.dumps(setup.model_dump()) + "\n".join(decode_manifest(setup.env_vars))
    for leaked in ("hf_secretvalue123", "c1v1t41secret"):
        assert leaked not in blob
    assert not {"HF_TOKEN", "CIVITAI_TOKEN", "OPEN_BUTTON_TOKEN"} & set(setup.env_vars)
    none = parse_environment(dict(studio_env(), secrets=[]))
    assert secret_env_names(none) == []


def test_the_bootstrap_is_valid_posix_sh() -> None:
    setup = instance_setup(parse_environment(studio_env()), onstart="entrypoint.sh")
    for shell in ("sh", "bash"):
        subprocess.run([shell, "-n", "-c", setup.onstart], check=True)
    subprocess.run(["bash", "-n", "-c", decode_script(setup.env_vars)], check=True)


# --- readiness -----------------------------------------------------------------------------------


def test_required_checks_lists_only_required_items() -> None:
    checks = required_checks(parse_environment(studio_env()))
    assert checks.node_classes == {"FooNode": "comfyui-foo", "Foo Loader": "comfyui-foo"}
    assert checks.models == [("checkpoints", "sdxl.safetensors"), ("loras", "style.safetensors")]
    assert checks.folders == ["checkpoints", "loras"]
    assert ReadinessChecks.model_validate_json(checks.model_dump_json()) == checks


def test_missing_names_what_is_not_there() -> None:
    checks = required_checks(parse_environment(studio_env()))
    assert missing(checks, set(), {}) == [
        "node class FooNode (from comfyui-foo)",
        "node class Foo Loader (from comfyui-foo)",
        "model checkpoints/sdxl.safetensors",
        "model loras/style.safetensors",
    ]
    assert missing(
        checks,
        {"FooNode", "Foo Loader", "KSampler"},
        {"checkpoints": {"sdxl.safetensors"}, "loras": {"other.safetensors"}},
    ) == ["model loras/style.safetensors"]
    assert (
        missing(
            checks,
            {"FooNode", "Foo Loader"},
            {"checkpoints": {"sdxl.safetensors"}, "loras": {"style.safetensors"}},
        )
        == []
    )


def test_legacy_folders_are_looked_up_where_comfyui_lists_them() -> None:
    env = parse_environment(
        {
            "models": [
                {"url": "https://h/u", "folder": "unet", "file": "flux.safetensors"},
                {"url": "https://h/c", "folder": "clip", "file": "t5.safetensors"},
            ]
        }
    )
    checks = required_checks(env)
    assert checks.folders == ["diffusion_models", "text_encoders"]
    assert missing(checks, set(), {"diffusion_models": {"flux.safetensors"}}) == [
        "model clip/t5.safetensors"
    ]
    assert missing(checks, set(), {"unet": {"flux.safetensors"}, "clip": {"t5.safetensors"}}) == []


def test_node_and_model_specs_are_usable_directly() -> None:
    node = NodeSpec(name="n", git="file:///tmp/repo.git", commit="ABCDEF0")
    assert node.commit == "abcdef0" and node.classes == []
    model = ModelSpec(url="http://127.0.0.1:1/x", folder="vae", file="v.pt", required=False)
    assert model.sha256 is None and model.size is None


# --- progress from the provisioning log ----------------------------------------------------------

V = "env-5a7c1245b1c5"
SDXL = "checkpoints/sd_xl_base_1.0.safetensors"


@pytest.mark.parametrize(
    ("line", "state"),
    [
        (f"warmpool: environment {V} start", f"environment {V} starting"),
        (
            "warmpool: node ComfyUI-Impact-Pack at 8f1a2b3c4d5e6f708192a3b4c5d6e7f809a1b2c3 done",
            "node ComfyUI-Impact-Pack installed",
        ),
        (
            "warmpool: node ComfyUI-KJNodes FAILED: git clone failed",
            "node ComfyUI-KJNodes FAILED: git clone failed",
        ),
        ("warmpool: pip onnxruntime-gpu>=1.18 done", "pip onnxruntime-gpu>=1.18 installed"),
        ("warmpool: pip name @ https://x/y.whl done", "pip name @ https://x/y.whl installed"),
        (
            "warmpool: pip onnxruntime-gpu>=1.18 FAILED: pip install failed",
            "pip onnxruntime-gpu>=1.18 FAILED: pip install failed",
        ),
        (
            f"warmpool: model {SDXL} 45% (3122135250/6938078334 bytes)",
            f"downloading {SDXL} 45% (3.1/6.9 GB)",
        ),
        (
            "warmpool: model checkpoints/sdxl.safetensors 45% (1215000000/2700000000 bytes)",
            "downloading checkpoints/sdxl.safetensors 45% (1.2/2.7 GB)",
        ),
        (
            "warmpool: model loras/a.pt 41% (500/1200 bytes)",
            "downloading loras/a.pt 41% (0.5/1.2 KB)",
        ),
        (
            "warmpool: model loras/a.pt 50% (50/100 bytes)",
            "downloading loras/a.pt 50% (50/100 bytes)",
        ),
        (
            "warmpool: model vae/sdxl_vae_fp16_fix.safetensors 167335342 bytes",
            "downloading vae/sdxl_vae_fp16_fix.safetensors (167.3 MB)",
        ),
        (
            "warmpool: model embeddings/unsized.pt 200 bytes",
            "downloading embeddings/unsized.pt (200 bytes)",
        ),
        (f"warmpool: model {SDXL} done", f"model {SDXL} downloaded"),
        (f"warmpool: model {SDXL} done (already present)", f"model {SDXL} already present"),
        (
            "warmpool: model loras/studio_style.safetensors FAILED: http 404",
            "model loras/studio_style.safetensors FAILED: http 404",
        ),
        (
            "warmpool: model vae/x.safetensors FAILED: sha256 mismatch: got " + "ab" * 32,
            "model vae/x.safetensors FAILED: sha256 mismatch: got " + "ab" * 32,
        ),
        (f"warmpool: environment {V} required complete", f"environment {V} required complete"),
        (
            f"warmpool: environment {V} required incomplete: model loras/x.safetensors",
            f"environment {V} required incomplete: model loras/x.safetensors",
        ),
        (f"warmpool: environment {V} complete", f"environment {V} complete"),
        (
            f"warmpool: environment {V} incomplete: node ComfyUI-KJNodes (optional), "
            "model loras/studio_style.safetensors",
            f"environment {V} incomplete: node ComfyUI-KJNodes (optional), "
            "model loras/studio_style.safetensors",
        ),
        (  # the bootstrap's own line when the env vars do not unpack
            "warmpool: environment ? incomplete: unpack failed",
            "environment ? incomplete: unpack failed",
        ),
        (
            "warmpool: restarting ComfyUI to import the new nodes",
            "restarting ComfyUI to import the new nodes",
        ),
    ],
)
def test_each_provisioning_line_in_the_products_words(line: str, state: str) -> None:
    assert provisioning_progress([line]) == state
    # as the collector may keep it: prefixed with the file name, or a time stamp
    assert provisioning_progress([f"/var/log/portal/provisioning.log: {line}"]) == state
    assert provisioning_progress([f"2026-05-09T07:35:25Z {line}\r"]) == state


def test_the_latest_state_wins_and_other_lines_are_skipped() -> None:
    tail = [
        "--- instance 7 ---",
        f"warmpool: environment {V} start",
        "Cloning into 'custom_nodes/comfyui-foo'...",
        f"warmpool: model {SDXL} 45% (3122135250/6938078334 bytes)",
        "warmpool: manifest line ignored: future",  # not a state
        "[comfyui] To see the GUI go to: http://127.0.0.1:18188",
    ]
    assert provisioning_progress(tail) == f"downloading {SDXL} 45% (3.1/6.9 GB)"


def test_none_without_a_warmpool_line_or_before_this_instances_lines() -> None:
    assert provisioning_progress([]) is None
    assert (
        provisioning_progress(["Starting ComfyUI", "warmpool:no-space", "xwarmpool: x done"])
        is None
    )
    earlier = [f"warmpool: environment {V} complete", "--- instance 9 ---", "Pulling image"]
    assert provisioning_progress(earlier) is None  # the complete environment was another rental's
    assert provisioning_progress([*earlier, f"warmpool: environment {V} start"]) == (
        f"environment {V} starting"
    )


def progress_env() -> Environment:
    return parse_environment(
        {
            "nodes": [
                {"name": "comfyui-foo", "git": "https://g/foo", "commit": "0123abc"},
                {"name": "comfyui-bar", "git": "https://g/bar", "commit": "0123abd"},
            ],
            "pip": ["rich>=13"],
            "models": [
                {"url": "https://h/big", "folder": "checkpoints", "file": "big.safetensors"},
                {
                    "url": "https://h/opt",
                    "folder": "loras",
                    "file": "opt.safetensors",
                    "required": False,
                },
                {"url": "https://h/vae", "folder": "vae", "file": "vae.pt"},
            ],
        }
    )


def test_with_the_environment_it_names_what_is_being_installed_next() -> None:
    env = progress_env()
    v = env.version

    def state(*lines: str) -> str | None:
        return provisioning_progress([f"warmpool: {line}" for line in lines], env=env)

    assert state(f"environment {v} start") == "installing node comfyui-foo"
    assert state("node comfyui-foo at 0123abc done") == "installing node comfyui-bar"
    assert state("node comfyui-bar FAILED: git clone failed") == (
        "node comfyui-bar FAILED: git clone failed"
    )
    assert state("node comfyui-bar at 0123abd done") == "installing pip rich>=13"
    assert state("pip rich>=13 done") == "downloading checkpoints/big.safetensors"
    assert (
        state("model checkpoints/big.safetensors done") == "downloading vae/vae.pt"
    )  # required first
    assert (
        state("model vae/vae.pt done (already present)")
        == "downloading loras/opt.safetensors (optional)"
    )
    assert state(f"environment {v} required complete") == (
        f"environment {v} required complete, downloading loras/opt.safetensors (optional)"
    )
    assert state("model loras/opt.safetensors done") == "model loras/opt.safetensors downloaded"
    assert state(f"environment {v} complete") == f"environment {v} complete"
    # another version's log (an older rental's environment): nothing is inferred from `env`
    assert state("environment env-000000000000 start") == "environment env-000000000000 starting"
    assert state("node unknown-pack at 0123abc done") == "node unknown-pack installed"


@pytest.mark.skipif(not shutil.which("curl"), reason="needs curl")
def test_the_lines_of_a_real_provision_run(tmp_path: Path) -> None:
    """provision.sh run for real (models over file://, pip as `true`), its output read line by
    line as a slot's tail grows."""
    (tmp_path / "big.bin").write_bytes(random.randbytes(3000))
    (tmp_path / "vae.bin").write_bytes(random.randbytes(1500))
    url = (tmp_path).as_uri()
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text(
        "pip\trich>=13\n"
        f"model\tcheckpoints\tbig.safetensors\t{url}/big.bin\t-\t3000\t1\n"
        f"model\tvae\tvae.pt\t{url}/vae.bin\t-\t-\t1\n"
        f"model\tloras\tgone.pt\t{url}/missing\t-\t-\t1\n"
        f"model\tloras\topt.safetensors\t{url}/vae.bin\t-\t-\t0\n"
    )
    script = Path(__file__).parents[2] / "warmpool" / "provision.sh"
    run_env = {
        "PATH": os.environ["PATH"],
        "COMFYUI_DIR": str(tmp_path / "comfy"),
        "WARMPOOL_ENV_VERSION": "env-0123456789ab",
        "WARMPOOL_PIP": "true",
        "WARMPOOL_STATE": str(tmp_path / "state"),
        "WARMPOOL_SUPERVISORCTL": str(tmp_path / "no-supervisorctl"),
    }
    done = subprocess.run(
        ["bash", str(script), str(manifest)],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    states = [provisioning_progress(lines[: n + 1]) for n in range(len(lines))]
    assert states[:6] == [
        "environment env-0123456789ab starting",
        "pip rich>=13 installed",
        "downloading checkpoints/big.safetensors 100% (3.0/3.0 KB)",
        "model checkpoints/big.safetensors downloaded",
        "downloading vae/vae.pt (1.5 KB)",
        "model vae/vae.pt downloaded",
    ]
    assert states[6] is not None and states[6].startswith(
        "model loras/gone.pt FAILED: download failed (curl exit 37"
    )
    assert states[7:] == [
        "environment env-0123456789ab required incomplete: model loras/gone.pt",
        "downloading loras/opt.safetensors (1.5 KB)",
        "model loras/opt.safetensors downloaded",
        "environment env-0123456789ab incomplete: model loras/gone.pt",
    ]
