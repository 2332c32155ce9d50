"""ComfyClient against httpx.MockTransport answering with the shapes of comfyui-api.md."""

from __future__ import annotations

import gzip
import json
import ssl
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.warmpool.fake_portal import SYSTEM_STATS
from warmpool.comfy import (
    ComfyBadResponse,
    ComfyClient,
    ComfyError,
    ComfyNotReady,
    ComfyPromptFailed,
    ComfyPromptTimeout,
    ComfyUnauthorized,
    ComfyUnreachable,
    tls_context,
)

TOKEN = "0123456789abcdef0123456789abcdef"
BASE = "http://203.0.113.7:40001"
GRAPH: dict[str, Any] = {
    "1": {"class_type": "PrimitiveString", "inputs": {"value": "hello warm pool"}},
    "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
}

Route = Callable[[httpx.Request], httpx.Response]


class FakeComfy:
    """Routes `METHOD /path` to a response and records every request it saw."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        route = self.routes.get(f"{request.method} {request.url.path}")
        return route(request) if route else httpx.Response(404)

    def calls(self) -> list[tuple[str, Any]]:
        return [(f"{r.method} {r.url.path}", json.loads(r.content or b"null")) for r in self.seen]


def client_for(fake: FakeComfy, token: str | None = TOKEN) -> ComfyClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    return ComfyClient(BASE, token, client=http, timeout=1.0)


def answer(status: int, data: Any = None, **kwargs: Any) -> Route:
    return lambda _: httpx.Response(status, json=data, **kwargs)


def empty(status: int = 200) -> Route:
    return lambda _: httpx.Response(status)


def assert_no_token(exc: BaseException) -> None:
    assert TOKEN not in str(exc) and TOKEN not in repr(exc)


def history_entry(prompt_id: str, status_str: str, messages: list[Any]) -> dict[str, Any]:
    return {
        prompt_id: {
            "prompt": [0, prompt_id, GRAPH, {"client_id": "c"}, ["2"]],
            "outputs": {"2": {"text": ["hello warm pool"]}} if status_str == "success" else {},
            "status": {
                "status_str": status_str,
                "completed": status_str == "success",
                "messages": messages,
            },
            "meta": {},
        }
    }


# --- system_stats and ping ------------------------------------------------------------------


async def test_system_stats_sends_bearer_and_returns_json() -> None:
    fake = FakeComfy({"GET /system_stats": answer(200, SYSTEM_STATS)})
    assert (await client_for(fake).system_stats())["system"]["comfyui_version"] == "0.3.64"
    assert fake.seen[0].headers["authorization"] == f"Bearer {TOKEN}"


async def test_bare_comfy_gets_no_authorization_header() -> None:
    fake = FakeComfy({"GET /system_stats": answer(200, SYSTEM_STATS)})
    await client_for(fake, token=None).system_stats()
    assert "authorization" not in fake.seen[0].headers


async def test_clients_sharing_one_pool_send_their_own_token_and_leave_it_open() -> None:
    fake = FakeComfy({"GET /system_stats": answer(200, SYSTEM_STATS)})
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    other = "fedcba9876543210fedcba9876543210"
    async with ComfyClient(BASE, TOKEN, client=http) as one, ComfyClient(BASE, other, client=http):
        await one.system_stats()
    async with ComfyClient(BASE, other, client=http) as two:
        await two.system_stats()
    assert [r.headers["authorization"] for r in fake.seen] == [f"Bearer {TOKEN}", f"Bearer {other}"]
    assert not http.is_closed, "a ComfyClient closes only a client it made itself"
    await http.aclose()


async def test_clients_made_from_the_worker_tls_context_do_not_load_the_ca_bundle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tls = tls_context()
    loads: list[object] = []
    load = ssl.SSLContext.load_verify_locations

    def counted(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(args or kwargs)
        load(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    clients = [ComfyClient(BASE, TOKEN, tls=tls) for _ in range(3)]
    assert loads == [], "one CA bundle per worker, not per slot"
    clients.append(ComfyClient(BASE, TOKEN))
    assert len(loads) == 1, "a client without the context loads the bundle itself"
    for client in clients:
        await client.aclose()


def refuse(_: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused")


def too_slow(_: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out")


PLACEHOLDER = {"X-Portal-Placeholder": "true"}


@pytest.mark.parametrize(
    ("route", "error"),
    [
        (answer(401, headers={"WWW-Authenticate": "Basic"}), ComfyUnauthorized),
        (answer(403), ComfyUnauthorized),
        (lambda _: httpx.Response(502, text="<html/>", headers=PLACEHOLDER), ComfyNotReady),
        (lambda _: httpx.Response(200, text="<html/>", headers=PLACEHOLDER), ComfyNotReady),
        (empty(504), ComfyNotReady),
        (lambda _: httpx.Response(200, text="<html>ComfyUI</html>"), ComfyBadResponse),
        (answer(200, {"devices": []}), ComfyBadResponse),
        (empty(404), ComfyBadResponse),
        (refuse, ComfyUnreachable),
        (too_slow, ComfyUnreachable),
    ],
    ids=[
        "401",
        "403",
        "placeholder-502",
        "placeholder-200",
        "504",
        "html",
        "no-system",
        "404",
        "refused",
        "timeout",
    ],
)
async def test_system_stats_failures_and_ping(route: Route, error: type[ComfyError]) -> None:
    client = client_for(FakeComfy({"GET /system_stats": route}))
    with pytest.raises(error) as caught:
        await client.system_stats()
    assert_no_token(caught.value)
    assert await client.ping(timeout=0.5) is False


async def test_ping_true_on_comfy_json() -> None:
    client = client_for(FakeComfy({"GET /system_stats": answer(200, SYSTEM_STATS)}))
    assert await client.ping(timeout=0.5) is True


async def test_ping_fails_when_comfy_dies_behind_the_portal() -> None:
    """The portal keeps accepting TCP and our token after ComfyUI died: its 502 placeholder (or
    the tunnel's 200 placeholder) is a missed beat, not a live ComfyUI."""
    replies = [
        httpx.Response(200, json=SYSTEM_STATS),
        httpx.Response(502, text="<html>Loading...</html>", headers=PLACEHOLDER),
        httpx.Response(200, text="<html>Loading...</html>", headers=PLACEHOLDER),
        httpx.Response(502, text="Bad Gateway"),
    ]
    fake = FakeComfy({"GET /system_stats": lambda _: replies.pop(0)})
    client = client_for(fake)
    beats = [await client.ping(timeout=0.5) for _ in range(4)]
    assert beats == [True, False, False, False]
    assert {r.headers["authorization"] for r in fake.seen} == {f"Bearer {TOKEN}"}


def test_repr_hides_the_token() -> None:
    client = client_for(FakeComfy({}))
    assert TOKEN not in repr(client) and BASE in repr(client)


# --- queue_prompt and history ---------------------------------------------------------------


async def test_queue_prompt_posts_graph_client_id_and_prompt_id() -> None:
    fake = FakeComfy(
        {"POST /prompt": answer(200, {"prompt_id": "p-1", "number": 0, "node_errors": {}})}
    )
    assert await client_for(fake).queue_prompt(GRAPH, client_id="c-1", prompt_id="p-1") == "p-1"
    assert fake.calls() == [
        ("POST /prompt", {"prompt": GRAPH, "client_id": "c-1", "prompt_id": "p-1"})
    ]


async def test_queue_prompt_400_surfaces_type_message_and_node_errors() -> None:
    rejection = {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "",
            "extra_info": {},
        },
        "node_errors": {
            "2": {
                "errors": [
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": "image",
                        "extra_info": {"input_name": "image"},
                    }
                ],
                "dependent_outputs": ["3"],
                "class_type": "ImageInvert",
            }
        },
    }
    client = client_for(FakeComfy({"POST /prompt": answer(400, rejection)}))
    with pytest.raises(ComfyPromptFailed) as caught:
        await client.queue_prompt(GRAPH, client_id="c")
    failure = caught.value
    assert failure.error_type == "prompt_outputs_failed_validation"
    assert failure.exception_message == "Prompt outputs failed validation"
    assert failure.status == 400
    assert "Prompt outputs failed validation" in str(failure)
    assert "node 2 (ImageInvert): required_input_missing" in str(failure)
    assert "[image]" in str(failure)


async def test_queue_prompt_500_text_is_a_bad_response() -> None:
    def trouble(_: httpx.Request) -> httpx.Response:
        body = "500 Internal Server Error\n\nServer got itself in trouble"
        return httpx.Response(500, text=body, headers={"Content-Type": "text/plain"})

    client = client_for(FakeComfy({"POST /prompt": trouble}))
    with pytest.raises(ComfyBadResponse) as caught:
        await client.queue_prompt(GRAPH, client_id="c")
    assert caught.value.status == 500
    assert "text/plain" in str(caught.value) and "500" in str(caught.value)


async def test_history_is_none_until_finished() -> None:
    entries = iter([{}, history_entry("p-1", "success", [])])
    fake = FakeComfy({"GET /history/p-1": lambda _: httpx.Response(200, json=next(entries))})
    client = client_for(fake)
    assert await client.history("p-1") is None
    entry = await client.history("p-1")
    assert entry is not None and entry["status"]["status_str"] == "success"


# --- run_prompt -----------------------------------------------------------------------------


class PromptServer:
    """Accepts one prompt, reports `{}` for `pending_polls` polls, then the given final entry."""

    def __init__(self, status_str: str | None, messages: list[Any], pending_polls: int = 2) -> None:
        self.status_str = status_str
        self.messages = messages
        self.pending_polls = pending_polls
        self.prompt_id = ""
        self.polls = 0
        self.fake = FakeComfy(
            {"POST /prompt": self.queue, "POST /queue": empty(), "POST /interrupt": empty()}
        )

    def queue(self, request: httpx.Request) -> httpx.Response:
        self.prompt_id = json.loads(request.content)["prompt_id"]
        self.fake.routes[f"GET /history/{self.prompt_id}"] = self.history
        return httpx.Response(
            200, json={"prompt_id": self.prompt_id, "number": 3, "node_errors": {}}
        )

    def history(self, _: httpx.Request) -> httpx.Response:
        self.polls += 1
        if self.status_str is None or self.polls <= self.pending_polls:
            return httpx.Response(200, json={})
        return httpx.Response(
            200, json=history_entry(self.prompt_id, self.status_str, self.messages)
        )


async def test_run_prompt_success_returns_seconds_after_polling() -> None:
    server = PromptServer("success", [["execution_success", {"prompt_id": "x"}]])
    seconds = await client_for(server.fake).run_prompt(GRAPH, timeout=2.0, poll_interval=0.05)
    assert server.polls == 3
    assert 0.1 <= seconds < 2.0
    posted = json.loads(server.fake.seen[0].content)
    assert posted["prompt"] == GRAPH and posted["client_id"]


async def test_run_prompt_execution_error_names_node_and_message() -> None:
    error = {
        "prompt_id": "x",
        "node_id": "1",
        "node_type": "RegexReplace",
        "executed": [],
        "exception_message": "missing ), unterminated subpattern at position 0\n",
        "exception_type": "re.error",
        "traceback": ["..."],
    }
    messages = [["execution_start", {"prompt_id": "x"}], ["execution_error", error]]
    server = PromptServer("error", messages)
    with pytest.raises(ComfyPromptFailed) as caught:
        await client_for(server.fake).run_prompt(GRAPH, timeout=2.0, poll_interval=0.01)
    failure = caught.value
    assert (failure.node_type, failure.error_type) == ("RegexReplace", "execution_error")
    assert failure.exception_message == "missing ), unterminated subpattern at position 0"
    assert failure.prompt_id == server.prompt_id
    assert "RegexReplace" in str(failure) and "unterminated subpattern" in str(failure)


async def test_run_prompt_interrupted_is_a_failure() -> None:
    interrupted = {"prompt_id": "x", "node_id": "3", "node_type": "SaveImage", "executed": ["1"]}
    server = PromptServer("error", [["execution_interrupted", interrupted]])
    with pytest.raises(ComfyPromptFailed) as caught:
        await client_for(server.fake).run_prompt(GRAPH, timeout=2.0, poll_interval=0.01)
    assert (caught.value.error_type, caught.value.node_type) == (
        "execution_interrupted",
        "SaveImage",
    )


async def test_run_prompt_timeout_cancels_the_prompt() -> None:
    server = PromptServer(None, [])
    with pytest.raises(ComfyPromptTimeout) as caught:
        await client_for(server.fake).run_prompt(GRAPH, timeout=0.2, poll_interval=0.05)
    assert caught.value.prompt_id == server.prompt_id and server.polls >= 2
    assert server.fake.calls()[-2:] == [
        ("POST /queue", {"delete": [server.prompt_id]}),
        ("POST /interrupt", {"prompt_id": server.prompt_id}),
    ]


# --- clean ----------------------------------------------------------------------------------


async def test_clean_sends_the_four_calls_in_order() -> None:
    fake = FakeComfy({f"POST {p}": empty() for p in ("/queue", "/interrupt", "/free", "/history")})
    await client_for(fake).clean()
    assert fake.calls() == [
        ("POST /queue", {"clear": True}),
        ("POST /interrupt", {}),
        ("POST /free", {"unload_models": True, "free_memory": True}),
        ("POST /history", {"clear": True}),
    ]
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in fake.seen)


async def test_clean_stops_on_the_first_failure() -> None:
    fake = FakeComfy({"POST /queue": empty(), "POST /interrupt": empty(500)})
    with pytest.raises(ComfyBadResponse) as caught:
        await client_for(fake).clean()
    assert "POST /interrupt" in str(caught.value)
    assert [c for c, _ in fake.calls()] == ["POST /queue", "POST /interrupt"]


# --- the environment check: /object_info and /models/<folder> -------------------------------


def object_info(classes: int, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """An /object_info of the real size: ~1 KB per class (478 classes: ~500 KB)."""
    names = [f"Node{i:03d}" for i in range(classes)] + list(extra)
    return {
        name: {
            "input": {"required": {"image": ["IMAGE"], "value": ["INT", {"default": 0}]}},
            "input_order": {"required": ["image", "value"]},
            "output": ["IMAGE"],
            "output_is_list": [False],
            "output_name": ["IMAGE"],
            "name": name,
            "display_name": name,
            "description": "x" * 700,
            "python_module": "nodes",
            "category": "image",
            "output_node": False,
        }
        for name in names
    }


async def test_node_classes_are_the_top_level_keys_of_object_info() -> None:
    data = object_info(478, extra=("StudioLoader",))
    body = json.dumps(data).encode()
    assert 450_000 < len(body) < 600_000
    fake = FakeComfy({"GET /object_info": lambda _: httpx.Response(200, content=body)})
    classes = await client_for(fake).node_classes()
    assert classes == set(data) and "StudioLoader" in classes and "image" not in classes
    assert fake.seen[0].headers["authorization"] == f"Bearer {TOKEN}"


async def test_object_info_compressed_by_the_portal_is_read() -> None:
    body = gzip.compress(json.dumps(object_info(3)).encode())
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    fake = FakeComfy(
        {"GET /object_info": lambda _: httpx.Response(200, content=body, headers=headers)}
    )
    assert await client_for(fake).node_classes() == {"Node000", "Node001", "Node002"}


async def test_model_files_lists_a_folder_and_none_for_an_unknown_one() -> None:
    fake = FakeComfy(
        {
            "GET /models/checkpoints": answer(200, ["sdxl.safetensors", "sub/x.ckpt"]),
            "GET /models/loras": answer(200, []),
        }
    )
    client = client_for(fake)
    assert await client.model_files("checkpoints") == {"sdxl.safetensors", "sub/x.ckpt"}
    assert await client.model_files("loras") == set()
    assert await client.model_files("unet") is None  # 404: ComfyUI has no such folder
    assert {r.headers["authorization"] for r in fake.seen} == {f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("route", "error"),
    [
        (answer(401, headers={"WWW-Authenticate": "Basic"}), ComfyUnauthorized),
        (answer(403), ComfyUnauthorized),
        (lambda _: httpx.Response(502, text="<html/>", headers=PLACEHOLDER), ComfyNotReady),
        (empty(503), ComfyNotReady),
        (lambda _: httpx.Response(500, text="500 Internal Server Error"), ComfyBadResponse),
        (lambda _: httpx.Response(200, text="<html>ComfyUI</html>"), ComfyBadResponse),
        (answer(200, ["Node"]), ComfyBadResponse),  # a list is no /object_info
        (refuse, ComfyUnreachable),
        (too_slow, ComfyUnreachable),
    ],
    ids=["401", "403", "placeholder", "503", "500", "html", "list", "refused", "timeout"],
)
async def test_object_info_failures(route: Route, error: type[ComfyError]) -> None:
    client = client_for(FakeComfy({"GET /object_info": route}))
    with pytest.raises(error) as caught:
        await client.node_classes()
    assert_no_token(caught.value)


@pytest.mark.parametrize(
    ("route", "error"),
    [
        (answer(401), ComfyUnauthorized),
        (empty(502), ComfyNotReady),
        (empty(500), ComfyBadResponse),
        (answer(200, {"files": []}), ComfyBadResponse),
        (refuse, ComfyUnreachable),
    ],
    ids=["401", "502", "500", "object", "refused"],
)
async def test_model_files_failures(route: Route, error: type[ComfyError]) -> None:
    client = client_for(FakeComfy({"GET /models/vae": route}))
    with pytest.raises(error) as caught:
        await client.model_files("vae")
    assert_no_token(caught.value)


async def test_an_answer_past_the_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("warmpool.comfy.OBJECT_INFO_MAX_BYTES", 10_000)
    body = json.dumps(object_info(20)).encode()
    fake = FakeComfy({"GET /object_info": lambda _: httpx.Response(200, content=body)})
    with pytest.raises(ComfyBadResponse, match="larger than 10000 bytes"):
        await client_for(fake).node_classes()
