"""Fixtures for the simulator's tests: fast simulators and an authenticated API client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from tests.vastsim.helpers import FAST, client
from vastsim import Simulator

MakeSim = Callable[..., Awaitable[Simulator]]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(FAST) as simulator:
        yield simulator


@pytest.fixture
async def api(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    async with client(sim) as api_client:
        yield api_client


@pytest.fixture
async def make_sim() -> AsyncIterator[MakeSim]:
    """Start simulators with FAST settings changed by keyword; all are stopped afterwards."""
    started: list[Simulator] = []

    async def make(**changes: Any) -> Simulator:
        simulator = Simulator(FAST.model_copy(update=changes))
        await simulator.start()
        started.append(simulator)
        return simulator

    yield make
    for simulator in started:
        await simulator.stop()
