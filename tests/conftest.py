"""Shared fixtures: real Temporal servers (time-skipping and dev), never mocked."""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from warmpool import search_attributes as sa

BIN = Path(sys.executable).parent


def _binary(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the dev extras (pip install -e '.[dev]')")
    return found


async def register_search_attributes(client: Client) -> None:
    kinds = {
        "KEYWORD": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "INT": IndexedValueType.INDEXED_VALUE_TYPE_INT,
    }
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={k.name: kinds[k.indexed_value_type.name] for k in sa.ALL},
        )
    )


@pytest.fixture(scope="session")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server: hours of timers in milliseconds."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=_binary("temporal-test-server"),
        data_converter=pydantic_data_converter,
    )
    await register_search_attributes(env.client)
    yield env
    await env.shutdown()


EARLY_CONTINUE_AS_NEW = ("--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=50")
"""Dev server flags that make workflows continue-as-new within a test (as sdk-python's do)."""


async def start_dev_server(*extra_args: str) -> WorkflowEnvironment:
    """A real dev server (in memory) with our search attributes and data converter."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=_binary("temporal"),
        data_converter=pydantic_data_converter,
        search_attributes=sa.ALL,
        dev_server_extra_args=list(extra_args),
    )


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """The real dev server, with a tiny continue-as-new suggestion so it happens in tests."""
    env = await start_dev_server(*EARLY_CONTINUE_AS_NEW)
    yield env
    await env.shutdown()


@pytest.fixture(autouse=True, scope="session")
def _quiet_structlog() -> None:
    """Library debug events (e.g. every Vast.ai call) stay out of test output."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
