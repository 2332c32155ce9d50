"""Does any token value ever leave the secret store? The leak test over a full run.

One run with rotations and failures (wrong Vast.ai key, revoked HF token, an instance that fails
with "no space left on device", a Civitai token revoked while the slot serves), then every place
an operator or an attacker with access to Temporal could read: the history of every run of every
workflow (payloads, failures, search attributes), each workflow's description, every query
answer, every CLI output, and every log record and structlog event, captured raw, before the
redaction a production handler would apply, so the test proves the values are never logged at
all rather than that they are masked.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import LogCapture
from temporalio.api.history.v1 import History
from temporalio.client import Client

from tests.helpers import in_state, wait_status
from tests.integration.conftest import INSTANCE_SECRET, Stack
from tests.integration.test_tokens import (
    CIVITAI_BAD,
    CIVITAI_GOOD,
    HF_BAD,
    HF_GOOD,
    TOKENS_SIM,
    VAST_BAD,
    VAST_KEY,
    CliRun,
    record,
    retire,
    run_cli,
    secrets_dir,
    slot_ready,
    stop_watch,
    wait_watch,
    watch_id,
)
from vastsim import Fault
from warmpool.instance_token import derive_instance_token
from warmpool.models import SlotState, SlotStatus
from warmpool.secrets import SecretName
from warmpool.tokens import TokenHealth, TokenService

pytestmark = pytest.mark.integration
S = SlotState


@pytest.fixture
def structlog_events() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every structlog event at every level, raw (before any processor could redact it)."""
    saved = structlog.get_config()
    capture = LogCapture()
    structlog.configure(
        processors=[capture],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    yield capture.entries
    structlog.configure(**saved)


def find_leaks(secrets: dict[str, str], sources: dict[str, bytes]) -> list[str]:
    return [
        f"{name} in {where}"
        for where, blob in sources.items()
        for name, value in secrets.items()
        if value.encode() in blob
    ]


def record_text(rec: logging.LogRecord) -> str:
    text = f"{rec.getMessage()} {vars(rec)!r}"
    if rec.exc_info:
        text += logging.Formatter().formatException(rec.exc_info)
    return text


async def every_run(client: Client, workflow_id: str) -> dict[str, bytes]:
    """History (as protobuf bytes: payload data raw, not base64) and description of each run,
    walking back from the latest run through continue-as-new."""
    found: dict[str, bytes] = {}
    run_id = (await client.get_workflow_handle(workflow_id).describe()).run_id
    while run_id:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        history = await handle.fetch_history()
        found[f"history {workflow_id} {run_id}"] = History(
            events=history.events
        ).SerializeToString()
        description = await handle.describe()
        found[f"description {workflow_id} {run_id}"] = (
            description.raw_description.SerializeToString()
            + repr(description.typed_search_attributes).encode()
        )
        started = history.events[0].workflow_execution_started_event_attributes
        run_id = started.continued_execution_run_id
    return found


async def test_no_token_value_appears_anywhere(
    stack_factory: Any,
    caplog: pytest.LogCaptureFixture,
    structlog_events: list[MutableMapping[str, Any]],
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    stack: Stack = await stack_factory(
        TOKENS_SIM, require_tokens=["vast", "hf"], token_check_ms=300
    )
    stack.sim.add_fault(Fault(kind="no_space", count=1))
    stack.secrets.set(SecretName.VAST, VAST_BAD)
    stack.secrets.set(SecretName.HF, HF_BAD)
    stack.secrets.set(SecretName.CIVITAI, CIVITAI_GOOD)
    wid = watch_id(stack)
    runs: list[CliRun] = []

    async def cli(*args: str, stdin: str | None = None) -> CliRun:
        run = await run_cli(stack, *args, stdin=stdin)
        runs.append(run)
        return run

    # Wrong Vast.ai key and a revoked HF token: the watch reports both, the slot blocks.
    assert (await cli("tokens", "check-now", "--watch-id", wid)).code == 1
    handle = await stack.start_slot(fallback_image="vastai/comfyui:slim")
    await wait_status(stack.env, handle, in_state(S.BLOCKED), attempts=1500)
    assert (await cli("tokens", "validate")).code == 1
    assert (await cli("tokens", "validate", "--json")).code == 1

    # Rotation through the CLI, then resume: a no-space failure on the way, then READY.
    assert (await cli("tokens", "set", "vast", "--watch-id", wid, stdin=VAST_KEY)).code == 0
    hf_file = tmp_path / "hf.txt"
    hf_file.write_text(HF_GOOD + "\n")
    assert (await cli("tokens", "set", "hf", "--file", str(hf_file), "--watch-id", wid)).code == 0
    await handle.signal("resume")
    ready = await slot_ready(stack, handle)
    assert ready.counters.failures_by_reason == {"no_space": 1}

    # Civitai revoked while the slot serves: reported, and every output read once more.
    assert (await cli("tokens", "set", "civitai", "--watch-id", wid, stdin=CIVITAI_BAD)).code == 0
    watch = await wait_watch(
        stack, lambda s: record(s, TokenService.CIVITAI).health == TokenHealth.INVALID
    )
    pool = f"it-{stack.queue}"
    for args in (
        ("tokens", "status", "--watch-id", wid),
        ("tokens", "status", "--watch-id", wid, "--json"),
        ("tokens", "check-now", "--watch-id", wid, "--json"),
        ("slot", "status", "--pool", pool),
        ("slot", "status", "--pool", pool, "--json"),
        ("slot", "list", "--pool", "it", "--json"),  # the name its slots carry
    ):
        run = await cli(*args)
        assert run.code == 0, run
    slot_status = await handle.query("status", result_type=SlotStatus)
    await retire(stack, handle)
    histories = {**await every_run(stack.client, handle.id), **await every_run(stack.client, wid)}
    await stop_watch(stack)

    secrets = {
        "vast key": VAST_KEY,
        "wrong vast key": VAST_BAD,
        "hf token": HF_GOOD,
        "revoked hf token": HF_BAD,
        "civitai token": CIVITAI_GOOD,
        "revoked civitai token": CIVITAI_BAD,
        "instance secret": INSTANCE_SECRET,
        **{
            f"portal token of {inst.label}": derive_instance_token(
                INSTANCE_SECRET.encode(), inst.label
            )
            for inst in stack.sim.instances()
            if inst.label
        },
    }
    sources: dict[str, bytes] = {
        **histories,
        "slot status query": slot_status.model_dump_json().encode(),
        "watch status query": watch.model_dump_json().encode(),
        **{f"cli {' '.join(r.args)}": (r.out + r.err).encode() for r in runs},
        "log records": "\n".join(record_text(r) for r in caplog.records).encode(),
        "structlog events": repr(list(structlog_events)).encode(),
    }
    # The search can fail: a value planted in any source is found.
    assert find_leaks({"vast key": VAST_KEY}, {"probe": f"x{VAST_KEY}y".encode()})
    # It searched real material: both workflows continued as new, each step left its trace.
    assert sum(k.startswith(f"history {handle.id}") for k in histories) >= 2
    assert sum(k.startswith(f"history {wid}") for k in histories) >= 2
    assert len(stack.sim.instances()) == 2
    assert b"optional token civitai is invalid" in sources["log records"]
    assert len(structlog_events) > 10 and len(caplog.records) > 100
    assert (secrets_dir(stack) / "vast").read_text().strip() == VAST_KEY
    assert find_leaks(secrets, sources) == []
