"""How does any process of ours reach Temporal? One connect function with the right converter.

Clients and workers must agree on the converter: pydantic models, plus AES-GCM encryption of
every payload when `WARMPOOL_CODEC_KEYS` is set.
"""

from __future__ import annotations

import os

from temporalio.client import Client
from temporalio.converter import DataConverter

from warmpool.codec import KEYS_VARIABLE, data_converter, parse_keyring
from warmpool.settings import Settings


def converter_from_env() -> DataConverter:
    spec = os.environ.get(KEYS_VARIABLE)
    return data_converter(parse_keyring(spec) if spec else None)


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=converter_from_env(),
    )
