"""Is docker-compose.yml deployable? Checked without a Docker engine (none on the CI machine).

- the file, interpolated the way Compose does it, validates against the Compose Specification's
  JSON schema (vendored: deploy/compose-spec.json);
- every service has an image or a build; worker, gateway and CLI run one image from our Dockerfile;
- every variable given to our image is a setting or a secret the code reads;
- every command, entrypoint script, healthcheck and mounted path exists;
- the namespace setup script registers exactly our search attributes, and runs against a real
  Temporal server; the worker healthcheck passes only while a worker polls.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import uuid
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from chaos.stack import env_name
from tests.integration import conftest as integration
from tests.integration.conftest import Stack
from warmpool import search_attributes as sa
from warmpool.cli import build_parser
from warmpool.codec import KEYS_VARIABLE
from warmpool.secrets import ENV_NAMES
from warmpool.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "deploy" / "compose-spec.json"
OUR_IMAGE = {"worker", "gateway", "reaper-schedule"}
stack_factory = integration.stack_factory
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: ${X}, ${X:-default}, ${X:?error} (a stand-in value), $$."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env:
            return env[name]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            return f"<{name}>"
        return ""

    if isinstance(value, str):
        return _VAR.sub(one, value.replace("$$", "\0")).replace("\0", "$")
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    return value


def load() -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(raw, dict)
    compose: dict[str, Any] = interpolate(raw, {})
    return compose


def validator() -> jsonschema.Draft7Validator:
    """The spec declares draft 07 (its `$schema` URL lacks the `#` jsonschema looks up)."""
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    assert schema["$schema"].startswith("https://json-schema.org/draft-07/")
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def dockerfile_copies() -> set[str]:
    """Every source path a COPY of the Dockerfile brings into the image."""
    sources: set[str] = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources.update(shlex.split(line)[1:-1])
    return sources


def allowed_names() -> set[str]:
    names = {env_name(field) for field in Settings.model_fields}
    names |= {name for group in ENV_NAMES.values() for name in group}
    return names | {KEYS_VARIABLE}


def test_the_compose_file_validates_against_the_compose_spec() -> None:
    check = validator()
    compose = load()
    errors = [f"{list(e.path)}: {e.message}" for e in check.iter_errors(compose)]
    assert errors == []
    # The schema has teeth: a typo and a wrong type are both caught.
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["restart_policy"] = "always"
    broken["services"]["gateway"]["ports"] = "3000:3000"
    assert len(list(check.iter_errors(broken))) == 2


def test_every_service_has_an_image_and_ours_share_one_built_from_the_dockerfile() -> None:
    services = load()["services"]
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for needed in service.get("depends_on", {}):
            assert needed in services, f"{name} depends on unknown {needed}"
    built = {name for name, s in services.items() if "build" in s}
    assert built == OUR_IMAGE
    assert len({json.dumps(services[n]["build"], sort_keys=True) for n in built}) == 1
    assert len({services[n]["image"] for n in built}) == 1
    build = services["worker"]["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    for volume in load()["volumes"]:
        assert any(volume in str(s.get("volumes")) for s in services.values())


def test_variables_given_to_our_image_are_settings_or_secrets() -> None:
    allowed = allowed_names()
    assert "WARMPOOL_GATEWAY_PORT" in allowed and "VASTAI_API_KEY" in allowed
    assert "WARMPOOL_GATEWAY_PROT" not in allowed  # a typo would be caught
    services = load()["services"]
    for name in OUR_IMAGE:
        unknown = set(services[name]["environment"]) - allowed
        assert unknown == set(), f"{name}: {sorted(unknown)}"
    example = (ROOT / "deploy" / "warmpool.env.example").read_text()
    named = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", example, re.MULTILINE))
    assert named and named - allowed == set()


def test_every_command_script_and_mounted_path_exists() -> None:
    services = load()["services"]
    copied = dockerfile_copies()
    for name in OUR_IMAGE:
        command = services[name]["command"]
        assert command[0] == "python", name
        if command[1] == "-m":
            spec = importlib.util.find_spec(command[2])
            assert spec is not None and spec.origin is not None, f"{name}: no {command[2]}"
            assert command[2].split(".")[0] in copied
        else:
            assert (ROOT / command[1]).is_file() and command[1] in copied, name
        if command[1] == "starter.py":
            build_parser().parse_args(command[2:])  # raises on a command the CLI lacks
        test = services[name].get("healthcheck", {}).get("test", [])
        if test[1:3] == ["python", "-c"]:
            compile(test[3], f"{name} healthcheck", "exec")
        elif test:
            assert test[1] == "python" and (ROOT / test[2]).is_file() and test[2] in copied
    gateway = services["gateway"]
    port = gateway["environment"]["WARMPOOL_GATEWAY_PORT"]
    assert any(p.endswith(f":{port}") for p in gateway["ports"])
    for name, service in services.items():
        mounts = {}
        for volume in service.get("volumes", []):
            host, target = volume.split(":")[:2]
            if host.startswith("./"):
                assert (ROOT / host).exists(), f"{name}: {host}"
                mounts[target] = ROOT / host
        for arg in service.get("entrypoint", []):
            for target, host in mounts.items():
                if arg.startswith(f"{target}/"):
                    assert (host / arg.removeprefix(f"{target}/")).is_file(), f"{name}: {arg}"


def test_the_dockerfile_copies_what_exists_and_keeps_secrets_out_of_the_context() -> None:
    for source in dockerfile_copies():
        assert (ROOT / source).exists(), source
    cmd = next(x for x in (ROOT / "Dockerfile").read_text().splitlines() if x.startswith("CMD"))
    assert json.loads(cmd.removeprefix("CMD ")) == ["python", "worker.py"]
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", "**/*.env", ".venv", ".git", ".warmpool"} <= ignored


def test_the_namespace_setup_registers_exactly_our_search_attributes() -> None:
    script = (ROOT / "deploy" / "temporal" / "setup-namespace.sh").read_text()
    match = re.search(r'^ATTRIBUTES="([^"]+)"', script, re.MULTILINE)
    assert match is not None
    pairs = {tuple(p.split(":")) for p in match.group(1).split()}
    kinds = {"KEYWORD": "Keyword", "INT": "Int"}
    assert pairs == {(k.name, kinds[k.indexed_value_type.name]) for k in sa.ALL}
    for path in (ROOT / "deploy" / "temporal").glob("*.sh"):
        assert subprocess.run(["sh", "-n", str(path)], check=False).returncode == 0, path


@pytest.mark.integration
async def test_the_namespace_setup_script_runs_twice_against_a_real_server(
    dev_env: WorkflowEnvironment,
) -> None:
    namespace = f"wp-setup-{uuid.uuid4().hex[:8]}"
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": namespace,
    }
    script = ROOT / "deploy" / "temporal" / "setup-namespace.sh"
    out = ""
    for _ in range(2):
        proc = await asyncio.create_subprocess_exec(
            "sh", str(script), env=env, stdout=PIPE, stderr=STDOUT
        )
        out = (await asyncio.wait_for(proc.communicate(), 120))[0].decode()
        assert proc.returncode == 0, out
    assert "search attribute WarmPoolName exists" in out
    answer = await dev_env.client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    assert {k.name for k in sa.ALL} <= set(answer.custom_attributes)


def worker_health() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "worker_health", ROOT / "deploy" / "worker_health.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
async def test_the_worker_healthcheck_passes_only_while_a_worker_polls(
    stack_factory: Callable[..., Any],
) -> None:
    stack: Stack = await stack_factory()
    health = worker_health()
    host = socket.gethostname()
    async with asyncio.timeout(20):  # the server lists a poller once its first poll arrived
        while not await health.polling(stack.client, stack.queue, host):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    assert not await health.polling(stack.client, f"{stack.queue}-nobody", host)
    assert not await health.polling(stack.client, stack.queue, "some-other-host")
