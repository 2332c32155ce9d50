"""The operator CLI (`warmpool`, or `python starter.py`): one module per command group.

Exit codes: 0 success (a request already satisfied included), 2 a bad argument or setting or a
request that cannot be done as asked, 1 a runtime failure; 130 after Ctrl-C. Every error is one
line on stderr (an environment file's problems: one line each, naming the field); a reader that
stops early (`| head -1`) ends the command quietly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from pydantic import ValidationError

from warmpool.cli import pool, reaper, slot, tokens
from warmpool.cli.common import FAILURE, PROG, USAGE, CliError, Command, Parser
from warmpool.clients.token_watch import TokenWatchUnavailable
from warmpool.logging import configure_logging
from warmpool.settings import SettingsError, load_settings
from warmpool.temporal import connect

GROUPS = [pool, slot, tokens, reaper]

DESCRIPTION = """\
Operate comfy-warmpool: warm pools of ComfyUI GPU instances on Vast.ai, run as Temporal
workflows. Every command takes --pool NAME (default: $WARMPOOL_POOL, else 'default') and
reaches Temporal at $TEMPORAL_ADDRESS (default 127.0.0.1:7233).
"""

EPILOG = """\
examples:
  warmpool pool status
  warmpool lease acquire --holder alice --duration 3600
  warmpool pool resize --min-ready 3 --budget 5
  warmpool slot logs --index 0 --follow
  warmpool pool set-env --file examples/environment.yaml --wait

exit codes: 0 success; 2 a bad argument or a request that cannot be done as asked (unknown
pool, slot or lease; min_ready above max_slots; nothing to change); 1 a runtime failure
(Temporal unreachable, no capacity now, a wait that ran out).
`warmpool GROUP --help` and `warmpool GROUP COMMAND --help` say more.
"""


def build_parser(prog: str = PROG) -> Parser:
    parser = Parser(
        prog=prog,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--json", action="store_true", help="print machine-readable JSON instead of text"
    )
    groups = parser.add_subparsers(
        title="command groups",
        dest="group",
        required=True,
        parser_class=Parser,
        metavar="GROUP",
    )
    for group in GROUPS:
        group.register(groups)
    return parser


def resolve_pool(args: argparse.Namespace, default: str) -> None:
    """`--pool` or the positional POOL (one of them, or both the same), else the default."""
    positional = getattr(args, "pool_arg", None)
    if positional is not None:
        if args.pool is not None and args.pool != positional:
            raise CliError(f"two pools given: {positional} and --pool {args.pool}", USAGE)
        args.pool = positional
    if hasattr(args, "pool") and args.pool is None and getattr(args, "pool_default", True):
        args.pool = default


async def run(argv: Sequence[str], prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    check = getattr(args, "check", None)
    if check is not None:  # arguments that are wrong together fail before any connection
        check(args)
    settings = load_settings()
    resolve_pool(args, settings.pool)
    # stdout is for results (`--json` must parse); library logs go to stderr, warnings only.
    configure_logging(json=False, level="WARNING", secret_values=lambda: [])
    try:
        client = await connect(settings)
    except RuntimeError as exc:
        raise CliError(
            f"cannot reach Temporal at {settings.temporal_address} ({unreachable(exc)}): is it "
            "running? `./scripts/run.sh` starts one; TEMPORAL_ADDRESS says where it is"
        ) from None
    func: Command = args.func
    await func(client, settings, args)
    return 0


def unreachable(exc: BaseException) -> str:
    """The SDK's connection error (a Rust debug print) in a few words."""
    text = str(exc).lower()
    for marker, words in (
        ("refused", "connection refused"),
        ("dns", "unknown host"),
        ("timed out", "no answer in time"),
        ("deadline", "no answer in time"),
        ("certificate", "TLS certificate refused"),
        ("tls", "TLS handshake failed"),
    ):
        if marker in text:
            return words
    return "no connection"


def _quiet_stdout() -> None:
    """The reader went away (`| head -1`): send whatever is still buffered nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    try:
        code = asyncio.run(run(sys.argv[1:] if argv is None else argv, prog))
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except (CliError, SettingsError) as exc:
        for line in str(exc).splitlines() or [""]:  # one line; a file's problems, one each
            print(f"error: {line}", file=sys.stderr)
        return exc.code if isinstance(exc, CliError) else USAGE
    except TokenWatchUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return FAILURE
    except ValidationError as exc:  # a request model refused what argparse let through
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors()
        )
        print(f"error: invalid request: {problems}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        detail = str(exc).splitlines()[0] if str(exc) else "no detail"
        print(f"error: unexpected failure: {detail}", file=sys.stderr)
        return FAILURE


def exit_now(code: int) -> NoReturn:
    """Flush and leave at once: the Temporal SDK's native threads can abort interpreter
    finalisation (temporalio/sdk-python#300), and the CLI has nothing left to clean up."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):
            pass
    os._exit(code)


def console() -> NoReturn:
    """The `warmpool` console script (pyproject `[project.scripts]`)."""
    exit_now(main())
