"""What does every CLI command share? Errors, argument types, output and the Temporal client."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from temporalio.client import Client

from warmpool.labels import validate_pool_name
from warmpool.settings import Settings


class CliError(Exception):
    """A one-line error for the operator; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(f"{self.prog}: {message} (see --help)", code=2)


Command = Callable[[Client, Settings, argparse.Namespace], Awaitable[None]]
Subparsers = "argparse._SubParsersAction[Parser]"


def pool_name(value: str) -> str:
    try:
        return validate_pool_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def slot_index(value: str) -> int:
    try:
        index = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"slot index must be an integer, got {value!r}") from None
    if not 0 <= index < 10_000:
        raise argparse.ArgumentTypeError(f"slot index must be between 0 and 9999, got {index}")
    return index


def json_flag(parser: argparse.ArgumentParser) -> None:
    """`--json` accepted after the subcommand too (the top-level flag is the default)."""
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS)


def emit(args: argparse.Namespace, payload: Any, human: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(human)
