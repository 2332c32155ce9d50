"""Tokens end to end: preflight, token watch, rotation through `starter.py tokens`, codec server.

Real sockets throughout: dev server, simulator (it serves the HF and Civitai token checks), a
worker with the real activities, and `starter.py` run as a subprocess the way an operator runs it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import stat
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from temporalio.client import WorkflowHandle

from tests.helpers import assert_eventually, in_state, wait_status
from tests.integration.conftest import FAST_SIM, Stack, assert_no_orphans
from warmpool.clients.token_watch import ensure_token_watch
from warmpool.codec import KEYS_VARIABLE
from warmpool.models import SlotState, SlotStatus
from warmpool.secrets import FileSecretStore, SecretName, fingerprint
from warmpool.tokens import ServiceRecord, TokenHealth, TokenService, TokenWatchStatus

pytestmark = pytest.mark.integration
S = SlotState
Make = Callable[..., Any]
ROOT = Path(__file__).resolve().parents[2]


def _token(prefix: str) -> str:
    """Distinctive values, so that finding one anywhere is a real leak, not a coincidence."""
    return f"{prefix}{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}"


VAST_KEY = _token("vastkey")
VAST_BAD = _token("vastbad")
HF_GOOD = _token("hf_good")
HF_GOOD_2 = _token("hf_next")
HF_BAD = _token("hf_bad")
CIVITAI_GOOD = _token("civgood")
CIVITAI_BAD = _token("civbad")
TOKENS_SIM = FAST_SIM.model_copy(
    update={
        "api_key": SecretStr(VAST_KEY),
        "hf_tokens": frozenset({HF_GOOD, HF_GOOD_2}),
        "civitai_tokens": frozenset({CIVITAI_GOOD}),
    }
)


# ---- helpers shared with test_leak.py ----------------------------------------------------------


@dataclass
class CliRun:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def secrets_dir(stack: Stack) -> Path:
    """The directory of the stack's file store, the one `WARMPOOL_SECRETS_DIR` names."""
    files = stack.secrets.stores[0]
    assert isinstance(files, FileSecretStore)
    return files.directory


async def start_watch(stack: Stack, **overrides: Any) -> WorkflowHandle[Any, None]:
    """The watch as a worker would start it, on the stack's own task queue."""
    settings = stack.settings.model_copy(update={"task_queue": stack.queue, **overrides})
    return await ensure_token_watch(stack.client, settings, workflow_id=watch_id(stack))


def watch_id(stack: Stack) -> str:
    return f"warmpool/tokens/{stack.queue}"


def cli_env(stack: Stack, **extra: str) -> dict[str, str]:
    """What an operator's shell on the worker's machine holds; no token in it."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "TEMPORAL_ADDRESS": stack.client.service_client.config.target_host,
        "WARMPOOL_TASK_QUEUE": stack.queue,
        "WARMPOOL_SECRETS_DIR": str(secrets_dir(stack)),
        "WARMPOOL_REQUIRE_TOKENS": ",".join(stack.settings.require_tokens),
        "VASTAI_BASE_URL": stack.sim.base_url,
        "HF_ENDPOINT": stack.sim.hf_base_url,
        "CIVITAI_BASE_URL": stack.sim.civitai_base_url,
        **extra,
    }


async def run_cli(
    stack: Stack, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> CliRun:
    """`starter.py ARGS` in a subprocess; async, so the in-process worker keeps running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "starter.py"),
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=secrets_dir(stack).parent,  # away from the repo: no stray .env is read
        env=env or cli_env(stack),
    )
    out, err = await asyncio.wait_for(
        proc.communicate(stdin.encode() if stdin is not None else None), 60
    )
    assert proc.returncode is not None
    if proc.returncode < 0 and b"PyGILState_Release" in err:
        pytest.fail(
            "starter.py aborted while the interpreter shut down (temporalio/sdk-python#300): "
            "starter.py should flush and os._exit(code) once main() returns"
        )
    return CliRun(args, proc.returncode, out.decode(), err.decode())


async def watch_status(stack: Stack) -> TokenWatchStatus:
    handle = stack.client.get_workflow_handle(watch_id(stack))
    status: TokenWatchStatus = await handle.query("status", result_type=TokenWatchStatus)
    return status


async def wait_watch(
    stack: Stack, predicate: Callable[[TokenWatchStatus], bool]
) -> TokenWatchStatus:
    return await assert_eventually(
        lambda: watch_status(stack), predicate, timeout=20, describe="token watch condition"
    )


def record(status: TokenWatchStatus, service: TokenService) -> ServiceRecord:
    return next(r for r in status.services if r.service == service)


async def slot_ready(stack: Stack, handle: WorkflowHandle[Any, SlotStatus]) -> SlotStatus:
    return await wait_status(stack.env, handle, in_state(S.READY), attempts=1500)


async def retire(stack: Stack, handle: WorkflowHandle[Any, SlotStatus]) -> None:
    await handle.signal("retire", "test over")
    assert (await handle.result()).state == S.DONE
    assert_no_orphans(stack.sim)


async def stop_watch(stack: Stack) -> None:
    await stack.client.get_workflow_handle(watch_id(stack)).terminate("test over")


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and text in r.getMessage()
    ]


# ---- preflight ---------------------------------------------------------------------------------


async def test_invalid_required_token_blocks_before_any_rent(stack_factory: Make) -> None:
    stack: Stack = await stack_factory(TOKENS_SIM, require_tokens=["vast", "hf"])
    stack.secrets.set(SecretName.VAST, VAST_KEY)
    stack.secrets.set(SecretName.HF, HF_BAD)
    handle = await stack.start_slot()
    status = await wait_status(stack.env, handle, in_state(S.BLOCKED), attempts=1500)
    assert status.blocked_reason is not None
    assert status.blocked_reason.startswith("required token invalid: hf: 401")
    counts = stack.sim.call_counts
    assert counts.get("hf_whoami", 0) >= 1, "the HF token was really checked"
    assert counts.get("bundles", 0) == 0 and counts.get("create", 0) == 0, counts

    # The operator's view from the CLI, checked from its own process with the same store.
    run = await run_cli(stack, "tokens", "validate", "--json")
    assert run.code == 1, run
    health = {row["service"]: (row["health"], row["required"]) for row in run.json()}
    assert health == {
        "vast": ("valid", True),
        "hf": ("invalid", True),
        "civitai": ("unset", False),
    }
    assert "required token(s) not valid: hf" in run.err
    await retire(stack, handle)
    assert stack.sim.call_counts.get("create", 0) == 0


async def test_optional_invalid_token_is_only_a_warning(
    stack_factory: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    stack: Stack = await stack_factory(TOKENS_SIM, require_tokens=["vast"])
    stack.secrets.set(SecretName.HF, HF_BAD)
    stack.secrets.set(SecretName.CIVITAI, CIVITAI_GOOD)
    await start_watch(stack)
    handle = await stack.start_slot()
    await slot_ready(stack, handle)

    status = await wait_watch(stack, lambda s: s.rounds >= 1)
    health = {r.service: (r.health, r.required) for r in status.services}
    assert health == {
        TokenService.VAST: (TokenHealth.VALID, True),
        TokenService.HF: (TokenHealth.INVALID, False),
        TokenService.CIVITAI: (TokenHealth.VALID, False),
    }
    assert warnings_about(caplog, "optional token hf is invalid")
    assert not warnings_about(caplog, "token vast is")

    run = await run_cli(stack, "tokens", "status", "--watch-id", watch_id(stack))
    assert run.code == 0, run
    hf_line = next(line for line in run.out.splitlines() if line.startswith("hf "))
    assert "INVALID" in hf_line and "401" in hf_line
    await retire(stack, handle)
    await stop_watch(stack)


# ---- rotation ----------------------------------------------------------------------------------


async def test_rotation_through_the_cli_reaches_the_running_worker(
    stack_factory: Make, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO)
    stack: Stack = await stack_factory(TOKENS_SIM, require_tokens=["vast", "hf"])
    stack.secrets.set(SecretName.VAST, VAST_KEY)
    handle = await stack.start_slot()
    blocked = await wait_status(stack.env, handle, in_state(S.BLOCKED), attempts=1500)
    assert blocked.blocked_reason and "hf: not configured" in blocked.blocked_reason

    # check-now starts the watch (signal-with-start) and waits for its round.
    run = await run_cli(stack, "tokens", "check-now", "--watch-id", watch_id(stack), "--json")
    assert run.code == 1 and "required token(s) not valid: hf" in run.err, run
    assert {r["service"]: r["health"] for r in run.json()["services"]}["hf"] == "unset"

    # Rotation: the value comes on stdin, lands in the file store the worker reads.
    run = await run_cli(
        stack, "tokens", "set", "hf", "--watch-id", watch_id(stack), "--json", stdin=HF_GOOD + "\n"
    )
    assert run.code == 0, run
    assert run.json()["watch_notified"] is True
    stored = secrets_dir(stack) / "hf"
    assert stored.read_text() == HF_GOOD + "\n"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert HF_GOOD not in run.out + run.err

    # The same worker, never restarted, uses it at its next activity: preflight passes.
    await handle.signal("resume")
    ready = await slot_ready(stack, handle)
    reasons = [t.reason for t in ready.transitions]
    assert reasons.index("tokens valid: vast, hf") > reasons.index("resume requested")
    watch = await wait_watch(stack, lambda s: record(s, TokenService.HF).health == "valid")
    valid_since = record(watch, TokenService.HF).since

    # Rotating to another valid token from a file: the watch sees the new version at once.
    new_file = tmp_path / "hf-next.txt"
    new_file.write_text(HF_GOOD_2)
    run = await run_cli(
        stack, "tokens", "set", "hf", "--file", str(new_file), "--watch-id", watch_id(stack)
    )
    assert run.code == 0 and fingerprint(HF_GOOD_2) in run.out, run
    watch = await wait_watch(
        stack, lambda s: record(s, TokenService.HF).last.version == fingerprint(HF_GOOD_2)
    )
    assert record(watch, TokenService.HF).health == TokenHealth.VALID
    assert record(watch, TokenService.HF).since == valid_since, "still valid: no change"

    # A revoked token is reported at once, not at the next period; serving slots keep serving.
    run = await run_cli(stack, "tokens", "set", "hf", "--watch-id", watch_id(stack), stdin=HF_BAD)
    assert run.code == 0, run
    watch = await wait_watch(stack, lambda s: record(s, TokenService.HF).health == "invalid")
    assert record(watch, TokenService.HF).since > valid_since
    assert warnings_about(caplog, "required token hf is invalid")
    status = await handle.query("status", result_type=SlotStatus)
    assert status.state == S.READY and status.instance == ready.instance
    assert stack.sim.call_counts["create"] == 1
    await retire(stack, handle)
    await stop_watch(stack)


async def test_set_refuses_an_empty_value_and_never_takes_it_from_argv(
    stack_factory: Make,
) -> None:
    stack: Stack = await stack_factory(TOKENS_SIM)
    run = await run_cli(stack, "tokens", "set", "civitai", "--no-check", stdin="  \n")
    assert run.code == 1 and "no value given" in run.err
    run = await run_cli(stack, "tokens", "set", "civitai", CIVITAI_GOOD, "--no-check")
    assert run.code == 2 and "unrecognized arguments" in run.err
    assert not (secrets_dir(stack) / "civitai").exists()


# ---- the watch over time -----------------------------------------------------------------------


async def test_watch_checks_periodically_and_carries_its_state_across_continue_as_new(
    stack_factory: Make,
) -> None:
    stack: Stack = await stack_factory(TOKENS_SIM, token_check_ms=50)
    stack.secrets.set(SecretName.VAST, VAST_KEY)
    handle = await start_watch(stack)
    first_run = (await handle.describe()).run_id
    # The durable timer alone drives rounds (the server fires timers about once a second).
    first = await wait_watch(stack, lambda s: s.rounds >= 2)
    assert first.requests == 0
    vast_since = record(first, TokenService.VAST).since

    # check_now runs a round at once; a few dozen events later the dev server (suggestion at
    # 50 events) makes the watch continue as new.
    async with asyncio.timeout(20):
        while (await handle.describe()).run_id == first_run:
            await handle.signal("check_now")
            await asyncio.sleep(0.05)
    later = await wait_watch(stack, lambda s: s.served == s.requests)
    assert later.rounds > first.rounds and later.requests > 0
    assert record(later, TokenService.VAST).since == vast_since
    assert record(later, TokenService.VAST).health == TokenHealth.VALID
    assert later.interval == timedelta(milliseconds=50)
    latest_run = (await handle.describe()).run_id
    again = await start_watch(stack)
    assert (await again.describe()).run_id == latest_run, "a second start reuses the watch"
    await stop_watch(stack)


# ---- the codec server command ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_codec_server_command_serves_the_ui_with_keys_from_the_environment() -> None:
    port = _free_port()
    key = base64.b64encode(os.urandom(32)).decode()
    env = {
        "PATH": os.environ.get("PATH", ""),
        KEYS_VARIABLE: f"k1:{key}",
        "WARMPOOL_CODEC_AUTH_TOKEN": "operator-codec-token",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "warmpool.codec_server",
        "--port",
        str(port),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    plain = {
        "payloads": [
            {
                "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
                "data": base64.b64encode(b'{"hello": "ui"}').decode(),
            }
        ]
    }
    auth = {"Authorization": "Bearer operator-codec-token"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            async with asyncio.timeout(15):
                while True:
                    try:
                        denied = await http.post("/default/encode", json=plain)
                        break
                    except httpx.ConnectError:
                        await asyncio.sleep(0.1)
            assert denied.status_code == 401
            encoded = await http.post("/default/encode", json=plain, headers=auth)
            assert encoded.status_code == 200
            metadata = encoded.json()["payloads"][0]["metadata"]
            assert base64.b64decode(metadata["encoding"]) == b"binary/encrypted"
            decoded = await http.post("/default/decode", json=encoded.json(), headers=auth)
            assert decoded.json() == plain
    finally:
        proc.terminate()
        _, err = await proc.communicate()
    assert key not in err.decode() and "operator-codec-token" not in err.decode()
