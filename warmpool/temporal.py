"""How does any process of ours reach Temporal? One connect function with the right converter.

Clients and workers must agree on the converter: pydantic models, plus AES-GCM encryption of
every payload when `WARMPOOL_CODEC_KEYS` is set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.envconfig import ClientConfig

from warmpool.codec import KEYS_VARIABLE, data_converter, parse_keyring
from warmpool.settings import Settings


def converter_from_env() -> DataConverter:
    spec = os.environ.get(KEYS_VARIABLE)
    return data_converter(parse_keyring(spec) if spec else None)


def connect_options(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """TLS and an API key from the SDK's environment variables (`TEMPORAL_API_KEY`,
    `TEMPORAL_TLS`, `TEMPORAL_TLS_CLIENT_CERT_PATH`, `TEMPORAL_TLS_CLIENT_KEY_PATH`, ... as the
    `temporal` CLI reads them), so Temporal Cloud or a TLS cluster needs no code change.
    Address and namespace stay the settings'; none set gives a plain local connection."""
    config = ClientConfig.load_client_connect_config(disable_file=True, override_env_vars=environ)
    return {k: v for k, v in config.items() if k in ("api_key", "tls", "rpc_metadata")}


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=converter_from_env(),
        **connect_options(),
    )
