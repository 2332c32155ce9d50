"""The operator CLI behind `starter.py`: one module per command group, each with `register`."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from warmpool.cli import pool, reaper, slot, tokens
from warmpool.cli.common import CliError, Command, Parser
from warmpool.clients.token_watch import TokenWatchUnavailable
from warmpool.logging import configure_logging
from warmpool.settings import SettingsError, load_settings
from warmpool.temporal import connect

GROUPS = [pool, slot, tokens, reaper]


def build_parser() -> Parser:
    parser = Parser(prog="starter.py", description="Operate comfy-warmpool pools and slots.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    groups = parser.add_subparsers(dest="group", required=True, parser_class=Parser)
    for group in GROUPS:
        group.register(groups)
    return parser


async def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    check = getattr(args, "check", None)
    if check is not None:  # arguments that are wrong together fail before any connection
        check(args)
    settings = load_settings()
    # stdout is for results (`--json` must parse); library logs go to stderr, warnings only.
    configure_logging(json=False, level="WARNING", secret_values=lambda: [])
    try:
        client = await connect(settings)
    except RuntimeError as exc:
        raise CliError(f"cannot reach Temporal at {settings.temporal_address}: {exc}") from None
    func: Command = args.func
    await func(client, settings, args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return asyncio.run(run(sys.argv[1:] if argv is None else argv))
    except (CliError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code if isinstance(exc, CliError) else 2
    except TokenWatchUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:  # a request model refused what argparse let through
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors()
        )
        print(f"error: invalid request: {problems}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
