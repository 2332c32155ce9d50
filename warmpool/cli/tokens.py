"""How does an operator set, rotate and check service tokens? `starter.py tokens ...`.

- `set SERVICE` reads the value from stdin (no echo on a terminal) or `--file`, never from the
  command line (argv is visible in `ps` and shell history), and writes it to the file secret store
  (`WARMPOOL_SECRETS_DIR`) that every worker on this machine reads at its next activity; then it
  asks the token watch to re-check, so a bad value is reported at once.
- `validate` checks, in this process, the tokens that workers on this machine would read (file
  store, then environment) against the configured services. It needs no worker, so it works
  before anything is rented and right after a `set`. Without `VASTAI_API_KEY` and
  `VASTAI_BASE_URL` in this shell there is nothing to check from here (the run command gives
  them only to the processes it starts): there, `check-now` asks the workers.
- `check-now` asks the workers, through the `TokenWatchWorkflow` (started if needed), and prints
  their fresh results; `status` prints the watch's last results and when each one changed.
`validate` and `check-now` exit with status 1 when a required token is not valid.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from datetime import datetime
from pathlib import Path

from temporalio.client import Client

from warmpool.cli.common import USAGE, CliError, Parser, emit, human_seconds, json_flag, seconds
from warmpool.clients.token_watch import (
    WATCH_ID,
    ensure_token_watch,
    notify_watch,
    wait_for_round,
    watch_status,
)
from warmpool.logging import configure_logging
from warmpool.secrets import (
    FileSecretStore,
    SecretName,
    SecretStore,
    current_values,
    fingerprint,
    secret_store,
)
from warmpool.settings import DEFAULT_VAST_BASE_URL, Settings
from warmpool.tokens import (
    ServiceRecord,
    TokenCheck,
    TokenHealth,
    TokenService,
    TokenValidator,
    TokenWatchStatus,
    health_of,
)
from warmpool.vast import VastClient

SERVICES = [service.value for service in TokenService]


# ---- output ------------------------------------------------------------------------------------


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment else "-"


def render_records(records: list[ServiceRecord]) -> str:
    header = ("service", "required", "health", "since", "version", "detail")
    rows = [header] + [
        (
            r.service.value,
            "yes" if r.required else "no",
            r.health.value.upper() if r.problem else r.health.value,
            _when(r.since),
            r.last.version,
            r.last.detail,
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    )


def render_watch(status: TokenWatchStatus) -> str:
    head = (
        f"round {status.rounds} at {_when(status.last_round_at)}, "
        f"next at {_when(status.next_check_at)} (every {status.interval.total_seconds():.0f}s)"
    )
    lines = [head, render_records(status.services)]
    if status.last_error:
        lines.append(f"last error: {status.last_error}")
    return "\n".join(lines)


def fail_on_required(records: list[ServiceRecord]) -> None:
    bad = [r.service.value for r in records if r.required and r.health != TokenHealth.VALID]
    if bad:
        raise CliError(f"required token(s) not valid: {', '.join(bad)}")


# ---- commands ----------------------------------------------------------------------------------


def read_value(service: str, path: Path | None) -> str:
    """The new value from a file, a no-echo prompt (terminal) or stdin; surrounding whitespace
    (an `echo`'s newline) is dropped."""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}") from None
    elif sys.stdin.isatty():
        text = getpass.getpass(f"{service} token (not echoed): ")
    else:
        text = sys.stdin.read()
    value = text.strip()
    if not value:
        raise CliError(f"no value given for {service}: pipe it on stdin or use --file")
    if not (value.isascii() and value.isprintable() and " " not in value):
        raise CliError(f"the {service} value has characters a token cannot hold")
    return value


async def cmd_set(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    value = await asyncio.to_thread(read_value, args.service, args.file)
    files = FileSecretStore(settings.secrets_dir)
    name = SecretName(args.service)
    await asyncio.to_thread(files.set, name, value)
    notified = not args.no_check and await notify_watch(client, args.watch_id)
    path = files.path(name).absolute()
    result = {
        "service": args.service,
        "stored_in": str(path),
        "version": fingerprint(value),
        "watch_notified": notified,
    }
    human = (
        f"{args.service} token stored in {path} (version {fingerprint(value)}); "
        "workers on this machine use it at their next activity"
    )
    if notified:
        human += f"\nasked {args.watch_id} to re-check: see `warmpool tokens status`"
    emit(args, result, human)


async def validate_here(settings: Settings, store: SecretStore) -> list[TokenCheck]:
    """Every service checked from this process, with the store and URLs the workers use."""
    if settings.uses_simulator:
        raise CliError(
            "VASTAI_API_KEY and VASTAI_BASE_URL are not set in this shell, so there is nothing "
            "to check from here: `warmpool tokens check-now` asks the workers instead",
            USAGE,
        )
    base_url = settings.vastai_base_url or DEFAULT_VAST_BASE_URL
    async with VastClient(base_url, lambda: store.get(SecretName.VAST) or "") as vast:

        async def vast_identity() -> str:
            return str((await vast.current_user()).id)

        validator = TokenValidator(
            store,
            hf_base_url=settings.hf_endpoint,
            civitai_base_url=settings.civitai_base_url,
            vast_check=vast_identity,
        )
        return await validator.check_all(list(TokenService), force=True)


async def cmd_validate(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    store = secret_store(settings)
    # The library logs (e.g. each Vast.ai call): to stderr, redacted, so stdout stays parseable.
    configure_logging(level="WARNING", secret_values=lambda: current_values(store))
    checks = await validate_here(settings, store)
    records = [
        ServiceRecord(
            service=c.service,
            required=c.service.value in settings.require_tokens,
            health=health_of(c),
            since=c.checked_at,
            last=c,
        )
        for c in checks
    ]
    emit(args, [r.model_dump(mode="json") for r in records], render_records(records))
    fail_on_required(records)


async def cmd_check_now(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    handle = await ensure_token_watch(client, settings, workflow_id=args.watch_id, check_now=True)
    if args.no_wait:
        emit(args, {"workflow_id": handle.id, "requested": True}, f"asked {handle.id} to check")
        return
    try:
        async with asyncio.timeout(args.timeout):
            status = await wait_for_round(handle)
    except TimeoutError:
        raise CliError(
            f"no token check finished within {human_seconds(args.timeout)}: "
            f"is a worker running on task queue {settings.task_queue}?"
        ) from None
    emit(args, status.model_dump(mode="json"), render_watch(status))
    fail_on_required(status.services)


async def cmd_status(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    status = await watch_status(client.get_workflow_handle(args.watch_id))
    emit(args, status.model_dump(mode="json"), render_watch(status))


def register(groups: argparse._SubParsersAction[Parser]) -> None:
    tokens = groups.add_parser(
        "tokens",
        help="set, rotate and check the Vast.ai, Hugging Face, Civitai tokens",
        description="Service tokens live in the file secret store (WARMPOOL_SECRETS_DIR) or "
        "the environment; the token watch re-checks them periodically.",
    )
    cmds = tokens.add_subparsers(dest="command", required=True, parser_class=Parser)

    def with_watch(name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = cmds.add_parser(name, help=help, description=help)
        p.add_argument(
            "--watch-id",
            default=WATCH_ID,
            metavar="ID",
            help="the token watch's workflow id (default %(default)s)",
        )
        json_flag(p)
        return p

    put = with_watch("set", "store a token read from stdin or --file (never from argv)")
    put.add_argument("service", choices=SERVICES, help="which service's token")
    put.add_argument(
        "--file", type=Path, metavar="PATH", help="read the value from this file (default: stdin)"
    )
    put.add_argument(
        "--no-check",
        action="store_true",
        help="do not ask the token watch to re-check (default: ask it)",
    )
    put.set_defaults(func=cmd_set)

    validate = cmds.add_parser(
        "validate",
        help="check this shell's tokens from here (needs VASTAI_API_KEY and VASTAI_BASE_URL)",
    )
    json_flag(validate)
    validate.set_defaults(func=cmd_validate)

    now = with_watch("check-now", "have the workers re-check every token and print the results")
    now.add_argument(
        "--no-wait", action="store_true", help="do not wait for the results (default: wait)"
    )
    now.add_argument(
        "--timeout",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="seconds to wait for the results before failing with exit 1 (default 60)",
    )
    now.set_defaults(func=cmd_check_now)

    status = with_watch("status", "the token watch's last results")
    status.set_defaults(func=cmd_status)
