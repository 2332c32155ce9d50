"""How is the gateway run? `python -m warmpool.gateway`: settings, Temporal, then uvicorn.

Binds `WARMPOOL_GATEWAY_HOST:WARMPOOL_GATEWAY_PORT` (default 127.0.0.1:3000, the seeds' proxy
port). A bad setting or an unreachable Temporal stops it with one line on stderr (exit 2 / 1).
SIGTERM and Ctrl-C stop it gracefully (open requests get 5 s); uvicorn then re-raises the
signal, so the exit status says which one.
"""

from __future__ import annotations

import asyncio
import sys

import uvicorn

from warmpool.gateway.app import create_app
from warmpool.gateway.proxy import WS_MAX_MESSAGE
from warmpool.logging import configure_logging
from warmpool.secrets import (
    SIM_INSTANCE_SECRET,
    EnvSecretStore,
    LayeredSecretStore,
    current_values,
    secret_store,
)
from warmpool.settings import Settings, SettingsError, load_settings
from warmpool.temporal import connect


def gateway_secrets(settings: Settings) -> LayeredSecretStore:
    """The secrets as a worker on this machine reads them (file store, then environment); with
    the embedded simulator also its instance secret, so its portals open to the gateway too."""
    if settings.uses_simulator:
        return secret_store(
            settings, EnvSecretStore({"WARMPOOL_INSTANCE_SECRET": SIM_INSTANCE_SECRET})
        )
    return secret_store(settings)


async def serve(settings: Settings) -> int:
    secrets = gateway_secrets(settings)
    configure_logging(
        json=settings.log_json,
        level=settings.log_level,
        secret_values=lambda: current_values(secrets),
    )
    try:
        client = await connect(settings)
    except RuntimeError as exc:
        where = settings.temporal_address
        print(f"gateway: cannot reach Temporal at {where}: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    app = create_app(settings, client, secrets)
    config = uvicorn.Config(
        app,
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_config=None,
        ws="websockets-sansio",
        ws_max_size=WS_MAX_MESSAGE,
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    server = uvicorn.Server(config)
    await server.serve()
    return 0 if server.started else 1


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)  # noqa: T201 - before logging is configured
        return 2
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
