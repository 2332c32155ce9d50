"""Does every module import only downward? The layer rule, checked over every file's imports.

From the bottom: the library (`warmpool/`, minus the two applications in it) -> activities ->
workflows -> applications. Applications: the worker (`worker.py`), the operator CLI
(`warmpool/cli/`, `starter.py`), the gateway (`warmpool/gateway/`) and the tools that drive
whole stacks (`chaos/`, `bench/`, `scripts/`, `deploy/`). The CLI and the gateway talk to
workflows only through `warmpool/clients/` (names and models), so they import no workflow,
activity or worker code and neither imports the other. `vastsim/` (the simulator) stands alone.

Every import counts: at the top, inside a function, and under `TYPE_CHECKING` (a type-only
import still ties the modules together for a reader and for mypy).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("warmpool", "activities", "workflows", "vastsim", "chaos", "bench", "scripts", "deploy")
SCRIPTS = ("worker.py", "starter.py")

LIBRARY, ACTIVITIES, WORKFLOWS, WORKER, CLI, GATEWAY, TOOLS, SIMULATOR, TESTS = (
    "library",
    "activities",
    "workflows",
    "worker",
    "cli",
    "gateway",
    "tools",
    "simulator",
    "tests",
)

ALLOWED: dict[str, set[str]] = {
    LIBRARY: {LIBRARY},
    ACTIVITIES: {LIBRARY, ACTIVITIES},
    WORKFLOWS: {LIBRARY, ACTIVITIES, WORKFLOWS},
    WORKER: {LIBRARY, ACTIVITIES, WORKFLOWS, WORKER, SIMULATOR},
    CLI: {LIBRARY, CLI},
    GATEWAY: {LIBRARY, GATEWAY},
    TOOLS: {LIBRARY, ACTIVITIES, WORKFLOWS, WORKER, CLI, GATEWAY, TOOLS, SIMULATOR, TESTS},
    SIMULATOR: {SIMULATOR},
}
"""Which layers a module of each layer may import (project modules only)."""


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name; None for anything outside the project."""
    top = module.split(".")[0]
    if module in ("starter", "warmpool.cli") or module.startswith("warmpool.cli."):
        return CLI
    if module == "warmpool.gateway" or module.startswith("warmpool.gateway."):
        return GATEWAY
    return {
        "warmpool": LIBRARY,
        "activities": ACTIVITIES,
        "workflows": WORKFLOWS,
        "worker": WORKER,
        "vastsim": SIMULATOR,
        "chaos": TOOLS,
        "bench": TOOLS,
        "scripts": TOOLS,
        "deploy": TOOLS,
        "harness": TOOLS,  # bench/ scripts import their harness by its bare name
        "tests": TESTS,
    }.get(top)


def imports_of(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import anywhere in `source`, relative ones resolved;
    `from a import b` yields `a.b` too, since `b` may be a module (`from warmpool import cli`)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every import in `source` (the text of `module`) that the layer rule forbids."""
    own = layer_of(module)
    if own is None or own == TESTS:
        return []
    found: dict[tuple[int, str], str] = {}
    for line, imported in imports_of(source, module, is_package):
        target = layer_of(imported)
        if target is not None and target not in ALLOWED[own]:
            found.setdefault(
                (line, target), f"{module}:{line} ({own}) imports {imported} ({target})"
            )
    return list(found.values())


def project_modules() -> Iterator[tuple[str, Path]]:
    for script in SCRIPTS:
        yield script.removesuffix(".py"), ROOT / script
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


def test_every_module_imports_only_downward() -> None:
    found = [
        problem
        for module, path in project_modules()
        for problem in violations(path.read_text(), module, path.name == "__init__.py")
    ]
    assert found == []


def test_every_source_file_has_a_layer() -> None:
    modules = dict(project_modules())
    assert len(modules) > 100
    assert [m for m in modules if layer_of(m) is None] == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("warmpool.tokens", "from workflows.token_watch import TokenHealth"),
        ("warmpool.models", "def f():\n    import activities.comfy\n"),
        (
            "warmpool.secrets",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from worker import x\n",
        ),
        ("warmpool.clients.pool", "from warmpool.cli.common import CliError"),
        ("warmpool.clients.pool", "from warmpool import gateway"),
        ("activities.vast", "from workflows.options import CREATE_QUEUE"),
        ("workflows.pool", "import worker"),
        ("warmpool.gateway.admin", "from warmpool.cli.tokens import ensure_token_watch"),
        ("warmpool.gateway.admin", "from ..cli import tokens"),
        ("warmpool.gateway.__main__", "from worker import secret_store"),
        ("warmpool.cli.tokens", "from worker import secret_store"),
        ("warmpool.cli.tokens", "from workflows.token_watch import WATCH_ID"),
        ("warmpool.cli", "from .tokens import x\nfrom activities import build_activities"),
        ("starter", "import workflows"),
        ("vastsim.app", "from warmpool.models import Model"),
    ],
)
def test_a_forbidden_import_is_caught(module: str, source: str) -> None:
    assert violations(source, module, is_package=module == "warmpool.cli") != []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("warmpool.clients.token_watch", "from warmpool.names import TokenWatch"),
        ("activities.reaper", "from warmpool.clients import slot"),
        ("workflows.slot", "from activities.comfy import ComfyActivities"),
        ("worker", "from workflows import WORKFLOWS\nfrom vastsim import Simulator"),
        ("warmpool.gateway.admin", "from .auth import require_admin"),
        ("warmpool.cli.pool", "from warmpool.clients import pool"),
        ("chaos.observe", "from workflows.pool import STARTING"),
        ("bench.harness", "from worker import create_workers"),
    ],
)
def test_an_allowed_import_passes(module: str, source: str) -> None:
    assert violations(source, module) == []
