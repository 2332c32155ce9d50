"""The gateway's edges, without Temporal: what it refuses before any pool is asked.

The app runs in-process behind httpx's ASGI transport with a client that must never be used:
every request here is answered by validation, the body limit or the docs, so reaching Temporal
would be a bug (it raises).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from warmpool.gateway.app import create_app
from warmpool.secrets import EnvSecretStore
from warmpool.settings import Settings


class NoTemporal:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the gateway asked Temporal ({name}) for a request it must refuse")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(gateway_pools=["edge"]), NoTemporal(), EnvSecretStore({}))  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


def assert_json_error(answer: httpx.Response, status: int, error: str) -> str:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    body = answer.json()
    assert body["error"] == error, body
    detail: str = body["detail"]
    assert "\n" not in detail
    return detail


BIG = b'{"holder": "' + b"x" * (70 * 1024) + b'"}'


async def test_a_body_over_the_limit_is_a_json_413_with_content_length(
    http: httpx.AsyncClient,
) -> None:
    answer = await http.post(
        "/api/leases", content=BIG, headers={"content-type": "application/json"}
    )
    assert_json_error(answer, 413, "too_large")


async def test_a_chunked_body_over_the_limit_is_a_json_413(http: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(BIG), 8192):
            yield BIG[start : start + 8192]

    answer = await http.post(
        "/api/leases", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_json_error(answer, 413, "too_large")


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ('{"holder": "a", "duration_s": true}', "duration_s", "valid number"),
        ('{"holder": "a", "duration_s": false}', "duration_s", "valid number"),
        ('{"holder": "a", "wait_s": true}', "wait_s", "valid number"),
        ('{"holder": "a", "duration_s": NaN}', "duration_s", "finite number"),
        ('{"holder": "a", "duration_s": Infinity}', "duration_s", "finite number"),
        ('{"holder": "a", "duration_s": -Infinity}', "duration_s", "finite number"),
        ('{"holder": "a", "wait_s": NaN}', "wait_s", "finite number"),
        ('{"holder": "a", "duration_s": "60"}', "duration_s", "valid number"),
        ('{"holder": "x\\u0000y"}', "holder", "control characters"),
        ('{"holder": "a\\u001bb"}', "holder", "control characters"),
        ('{"holder": "line\\nbreak"}', "holder", "control characters"),
        ('{"holder": "   "}', "holder", "blank"),
        ('{"holder": "a", "request_id": " "}', "request_id", "blank"),
        ('{"holder": "a", "request_id": "r\\u0007"}', "request_id", "control characters"),
    ],
)
async def test_lease_requests_refused_with_the_right_reason(
    http: httpx.AsyncClient, body: str, field: str, reason: str
) -> None:
    answer = await http.post(
        "/api/leases", content=body, headers={"content-type": "application/json"}
    )
    detail = assert_json_error(answer, 422, "invalid_request")
    assert field in detail and reason in detail, detail


async def test_renew_refuses_a_boolean_or_nan_duration(http: httpx.AsyncClient) -> None:
    for body in ('{"duration_s": true}', '{"duration_s": NaN}'):
        answer = await http.post(
            "/api/leases/some-lease/renew",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert_json_error(answer, 422, "invalid_request")


async def test_unknown_routes_and_methods_answer_json(http: httpx.AsyncClient) -> None:
    assert_json_error(await http.get("/nope"), 404, "not_found")
    assert_json_error(await http.delete("/api/leases"), 405, "method_not_allowed")


async def test_openapi_describes_the_product_not_the_code(http: httpx.AsyncClient) -> None:
    info = (await http.get("/openapi.json")).json()["info"]
    description = info["description"]
    assert "POST /api/leases" in description and "proxy_path" in description
    assert "How is the gateway assembled" not in description
    assert "create_app" not in description and "__main__" not in description


async def test_docs_work_offline_from_the_installed_assets(http: httpx.AsyncClient) -> None:
    page = await http.get("/docs")
    assert page.status_code == 200
    assert "cdn." not in page.text and "https://" not in page.text, "no asset from the internet"
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
        assert asset in page.text
        served = await http.get(asset)
        assert served.status_code == 200 and len(served.content) > 10_000, asset
    spec = (await http.get("/openapi.json")).json()
    assert json.dumps(spec)  # the page's openapi_url answers JSON
