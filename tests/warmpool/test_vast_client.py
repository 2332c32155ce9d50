"""Does VastClient speak the documented Vast.ai API, quirks included, and fail loudly and safely?

Every answer here is a shape from docs/reference/vastai-api.md, served by httpx.MockTransport.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

from warmpool.errors import (
    VastAuthError,
    VastCreateFailed,
    VastError,
    VastMalformedResponse,
    VastNotFound,
    VastOfferUnavailable,
    VastRateLimited,
    VastRequestRejected,
    VastServerError,
    VastTransportError,
    WarmpoolError,
    is_retryable,
)
from warmpool.models import OfferConstraints
from warmpool.vast import (
    VAST_DEFAULT_MIN_INTERVALS,
    CreateRequest,
    Instance,
    Offer,
    VastClient,
    billing_per_hour,
    is_stopped,
    parse_retry_after,
    port_env,
    scaled_min_intervals,
    storage_per_hour,
    to_summary,
    to_view,
)

KEY = "vk-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
BASE = "https://vast.test/api/v0"

Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]
MakeClient = Callable[..., tuple[VastClient, list[httpx.Request]]]


def ok(body: Any, status: int = 200, **kwargs: Any) -> httpx.Response:
    return httpx.Response(status, json=body, **kwargs)


def text(body: str, status: int = 200, **kwargs: Any) -> httpx.Response:
    return httpx.Response(status, text=body, **kwargs)


def query(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(str(request.url)).query).items()}


@pytest.fixture
async def vast() -> AsyncIterator[MakeClient]:
    """Builds clients whose transport answers the given answers in order (the last repeats)."""
    clients: list[VastClient] = []

    def make(
        *answers: Answer, api_key: Callable[[], str] = lambda: KEY, **kwargs: Any
    ) -> tuple[VastClient, list[httpx.Request]]:
        seen: list[httpx.Request] = []
        script = list(answers)

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            answer = script.pop(0) if len(script) > 1 else script[0]
            if isinstance(answer, Exception):
                raise answer
            if callable(answer):
                return answer(request)
            return answer

        client = VastClient(BASE, api_key, transport=httpx.MockTransport(handler), **kwargs)
        clients.append(client)
        return client, seen

    yield make
    for client in clients:
        await client.aclose()


def instance_row(instance_id: int, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": instance_id,
        "label": "wp.a.0.1",
        "actual_status": "running",
        "public_ipaddr": "1.2.3.4\n",
        "ports": {"8188/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41234"}]},
    }
    row.update(fields)
    return row


def offer_row(offer_id: int, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": offer_id,
        "machine_id": 1000 + offer_id,
        "gpu_name": "RTX 4090",
        "num_gpus": 1,
        "gpu_ram": 24564,
        "cpu_cores": None,
        "disk_space": 300.0,
        "dph_total": 0.4,
        "inet_down": 900.0,
        "reliability": 0.99,
        "direct_port_count": 20,
        "verification": "verified",
        "rentable": True,
        "rented": False,
        "external": False,
        "geolocation": "Oslo, NO",
    }
    row.update(fields)
    return row


def create_request(**fields: Any) -> CreateRequest:
    values: dict[str, Any] = {
        "image": "vastai/comfyui:latest",
        "disk": 250,
        "label": "wp.a.0.1",
        "env": {**port_env([8188]), "OPEN_BUTTON_TOKEN": "portal-secret-123456"},
    }
    values.update(fields)
    return CreateRequest(**values)


# --- auth ------------------------------------------------------------------------------------


async def test_bearer_header_only_and_never_in_the_url(vast: MakeClient) -> None:
    client, seen = vast(ok({"id": 1, "email": "a@b.c"}))
    await client.current_user()
    request = seen[0]
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert "api_key" not in str(request.url)
    assert KEY not in str(request.url)
    assert request.url.path == "/api/v0/users/current/"


async def test_rotated_key_is_used_from_the_next_call(vast: MakeClient) -> None:
    keys = iter(["old-key-000000", "new-key-111111"])
    current = {"key": next(keys)}
    client, seen = vast(ok({"id": 1}), api_key=lambda: current["key"])
    await client.current_user()
    current["key"] = next(keys)
    await client.current_user()
    assert [r.headers["Authorization"] for r in seen] == [
        "Bearer old-key-000000",
        "Bearer new-key-111111",
    ]


async def test_missing_key_fails_without_calling(vast: MakeClient) -> None:
    client, seen = vast(ok({"id": 1}), api_key=lambda: "  ")
    with pytest.raises(VastAuthError, match="no API key"):
        await client.current_user()
    assert seen == []


async def test_key_with_trailing_newline_is_stripped(vast: MakeClient) -> None:
    client, seen = vast(ok({"id": 1}), api_key=lambda: KEY + "\n")
    await client.current_user()
    assert seen[0].headers["Authorization"] == f"Bearer {KEY}"


async def test_current_user_drops_the_api_key(vast: MakeClient) -> None:
    body = {"id": 7, "email": "you@example.com", "credit": 25.0, "api_key": KEY, "sid": "s"}
    client, _ = vast(ok(body))
    user = await client.current_user()
    assert user.id == 7 and user.credit == 25.0
    assert KEY not in repr(user) and KEY not in user.model_dump_json()


async def test_invalid_user_key_is_an_auth_error(vast: MakeClient) -> None:
    body = {"success": False, "error": "auth_error", "msg": "Invalid user key"}
    client, _ = vast(ok(body, status=401))
    with pytest.raises(VastAuthError) as caught:
        await client.show_instance(5)
    assert caught.value.status == 401
    assert caught.value.code == "auth_error"
    assert caught.value.msg == "Invalid user key"
    assert "Invalid user key" in str(caught.value)
    assert not is_retryable(caught.value)


async def test_403_non_json_is_an_auth_error(vast: MakeClient) -> None:
    client, _ = vast(text("<html>Forbidden</html>", status=403))
    with pytest.raises(VastAuthError, match="Forbidden"):
        await client.list_instances()


# --- search ----------------------------------------------------------------------------------


async def test_search_sends_the_documented_filters(vast: MakeClient) -> None:
    client, seen = vast(ok({"offers": []}))
    constraints = OfferConstraints(
        min_disk_gb=250,
        min_direct_ports=8,
        max_dph=0.6,
        gpu_names=["RTX_4090", "RTX 3090"],
        min_gpu_ram_mb=24000,
        min_inet_down=500,
        min_reliability=0.98,
        limit=30,
    )
    await client.search_offers(constraints, exclude_machines={42, 7})
    request = seen[0]
    assert request.method == "POST" and request.url.path == "/api/v0/bundles/"
    assert request.headers["Content-Type"] == "application/json"
    body = json.loads(request.content)
    assert body == {
        "verified": {"eq": True},
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "external": {"eq": False},
        "disk_space": {"gte": 250},
        "direct_port_count": {"gte": 8},
        "dph_total": {"lte": 0.6},
        "inet_down": {"gte": 500},
        "reliability": {"gte": 0.98},
        "num_gpus": {"eq": 1},
        "gpu_name": {"in": ["RTX 4090", "RTX 3090"]},
        "gpu_ram": {"gte": 24000},
        "machine_id": {"notin": [7, 42]},
        "order": [["dph_total", "asc"]],
        "type": "on-demand",
        "limit": 30,
        "allocated_storage": 250,
    }


async def test_search_rechecks_every_offer_client_side(vast: MakeClient) -> None:
    offers = [
        offer_row(1, dph_total=0.5),
        offer_row(2, disk_space=100),  # the server ignored the disk filter
        offer_row(3, machine_id=42),  # excluded machine
        offer_row(4, dph_total=1.5),  # over the price cap
        offer_row(5, gpu_name="RTX 3060"),
        offer_row(6, direct_port_count=2),
        offer_row(7, rented=True),
        offer_row(8, verification="unverified"),
        offer_row(9, num_gpus=2),
        offer_row(10, dph_total=0.2),
        offer_row(11, disk_space=None),  # unknown disk is not enough disk
        offer_row(12, gpu_name="rtx_4090", dph_total=0.3),
    ]
    client, _ = vast(ok({"offers": offers}))
    constraints = OfferConstraints(max_dph=1.0, gpu_names=["RTX 4090"])
    found = await client.search_offers(constraints, exclude_machines=[42])
    assert [o.id for o in found] == [10, 12, 1]


async def test_search_truncates_to_the_limit(vast: MakeClient) -> None:
    client, _ = vast(ok({"offers": [offer_row(i, dph_total=0.1 * i) for i in range(1, 6)]}))
    found = await client.search_offers(OfferConstraints(limit=2))
    assert [o.id for o in found] == [1, 2]


@pytest.mark.parametrize(
    "answer",
    [ok({"offers": {"id": 1}}), ok({}), ok([]), text("<html>oops</html>"), ok({"offers": [5]})],
)
async def test_search_malformed(vast: MakeClient, answer: httpx.Response) -> None:
    client, _ = vast(answer)
    with pytest.raises(VastMalformedResponse):
        await client.search_offers(OfferConstraints())


async def test_search_invalid_json_body_is_rejected(vast: MakeClient) -> None:
    client, _ = vast(ok({"error": "invalid_request", "msg": "Invalid json body"}, status=400))
    with pytest.raises(VastRequestRejected, match="invalid_request") as caught:
        await client.search_offers(OfferConstraints())
    assert type(caught.value) is VastRequestRejected


def test_to_summary() -> None:
    summary = to_summary(Offer.model_validate(offer_row(3, extra_field="x", storage_cost=0.2)))
    assert summary.id == 3 and summary.machine_id == 1003 and summary.geolocation == "Oslo, NO"
    assert summary.storage_cost == 0.2


# --- create ----------------------------------------------------------------------------------


async def test_create_sends_the_documented_body(vast: MakeClient) -> None:
    answer = {"success": True, "new_contract": 12345678, "instance_api_key": "d15a"}
    client, seen = vast(ok(answer))
    request = create_request(onstart="entrypoint.sh", runtype="jupyter_direct")
    assert await client.create_instance(99, request) == 12345678
    sent = seen[0]
    assert sent.method == "PUT" and sent.url.path == "/api/v0/asks/99/"
    assert sent.headers["Content-Type"] == "application/json"
    assert json.loads(sent.content) == {
        "client_id": "me",
        "image": "vastai/comfyui:latest",
        "disk": 250.0,
        "label": "wp.a.0.1",
        "env": {"-p 8188:8188": "1", "OPEN_BUTTON_TOKEN": "portal-secret-123456"},
        "onstart": "entrypoint.sh",
        "runtype": "jupyter_direct",
        "cancel_unavail": True,
    }


async def test_create_with_a_price_is_a_bid(vast: MakeClient) -> None:
    client, seen = vast(ok({"success": True, "new_contract": 5}))
    await client.create_instance(1, create_request(price=0.3))
    body = json.loads(seen[0].content)
    assert body["price"] == 0.3 and "onstart" not in body and "runtype" not in body


async def test_create_answer_with_id_but_no_new_contract_is_malformed(vast: MakeClient) -> None:
    client, _ = vast(ok({"success": True, "id": 12345678}))
    with pytest.raises(VastMalformedResponse, match="new_contract"):
        await client.create_instance(1, create_request())


@pytest.mark.parametrize(
    ("answer", "contract"),
    [
        (ok({"new_contract": 55}), 55),  # no success key at all
        (ok({"success": False, "error": "invalid_price", "new_contract": 56}), 56),
        (ok({"success": False, "error": "invalid_price", "new_contract": 57}, status=400), 57),
        (ok({"success": False, "msg": "bid too low", "new_contract": "58"}, status=500), 58),
        (ok({"success": False, "error": "no_such_ask", "new_contract": 59}, status=410), 59),
        (ok({"success": False, "error": "invalid_args", "msg": "bad image"}, status=400), None),
        (ok({"success": "yes", "new_contract": 60}), 60),
    ],
)
async def test_failed_create_carries_new_contract(
    vast: MakeClient, answer: httpx.Response, contract: int | None
) -> None:
    client, _ = vast(answer)
    with pytest.raises(VastCreateFailed) as caught:
        await client.create_instance(1, create_request())
    assert caught.value.new_contract == contract
    assert not is_retryable(caught.value)


@pytest.mark.parametrize(
    "answer",
    [
        ok(
            {
                "success": False,
                "error": "invalid_args",
                "msg": "error 404/3603: no_such_ask Instance type by id 1234567 is not available.",
                "ask_id": 1234567,
            },
            status=404,
        ),
        ok({"success": False, "error": "no_such_ask", "msg": "Offer is no longer available."}, 410),
        ok({"success": False, "error": "x", "message": "Offer already rented"}, 400),
        ok({"success": False, "msg": "offer no longer rentable"}),
        text("Gone", status=410),
    ],
)
async def test_vanished_offer(vast: MakeClient, answer: httpx.Response) -> None:
    client, _ = vast(answer)
    with pytest.raises(VastOfferUnavailable):
        await client.create_instance(1234567, create_request())


async def test_create_5xx_is_a_server_error(vast: MakeClient) -> None:
    client, _ = vast(text("Bad Gateway", status=502))
    with pytest.raises(VastServerError) as caught:
        await client.create_instance(1, create_request())
    assert is_retryable(caught.value) and caught.value.status == 502


async def test_create_error_never_echoes_env_tokens(vast: MakeClient) -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        return ok({"error": "invalid_args", "msg": f"bad env {request.content.decode()}"}, 400)

    client, _ = vast(echo)
    with pytest.raises(VastCreateFailed) as caught:
        await client.create_instance(1, create_request())
    assert "portal-secret-123456" not in str(caught.value)
    assert "-p 8188:8188" in str(caught.value)


def test_create_request_repr_hides_env_and_onstart() -> None:
    request = create_request(onstart="export HF_TOKEN=hf_abcdefgh")
    assert "portal-secret" not in repr(request) and "hf_abcdefgh" not in repr(request)


def test_port_env() -> None:
    assert port_env([8188, 70000]) == {"-p 8188:8188": "1", "-p 70000:70000": "1"}
    with pytest.raises(ValueError):
        port_env([0])
    with pytest.raises(ValueError):
        port_env(range(1000, 1065))


# --- show ------------------------------------------------------------------------------------


async def test_show_reads_the_plural_key(vast: MakeClient) -> None:
    row = instance_row(12345678, ssh_host="ssh2281.vast.ai", ssh_port=12345, new_field=1)
    client, seen = vast(ok({"instances": row}))
    instance = await client.show_instance(12345678)
    assert instance is not None and instance.id == 12345678
    assert instance.public_ipaddr == "1.2.3.4"
    assert instance.ports["8188/tcp"][0].host_port == 41234
    assert seen[0].url.path == "/api/v0/instances/12345678/"
    assert query(seen[0]) == {"owner": "me"}


@pytest.mark.parametrize(
    "answer",
    [
        ok({"instances": None}),
        ok({"success": False, "error": "no_such_instance", "msg": "x"}, status=404),
        text("Not Found", status=404),
    ],
)
async def test_show_of_a_gone_instance_is_none(vast: MakeClient, answer: httpx.Response) -> None:
    client, _ = vast(answer)
    assert await client.show_instance(5) is None


async def test_show_fills_a_missing_id(vast: MakeClient) -> None:
    client, _ = vast(ok({"instances": {"actual_status": None}}))
    instance = await client.show_instance(5)
    assert instance is not None and instance.id == 5 and instance.actual_status is None


@pytest.mark.parametrize(
    "answer",
    [
        ok({}),
        ok({"instances": [instance_row(5)]}),
        ok({"instances": instance_row(6)}),  # someone else's instance
        ok({"instances": instance_row(5, ssh_port="not-a-port")}),
        text("<html>maintenance</html>"),
    ],
)
async def test_show_malformed(vast: MakeClient, answer: httpx.Response) -> None:
    client, _ = vast(answer)
    with pytest.raises(VastMalformedResponse):
        await client.show_instance(5)


async def test_show_200_success_false_is_rejected(vast: MakeClient) -> None:
    client, _ = vast(ok({"success": False, "error": "weird", "message": "try later"}))
    with pytest.raises(VastRequestRejected) as caught:
        await client.show_instance(5)
    assert caught.value.msg == "try later" and caught.value.status == 200


# --- list ------------------------------------------------------------------------------------


async def test_list_follows_next_token_over_three_pages(vast: MakeClient) -> None:
    pages = [
        ok({"success": True, "instances": [instance_row(1), instance_row(2)], "next_token": "t1"}),
        ok({"success": True, "instances": [instance_row(3)], "next_token": "t2"}),
        ok({"success": True, "instances": [instance_row(4)], "next_token": None}),
    ]
    client, seen = vast(*pages)
    found = await client.list_instances(label="wp.a.0.1", page_size=2)
    assert [i.id for i in found] == [1, 2, 3, 4]
    assert [r.url.path for r in seen] == ["/api/v1/instances/"] * 3
    first, second, third = (query(r) for r in seen)
    assert json.loads(first["limit"]) == 2
    assert json.loads(first["order_by"]) == [{"col": "id", "dir": "asc"}]
    assert json.loads(first["select_filters"]) == {"label": {"eq": "wp.a.0.1"}}
    assert "after_token" not in first
    assert second["after_token"] == "t1" and third["after_token"] == "t2"


async def test_list_without_label_has_no_filter(vast: MakeClient) -> None:
    client, seen = vast(ok({"instances": [], "next_token": None}))
    assert await client.list_instances() == []
    assert "select_filters" not in query(seen[0])


async def test_list_rechecks_the_label(vast: MakeClient) -> None:
    rows = [instance_row(1), instance_row(2, label="other"), instance_row(3, label=None)]
    client, _ = vast(ok({"instances": rows, "next_token": None}))
    assert [i.id for i in await client.list_instances(label="wp.a.0.1")] == [1]


@pytest.mark.parametrize(
    "answer",
    [
        ok({"instances_found": 0}),  # missing key
        ok({"instances": {"1": instance_row(1)}}),  # not a list
        ok({"instances": None}),
        ok([instance_row(1)]),  # not an object
        text("<html>502</html>"),  # not JSON
        ok({"instances": ["1"]}),  # a bad entry
        ok({"instances": [{"label": "no id"}]}),
        ok({"instances": [instance_row(1)], "next_token": {"a": 1}}),
    ],
)
async def test_list_malformed_is_never_zero_instances(
    vast: MakeClient, answer: httpx.Response
) -> None:
    client, _ = vast(answer)
    with pytest.raises(VastMalformedResponse) as caught:
        await client.list_instances()
    assert is_retryable(caught.value)


async def test_list_with_a_repeating_cursor_is_malformed(vast: MakeClient) -> None:
    client, seen = vast(ok({"instances": [instance_row(1)], "next_token": "same"}))
    with pytest.raises(VastMalformedResponse, match="repeats"):
        await client.list_instances()
    assert len(seen) == 2


async def test_list_bad_cursor_is_rejected(vast: MakeClient) -> None:
    client, _ = vast(ok({"success": False, "error": "invalid_token", "msg": "bad"}, status=400))
    with pytest.raises(VastRequestRejected, match="invalid_token"):
        await client.list_instances()


async def test_list_page_size_is_bounded(vast: MakeClient) -> None:
    client, seen = vast(ok({"instances": [], "next_token": None}))
    with pytest.raises(ValueError):
        await client.list_instances(page_size=26)
    assert seen == []


# --- destroy ---------------------------------------------------------------------------------


async def test_destroy_sends_an_empty_object(vast: MakeClient) -> None:
    client, seen = vast(ok({"success": True}))
    assert await client.destroy_instance(77) is True
    assert seen[0].method == "DELETE" and seen[0].url.path == "/api/v0/instances/77/"
    assert json.loads(seen[0].content) == {}


@pytest.mark.parametrize(
    "answer",
    [
        ok({"success": False, "error": "no_such_instance", "msg": "Instance 77 not found."}, 404),
        ok({"error": "not_found", "msg": "Instance not found"}, status=404),
        ok({"success": False, "error": "no_such_instance", "msg": "Instance 77 not found."}),
    ],
)
async def test_destroy_of_a_gone_instance_is_false(
    vast: MakeClient, answer: httpx.Response
) -> None:
    client, _ = vast(answer)
    assert await client.destroy_instance(77) is False


async def test_destroy_404_without_a_gone_code_is_not_found(vast: MakeClient) -> None:
    client, _ = vast(text("Not Found", status=404))
    with pytest.raises(VastNotFound):
        await client.destroy_instance(77)


async def test_destroy_rate_limited(vast: MakeClient) -> None:
    body = {"success": False, "error": "rate_limit_exceeded", "msg": "slow down"}
    client, _ = vast(ok(body, status=429))
    with pytest.raises(VastRateLimited) as caught:
        await client.destroy_instance(77)
    assert caught.value.retry_after is None and is_retryable(caught.value)


# --- stop / start ----------------------------------------------------------------------------


@pytest.mark.parametrize(("call", "state"), [("stop", "stopped"), ("start", "running")])
async def test_stop_and_start_put_the_state(vast: MakeClient, call: str, state: str) -> None:
    client, seen = vast(ok({"success": True}), ok({"success": True, "msg": "ok"}))
    method = client.stop_instance if call == "stop" else client.start_instance
    await method(77)
    await method(77)  # a repeated call is just another accepted call
    assert [(r.method, r.url.path) for r in seen] == [("PUT", "/api/v0/instances/77/")] * 2
    assert json.loads(seen[0].content) == {"state": state}
    assert seen[0].headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    "answer",
    [
        ok({"success": False, "error": "no_such_instance", "msg": "Instance 77 not found."}, 404),
        ok({"success": False, "error": "not_found", "msg": "Instance not found"}, status=404),
        ok({"success": False, "error": "no_such_instance", "msg": "Instance 77 not found."}),
        text("Not Found", status=404),
    ],
)
async def test_stop_of_a_gone_instance_is_not_found(
    vast: MakeClient, answer: httpx.Response
) -> None:
    client, _ = vast(answer)
    with pytest.raises(VastNotFound) as caught:
        await client.stop_instance(77)
    assert not is_retryable(caught.value)
    with pytest.raises(VastNotFound):
        await client.start_instance(77)


@pytest.mark.parametrize(
    ("answer", "error_type"),
    [
        (
            ok({"success": False, "error": "missing_billing", "msg": "add a card"}, 400),
            VastRequestRejected,
        ),
        (ok({"success": False, "error": "server_busy", "msg": "try later"}), VastRequestRejected),
        (ok({"detail": "API requests too frequent endpoint threshold=1.0"}, 429), VastRateLimited),
        (ok({"success": False, "error": "no_such_instance", "msg": "x"}, 502), VastServerError),
        (text("<html>oops</html>"), VastMalformedResponse),
        (
            ok({"success": False, "error": "auth_error", "msg": "Invalid user key"}, 401),
            VastAuthError,
        ),
    ],
)
async def test_stop_and_start_failures(
    vast: MakeClient, answer: httpx.Response, error_type: type[VastError]
) -> None:
    client, _ = vast(answer)
    for method in (client.stop_instance, client.start_instance):
        with pytest.raises(error_type) as caught:
            await method(77)
        assert type(caught.value) is error_type
        assert caught.value.endpoint == "PUT /api/v0/instances/77/"


async def test_state_calls_are_paced_and_back_off_after_a_429(vast: MakeClient) -> None:
    arrivals: list[float] = []
    answers = [too_frequent(), ok({"success": True})]

    def clock(request: httpx.Request) -> httpx.Response:
        arrivals.append(time.monotonic())
        return answers.pop(0) if len(answers) > 1 else answers[0]

    jitter = Jitter()
    client, _ = vast(clock, min_intervals={"state": 0.05}, jitter=jitter)
    with pytest.raises(VastRateLimited):
        await client.stop_instance(1)
    await client.start_instance(2)
    await client.stop_instance(3)
    assert jitter.asked == [(0.05, 0.1)]  # the 429's backoff, shared by stop and start
    assert arrivals[1] - arrivals[0] >= 0.095 and arrivals[2] - arrivals[1] >= 0.045


def test_a_stopped_instance_bills_its_disk_only() -> None:
    running = Instance.model_validate(
        instance_row(1, dph_total=0.5, disk_space=250, storage_cost=0.144)
    )
    assert not is_stopped(running) and billing_per_hour(running) == 0.5
    assert storage_per_hour(running) == pytest.approx(0.05)  # 250 GB x $0.144 / 720 h
    parked = running.model_copy(update={"actual_status": "stopped"})
    assert is_stopped(parked) and billing_per_hour(parked) == pytest.approx(0.05)
    shown = parked.model_copy(update={"storage_total_cost": 0.07})
    assert billing_per_hour(shown) == 0.07  # the provider's own figure first
    unknown = Instance.model_validate(instance_row(2, actual_status="stopped", dph_total=0.5))
    assert billing_per_hour(unknown) is None  # never the GPU's rate for a stopped instance
    created_stopped = Instance.model_validate({"id": 3, "cur_state": "stopped"})
    resuming = Instance.model_validate(
        {"id": 4, "actual_status": "stopped", "intended_status": "running"}
    )
    assert is_stopped(created_stopped) and is_stopped(resuming)
    view = to_view(resuming)
    assert (view.actual_status, view.intended_status) == ("stopped", "running")


# --- status mapping --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "retry_after"),
    [
        (text("API requests too frequent: endpoint threshold=2.0", status=429), None),
        (ok({"detail": "API requests too frequent endpoint threshold=4.5"}, status=429), None),
        (text("slow", status=429, headers={"Retry-After": "7"}), 7.0),
    ],
)
async def test_rate_limited(
    vast: MakeClient, answer: httpx.Response, retry_after: float | None
) -> None:
    client, _ = vast(answer)
    with pytest.raises(VastRateLimited, match="too frequent|slow") as caught:
        await client.show_instance(5)
    assert caught.value.status == 429
    assert caught.value.retry_after == retry_after


async def test_rate_limited_with_an_http_date(vast: MakeClient) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    client, _ = vast(text("", status=429, headers={"Retry-After": when}))
    with pytest.raises(VastRateLimited) as caught:
        await client.show_instance(5)
    assert caught.value.retry_after is not None and 25 < caught.value.retry_after <= 30


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("nan") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_is_a_retryable_server_error(vast: MakeClient, status: int) -> None:
    client, _ = vast(text("upstream", status=status))
    with pytest.raises(VastServerError) as caught:
        await client.list_instances()
    assert caught.value.status == status and is_retryable(caught.value)


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("timed out"),
        httpx.ConnectTimeout(""),
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.RemoteProtocolError("peer closed connection"),
    ],
)
async def test_transport_failures(vast: MakeClient, failure: Exception) -> None:
    client, _ = vast(failure)
    with pytest.raises(VastTransportError, match=type(failure).__name__) as caught:
        await client.destroy_instance(1)
    assert caught.value.status is None and is_retryable(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None


async def test_other_4xx_is_rejected(vast: MakeClient) -> None:
    client, _ = vast(ok({"success": False, "error": "missing_billing", "msg": "add a card"}, 400))
    with pytest.raises(VastRequestRejected) as caught:
        await client.destroy_instance(1)
    assert type(caught.value) is VastRequestRejected
    assert (caught.value.code, caught.value.msg) == ("missing_billing", "add a card")
    assert str(caught.value) == "DELETE /api/v0/instances/1/ HTTP 400 missing_billing: add a card"


async def test_404_elsewhere_is_not_found(vast: MakeClient) -> None:
    client, _ = vast(text("Not Found", status=404))
    with pytest.raises(VastNotFound):
        await client.current_user()


async def test_long_messages_are_one_short_line(vast: MakeClient) -> None:
    client, _ = vast(text("line one\nline two " + "x" * 2000, status=500))
    with pytest.raises(VastServerError) as caught:
        await client.list_instances()
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400 and "line one line two" in message


# --- secrets ---------------------------------------------------------------------------------


def _echo(status: int, *, as_json: bool = True, **fields: Any) -> Answer:
    """A server that echoes the credential it received in its error body."""

    def answer(request: httpx.Request) -> httpx.Response:
        key = request.headers["Authorization"].removeprefix("Bearer ")
        words = f"got {key} via {request.headers['Authorization']} api_key={key}"
        if not as_json:
            return text(words, status=status)
        return ok({"success": False, "msg": words, **fields}, status=status)

    return answer


@pytest.mark.parametrize(
    ("answer", "call", "error_type"),
    [
        (_echo(401), "show", VastAuthError),
        (_echo(403, as_json=False), "show", VastAuthError),
        (_echo(429, as_json=False), "show", VastRateLimited),
        (_echo(500), "list", VastServerError),
        (_echo(400, error=KEY), "list", VastRequestRejected),
        (_echo(200), "list", VastRequestRejected),
        (_echo(404, error="no_such_ask"), "create", VastOfferUnavailable),
        (_echo(400, new_contract=9), "create", VastCreateFailed),
        (_echo(404, as_json=False), "destroy", VastNotFound),
        (_echo(200, as_json=False), "list", VastMalformedResponse),
        (httpx.ConnectError(f"Illegal header value b'Bearer {KEY}'"), "list", VastTransportError),
    ],
)
async def test_the_key_never_appears_in_an_error(
    vast: MakeClient, answer: Answer, call: str, error_type: type[VastError]
) -> None:
    client, _ = vast(answer)
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "show": lambda: client.show_instance(1),
        "list": lambda: client.list_instances(),
        "create": lambda: client.create_instance(1, create_request()),
        "destroy": lambda: client.destroy_instance(1),
    }
    with capture_logs() as logs, pytest.raises(error_type) as caught:
        await calls[call]()
    error = caught.value
    assert type(error) is error_type
    for rendered in (str(error), repr(error), error.msg or "", error.code or "", str(logs)):
        assert KEY not in rendered
    assert "[REDACTED]" in str(error)


@pytest.fixture
def debug_logs() -> Iterator[None]:
    """Debug events on (the test session filters them out), restored afterwards."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    yield
    structlog.configure(**saved)


@pytest.mark.usefixtures("debug_logs")
async def test_logs_name_endpoint_status_and_duration_only(vast: MakeClient) -> None:
    client, _ = vast(ok({"instances": instance_row(5, extra_env=[["HF_TOKEN", "hf_secret"]])}))
    with capture_logs() as logs:
        await client.show_instance(5)
    assert logs == [
        {
            "event": "vast.call",
            "log_level": "debug",
            "endpoint": "GET /api/v0/instances/5/",
            "status": 200,
            "duration_ms": logs[0]["duration_ms"],
        }
    ]
    assert isinstance(logs[0]["duration_ms"], float)


def test_client_repr_has_no_key() -> None:
    assert KEY not in repr(VastClient(BASE, lambda: KEY))


# --- models ----------------------------------------------------------------------------------


def test_to_view_flattens_ports_and_strips_the_ip() -> None:
    row = instance_row(
        5,
        ports={
            "8188/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41234"}],
            "22/tcp": [{"HostIp": "::", "HostPort": ""}, {"HostIp": "0.0.0.0", "HostPort": 40022}],
            "18188/tcp": None,
        },
        direct_port_start=-1,
        image_uuid="vastai/comfyui:latest",
        local_ipaddrs="10.2.202.31 172.17.0.1 \n",
    )
    instance = Instance.model_validate(row)
    view = to_view(instance)
    assert view.ports == {"8188/tcp": 41234, "22/tcp": 40022}
    assert view.public_ip == "1.2.3.4"
    assert view.direct_port_start == -1 and view.image == "vastai/comfyui:latest"
    assert instance.local_ipaddrs == "10.2.202.31 172.17.0.1"


@pytest.mark.parametrize("ports", [[8188, 22], None, "8188/tcp"])
def test_odd_ports_shapes_yield_no_mapping(ports: Any) -> None:
    assert to_view(Instance.model_validate(instance_row(5, ports=ports))).ports == {}


def test_every_instance_field_may_be_null() -> None:
    instance = Instance.model_validate({"id": 1, "public_ipaddr": None, "extra_env": None})
    view = to_view(instance)
    assert view.public_ip is None and view.ports == {} and view.actual_status is None


def test_extra_env_shapes_and_repr() -> None:
    pairs = Instance.model_validate({"extra_env": [["-p 8188:8188", "1"], ["HF_TOKEN", "hf_z"]]})
    assert pairs.extra_env == [("-p 8188:8188", "1"), ("HF_TOKEN", "hf_z")]
    assert "hf_z" not in repr(pairs)
    as_dict = Instance.model_validate({"extra_env": {"A": "1"}})
    assert as_dict.extra_env == [("A", "1")]
    assert Instance.model_validate({"extra_env": "-e A=1"}).extra_env == []
    assert Instance.model_validate({"extra_env": [["A"], "B", ["C", None]]}).extra_env == [
        ("C", "")
    ]


def test_view_of_an_instance_without_id_is_refused() -> None:
    with pytest.raises(ValueError):
        to_view(Instance())


# --- pacing and construction -----------------------------------------------------------------


async def test_min_intervals_space_calls_of_one_endpoint(vast: MakeClient) -> None:
    arrivals: dict[str, list[float]] = {"show": [], "list": []}

    def clock(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/api/v1"):
            arrivals["list"].append(time.monotonic())
            return ok({"instances": [], "next_token": None})
        arrivals["show"].append(time.monotonic())
        return ok({"instances": None})

    client, _ = vast(clock, min_intervals={"show": 0.15, "list": 0.0})
    await asyncio.gather(*(client.show_instance(i) for i in range(3)))
    await client.list_instances()
    await client.list_instances()
    show = arrivals["show"]
    assert all(later - earlier >= 0.14 for earlier, later in zip(show, show[1:], strict=False))
    assert arrivals["list"][1] - arrivals["list"][0] < 0.1  # other endpoints are not held up


class Jitter:
    """A pinned backoff jitter: always the upper bound, and every (lo, hi) it was asked for."""

    def __init__(self) -> None:
        self.asked: list[tuple[float, float]] = []

    def __call__(self, lo: float, hi: float) -> float:
        self.asked.append((lo, hi))
        return hi


def too_frequent(status: int = 429) -> httpx.Response:
    return ok({"detail": "API requests too frequent endpoint threshold=2.0"}, status=status)


async def test_a_429_holds_back_every_caller_of_that_endpoint(vast: MakeClient) -> None:
    arrivals: list[float] = []
    answers = [too_frequent(), ok({"instances": None})]

    def clock(request: httpx.Request) -> httpx.Response:
        arrivals.append(time.monotonic())
        return answers.pop(0) if len(answers) > 1 else answers[0]

    jitter = Jitter()
    client, _ = vast(clock, min_intervals={"show": 0.05}, jitter=jitter)
    results = await asyncio.gather(
        *(client.show_instance(i) for i in range(3)), return_exceptions=True
    )
    assert isinstance(results[0], VastRateLimited) and results[1:] == [None, None]
    assert jitter.asked == [(0.05, 0.1)]  # 2 intervals after the first 429, jittered down to 1
    assert arrivals[1] - arrivals[0] >= 0.095  # the callers already queued waited the backoff
    assert arrivals[2] - arrivals[1] >= 0.045  # then the plain interval again


async def test_429_backoff_grows_with_consecutive_429s_and_resets_on_success(
    vast: MakeClient,
) -> None:
    jitter = Jitter()
    client, _ = vast(
        too_frequent(),
        text("API requests too frequent", status=429),
        ok({"instances": None}),
        too_frequent(),
        ok({"instances": None}),
        min_intervals={"show": 0.01},
        jitter=jitter,
    )
    for _ in range(5):
        with contextlib.suppress(VastRateLimited):
            await client.show_instance(1)
    assert [hi for _, hi in jitter.asked] == pytest.approx([0.02, 0.04, 0.02])


async def test_429_backoff_is_capped(vast: MakeClient) -> None:
    jitter = Jitter()
    client, _ = vast(too_frequent(), min_intervals={"list": 0.001}, jitter=jitter)
    for _ in range(8):
        with pytest.raises(VastRateLimited):
            await client.list_instances()
    ceilings = [hi for _, hi in jitter.asked]
    assert ceilings[-1] == pytest.approx(0.016)  # 16 intervals at most
    assert ceilings == sorted(ceilings)


async def test_destroys_rate_limit_body_backs_off_too(vast: MakeClient) -> None:
    jitter = Jitter()
    body = {"success": False, "error": "rate_limit_exceeded", "msg": "API requests too frequent"}
    client, _ = vast(ok(body, status=429), min_intervals={"destroy": 0.01}, jitter=jitter)
    with pytest.raises(VastRateLimited):
        await client.destroy_instance(7)
    assert len(jitter.asked) == 1


async def test_retry_after_sets_the_backoff_when_sent(vast: MakeClient) -> None:
    arrivals: list[float] = []
    answers = [text("slow down", status=429, headers={"Retry-After": "0.15"}), ok({"id": 1})]

    def clock(request: httpx.Request) -> httpx.Response:
        arrivals.append(time.monotonic())
        return answers.pop(0)

    jitter = Jitter()
    client, _ = vast(clock, min_intervals={"user": 0.01}, jitter=jitter)
    with pytest.raises(VastRateLimited):
        await client.current_user()
    await client.current_user()
    assert jitter.asked == []
    assert arrivals[1] - arrivals[0] >= 0.14


async def test_unpaced_endpoints_do_not_back_off(vast: MakeClient) -> None:
    jitter = Jitter()
    client, _ = vast(too_frequent(), ok({"instances": None}), jitter=jitter)
    with pytest.raises(VastRateLimited):
        await client.show_instance(1)
    started = time.monotonic()
    await client.show_instance(1)
    assert jitter.asked == [] and time.monotonic() - started < 0.1


def test_scaled_min_intervals() -> None:
    assert scaled_min_intervals(1.0) == dict(VAST_DEFAULT_MIN_INTERVALS)
    assert scaled_min_intervals(0.5)["bundles"] == pytest.approx(3.25)
    assert set(scaled_min_intervals(0).values()) == {0.0}
    with pytest.raises(ValueError):
        scaled_min_intervals(-1)


def test_construction() -> None:
    with pytest.raises(ValueError, match="api/v0"):
        VastClient("https://vast.test/api/v1", lambda: KEY)
    with pytest.raises(ValueError, match="unknown endpoint"):
        VastClient(BASE, lambda: KEY, min_intervals={"shows": 1.0})
    VastClient(BASE + "/", lambda: KEY, min_intervals=VAST_DEFAULT_MIN_INTERVALS)
    assert set(VAST_DEFAULT_MIN_INTERVALS) == {
        "bundles",
        "create",
        "show",
        "list",
        "destroy",
        "state",
        "user",
    }


async def test_async_context_manager_closes(vast: MakeClient) -> None:
    client, _ = vast(ok({"id": 1}))
    async with client as entered:
        assert entered is client
        await client.current_user()
    with pytest.raises(RuntimeError):
        await client.current_user()


# --- the error tree --------------------------------------------------------------------------


def test_error_tree_and_retryability() -> None:
    retryable = [VastRateLimited, VastServerError, VastTransportError, VastMalformedResponse]
    final = [
        VastAuthError,
        VastRequestRejected,
        VastOfferUnavailable,
        VastCreateFailed,
        VastNotFound,
    ]
    for error_type in retryable + final:
        error = error_type("m", endpoint="GET /x/")
        assert isinstance(error, VastError) and isinstance(error, WarmpoolError)
        assert is_retryable(error) is (error_type in retryable)
    assert issubclass(VastOfferUnavailable, VastRequestRejected)
    assert issubclass(VastCreateFailed, VastRequestRejected)
    assert not is_retryable(ValueError("x"))
