"""A property-based fuzz of the gateway's OpenAPI description: no 5xx, no hang.

Schemathesis generates requests for every documented operation from `/openapi.json` (valid
and invalid ones), half of them with the admin key, and sends them over real HTTP to a gateway
in front of a real pool. Every answer must come within the client's timeout, must not be a 5xx,
and must match the documented status codes and schemas.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode
from temporalio.testing import WorkflowEnvironment

from tests.gateway.conftest import ADMIN_KEY, GatewayStack, gateway_stack

pytestmark = pytest.mark.integration

EXAMPLES = 250
TIMEOUT_S = 20.0
"""Well above the gateway's own deadlines (Temporal 5 s, waits capped at 1 s here)."""


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayStack]:
    async with gateway_stack(
        dev_env, tmp_path_factory.mktemp("gw-fuzz"), gateway_max_wait_s=1.0
    ) as s:
        yield s


def without_duration_format(node: Any) -> Any:
    """The description minus `format: duration`: the validator's RFC 3339 durations have no
    fractional seconds, which ISO 8601 (and pydantic's `PT0.2S`) allow."""
    if isinstance(node, dict):
        return {
            k: without_duration_format(v)
            for k, v in node.items()
            if not (k == "format" and v == "duration")
        }
    if isinstance(node, list):
        return [without_duration_format(v) for v in node]
    return node


def fuzz(url: str) -> list[str]:
    """Run the fuzz (blocking: the event loop keeps serving meanwhile); the failures found."""
    description = requests.get(f"{url}/openapi.json", timeout=TIMEOUT_S).json()
    schema = schemathesis.openapi.from_dict(without_duration_format(description))
    cases = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )
    problems: list[str] = []
    session = requests.Session()

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=cases, admin=st.booleans())
    def run(case: schemathesis.Case[Any], admin: bool) -> None:
        headers = {"X-Admin-Key": ADMIN_KEY} if admin else {}
        label = f"{case.method} {case.formatted_path}"
        try:
            response = case.call(base_url=url, session=session, headers=headers, timeout=TIMEOUT_S)
        except requests.Timeout:
            problems.append(f"{label}: no answer within {TIMEOUT_S:.0f}s")
            return
        if response.status_code >= 500:
            problems.append(f"{label}: {response.status_code} {response.text[:200]}")
            return
        try:
            case.validate_response(response)
        except BaseExceptionGroup as exc:  # schemathesis raises its failed checks as a group
            problems.append(f"{label}: {str(exc)[:300]}")

    run()
    return problems


async def test_no_request_from_the_openapi_description_gets_a_5xx_or_hangs(
    stack: GatewayStack,
) -> None:
    problems = await asyncio.to_thread(fuzz, stack.url)
    assert problems == [], "\n".join(problems[:20])
    status = await stack.status()
    assert status.safe_mode is False, "the fuzz did not break the pool"
