"""`warmpool pool set-env`, `pool start --environment`, `lease acquire --min-environment
--node-class` as the operator runs them.

In process, no server: a bad file (its problems one line each, naming the field, no pydantic
footer), an environment too large for a rent, bad lease constraints; all exit 2 before any
connection. What `set-env` prints about a rollout, from hand-built statuses. Then one pool on the
dev server (worker and simulator, as tests/test_cli_pool.py): started with v1, `set-env` v2
`--wait` until every slot runs it, the same file again changes nothing, leases asking for an
environment.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import FAST_SIM, Stack, assert_no_orphans
from tests.integration.conftest import stack_factory as stack_factory  # pytest fixture, reused
from tests.test_cli import FAST_ENV, Run, address_of, cli, environment, unique_pool
from tests.test_cli_pool import parsed, refused
from tests.test_newcomer import LEAKS
from warmpool.cli.pool import rollout_done, rollout_line, start_line
from warmpool.environment import Environment, ModelSpec, NodeSpec
from warmpool.models import PoolConfig, PoolStats, PoolStatus, SlotState, SlotView

S = SlotState
AT = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "environment.yaml"
MB = 1_000_000


# ---- the file, before any connection -----------------------------------------------------------


def test_the_example_file_is_read_validated_and_fits() -> None:
    for argv in (["pool", "set-env", "--file", str(EXAMPLE)], ["pool", "start", "--environment",
                                                                str(EXAMPLE)]):  # fmt: skip
        env = parsed(*argv).env
        assert isinstance(env, Environment) and env.version.startswith("env-")
        assert [n.name for n in env.nodes] == ["ComfyUI-Impact-Pack", "ComfyUI-KJNodes"]
    assert parsed("pool", "start").env is None, "no file: no environment"
    assert parsed("pool", "start", "--max-surge", "3").max_surge == 3
    assert parsed("pool", "start").max_surge == PoolConfig().max_surge == 1


def test_a_bad_file_names_each_problem_on_its_own_line(tmp_path: Path) -> None:
    bad = tmp_path / "env.yaml"
    bad.write_text(
        "image: vastai/comfyui:latest\n"
        "nodez: []\n"
        "models:\n"
        "  - url: ftp://files.example.com/a.safetensors\n"
        "    folder: checkpoints\n"
        "    file: a.safetensors\n"
        "    sha256: abc\n"
    )
    for argv in (["pool", "set-env", "--file", str(bad)], ["pool", "start", "--environment",
                                                            str(bad)]):  # fmt: skip
        lines = refused(*argv).splitlines()
        assert lines == [
            f"{bad}: models[0].url: must be an http:// or https:// URL without spaces, got "
            "'ftp://files.example.com/a.safetensors'",
            f"{bad}: models[0].sha256: must be 64 hex characters, got 'abc'",
            f"{bad}: nodez: unknown field",
        ]
        assert not any("pydantic" in line or "http" in line.split(":")[-1] for line in lines)


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("env.txt", "image: x\n", "must end in .yaml, .yml or .json"),
        ("missing.yaml", None, "cannot read"),
        ("env.json", "{", "line 1, column 2"),
        ("env.yaml", "- a list\n", "must be a mapping of fields"),
        ("env.yaml", "models: [{url: 'https://h/x', folder: loras}]\n", "models[0].file"),
        ("env.yaml", "env: {HF_TOKEN: x}\n", "declared in `secrets`"),
        ("env.yaml", "image: a\nimage: b\n", "duplicate key 'image'"),
    ],
)
def test_every_file_problem_exits_2_before_connecting(
    tmp_path: Path, name: str, text: str | None, says: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    message = refused("pool", "set-env", "--file", str(path))
    assert says in message and message.startswith(str(path)), message


def test_an_environment_too_large_for_a_rent_is_refused_at_set_env(tmp_path: Path) -> None:
    models = [
        {
            "url": f"https://files.example.com/m{i}.safetensors",
            "folder": "loras",
            "file": f"m{i}.safetensors",
            "sha256": hashlib.sha256(str(i).encode()).hexdigest(),
            "size": 1000 + i,
        }
        for i in range(400)
    ]
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"models": models}))
    message = refused("pool", "set-env", "--file", str(big))
    assert message.startswith(f"{big}: too large for a rent request: ")
    assert "provisioning_script" in message and "\n" not in message


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--min-environment", "v2"], "expected an environment version such as env-"),
        (["--min-environment", "env-ABCDEF123456"], "12 hex"),
        (["--min-environment", "env-abc"], "12 hex"),
        (["--node-class", ""], "node class name"),
        (["--node-class", " Face"], "node class name"),
        (["--node-class", "a\tb"], "control characters"),
        (["--node-class", "x" * 201], "at most 200"),
        (["--max-surge", "0"], "between 1 and 100"),
    ],
)
def test_bad_environment_options_exit_2(argv: list[str], says: str) -> None:
    lease = ["lease", "acquire", "--holder", "a"]
    command = ["pool", "start"] if argv[0] == "--max-surge" else lease
    assert says in refused(*command, *argv)


def test_lease_constraints_reach_the_request() -> None:
    args = parsed(
        "lease", "acquire", "--holder", "a", "--min-environment", "env-5a7c1245b1c5",
        "--node-class", "FaceDetailer",
    )  # fmt: skip
    assert (args.min_environment, args.node_class) == ("env-5a7c1245b1c5", "FaceDetailer")


@pytest.mark.slow  # a CLI process: the full suite, not the fast lane
async def test_a_bad_file_is_one_line_per_problem_from_the_command(tmp_path: Path) -> None:
    (tmp_path / "env.yaml").write_text("nodes: [{name: x}]\nsecrets: [github]\n")
    run = await cli(environment("127.0.0.1:1"), tmp_path, "pool", "set-env", "--file", "env.yaml")
    assert run.code == 2 and run.stdout == "", run
    lines = run.stderr.splitlines()
    assert lines == [
        "error: env.yaml: nodes[0].git: Field required",
        "error: env.yaml: nodes[0].commit: Field required",
        "error: env.yaml: secrets[0]: Input should be 'hf' or 'civitai'",
    ], run.stderr
    assert not LEAKS.search(run.stderr) and "pydantic" not in run.stderr


# ---- what set-env says, from hand-built statuses -----------------------------------------------

V1 = Environment(env={"STUDIO_STAGE": "v1"})
V2 = Environment(
    nodes=[NodeSpec(name="ComfyUI-Studio", git="https://github.com/studio/s", commit="abc1234",
                    classes=["StudioLoader"])],
    models=[ModelSpec(url="https://files.example.com/s.safetensors", folder="checkpoints",
                      file="s.safetensors", size=MB)],
)  # fmt: skip


def view(index: int, state: SlotState, env: Environment | None, **fields: Any) -> SlotView:
    return SlotView(
        index=index, state=state, since=AT, env_version=env.version if env else None, **fields
    )


def pool(slots: list[SlotView], target: Environment | None, **fields: Any) -> PoolStatus:
    by_version: dict[str, int] = {}
    for v in slots:
        by_version[v.env_version or "none"] = by_version.get(v.env_version or "none", 0) + 1
    values: dict[str, Any] = {
        "pool": "studio",
        "config": PoolConfig(min_ready=3, max_slots=6, environment=target, max_surge=1),
        "slots": slots,
        "counts": {},
        "idle_ready": 0,
        "spend_per_hour": 0.0,
        "budget_limited": False,
        "safe_mode": False,
        "safe_reason": None,
        "draining": False,
        "active_leases": [],
        "recent_leases": [],
        "waiting": 0,
        "failures": [],
        "granted_total": 0,
        "stats": PoolStats(),
        "environment_version": target.version if target else None,
        "slots_by_environment": by_version,
    }
    return PoolStatus.model_validate(values | fields)


def test_set_env_says_what_it_will_replace_and_how_the_rollout_goes() -> None:
    v1, v2 = V1.version, V2.version
    before = [
        view(0, S.READY, V1),
        view(1, S.READY, V1),
        view(2, S.LEASED, V1, lease_id="L-1"),
        view(3, S.READY, None),
    ]
    started = pool(before, V2)
    assert start_line(started, V2, v1) == (
        f"{v2} is the target of pool studio: 3 slot(s) on {v1}, 1 slot(s) without an "
        "environment will be replaced, max_surge 1 (1 leased: after the lease ends)"
    )
    assert not rollout_done(started, v2)
    midway = pool(
        [
            view(1, S.READY, V1),
            view(2, S.LEASED, V1, lease_id="L-1"),
            view(4, S.READY, V2),
            view(5, S.INSTALLING, V2),
        ],
        V2,
    )
    assert rollout_line(midway, v2) == (
        f"{v2}: 1 READY or leased, 1 starting (1 INSTALLING); 2 left (2 on {v1}), 1 leased: "
        "replaced after the lease ends"
    )
    assert not rollout_done(midway, v2)
    done = pool([view(4, S.READY, V2), view(5, S.LEASED, V2), view(6, S.READY, V2)], V2)
    assert rollout_done(done, v2)
    assert rollout_line(done, v2) == f"{v2}: 3 READY or leased, 0 starting"
    assert not rollout_done(pool(done.slots, V1), v2), "the target moved on: not this rollout"
    assert start_line(done, V2, v2) == (
        f"{v2} is already the target of pool studio: nothing to change (3 READY or leased, 0 "
        "starting)"
    )
    assert start_line(pool([], V2), V2, None) == (
        f"{v2} is the target of pool studio: no slot to replace; new slots rent with it"
    )


# ---- against a dev server ----------------------------------------------------------------------


@pytest.mark.integration
async def test_set_env_rolls_a_pool_over_to_a_new_version(
    stack_factory: Any, tmp_path: Path
) -> None:
    stack: Stack = await stack_factory(FAST_SIM.model_copy(update={"node_install_s": 0.2}))
    env = environment(address_of(stack.env), WARMPOOL_TASK_QUEUE=stack.queue, **FAST_ENV)
    name = unique_pool()
    on_pool = ["--pool", name]
    v1_file, v2_file = tmp_path / "v1.json", tmp_path / "v2.yaml"
    v1_file.write_text(V1.model_dump_json())
    v2_file.write_text(json.dumps(V2.model_dump(mode="json")))  # JSON is YAML too
    v1, v2 = V1.version, V2.version

    async def ok(*args: str) -> Run:
        run = await cli(env, tmp_path, *args)
        assert run.code == 0, run
        return run

    started = await ok(
        "pool", "start", *on_pool, "--min-ready", "1", "--max-slots", "2", "--buffer", "0",
        "--environment", str(v1_file),
    )  # fmt: skip
    assert f"environment {v1} ({v1_file})" in started.stdout
    await ok("pool", "wait", *on_pool, "--ready", "1", "--timeout", "30")
    same = await ok("pool", "set-env", *on_pool, "--file", str(v1_file))
    assert same.stdout.startswith(f"{v1} is already the target of pool {name}: nothing to ")

    rolled = await ok("pool", "set-env", *on_pool, "--file", str(v2_file), "--wait",
                      "--timeout", "60")  # fmt: skip
    lines = rolled.stdout.splitlines()
    assert lines[0] == (
        f"{v2} is the target of pool {name}: 1 slot(s) on {v1} will be replaced, max_surge 1"
    )
    assert lines[-1].startswith(f"pool {name}: every slot runs {v2} (1 READY or leased) after ")
    assert any(f"1 left (1 on {v1})" in line for line in lines[1:-1]), lines

    status = (await ok("pool", "status", *on_pool)).stdout
    assert f"environment {v2}: 1 slot(s) on it" in status, status
    shown = json.loads((await ok("--json", "pool", "status", *on_pool)).stdout)
    assert shown["environment_version"] == v2 and shown["slots_by_environment"] == {v2: 1}
    slot = await ok("slot", "status", *on_pool, "--index", str(shown["slots"][0]["index"]))
    assert f"environment    {v2}" in slot.stdout, slot.stdout

    other = await cli(env, tmp_path, "lease", "acquire", *on_pool, "--holder", "a",
                      "--node-class", "NoSuchNode")  # fmt: skip
    assert other.code == 1, other
    assert "no capacity with that environment (node class NoSuchNode)" in other.one_error_line()
    wanted = ["--node-class", "StudioLoader", "--min-environment", v2]
    acquired = await ok("--json", "lease", "acquire", *on_pool, "--holder", "a", *wanted)
    grant = json.loads(acquired.stdout)
    await ok("lease", "release", *on_pool, grant["lease_id"])
    await ok("pool", "drain", *on_pool, "--wait", "--timeout", "30")
    assert_no_orphans(stack.sim)
