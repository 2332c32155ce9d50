"""What does a ComfyUI server answer? A small in-memory ComfyUI with the shapes of comfyui-api.md.

Queue, history and websocket events behave like ComfyUI 0.3.64: prompts run one at a time,
history holds finished prompts only, per-prompt events go only to the socket whose clientId
matches, and `executing` with node null always comes last. Any node class is accepted (there
are no models to validate against); a graph needs an output node, as the real one does.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from vastsim import websocket
from vastsim.environment import Provisioning
from vastsim.httpserver import JSON_TYPE, Request, Response, json_response, text_response
from vastsim.websocket import WebSocket

OUTPUT_CLASSES = frozenset(
    {
        "SaveImage",
        "PreviewImage",
        "PreviewAny",
        "SaveImageWebsocket",
        "SaveAnimatedWEBP",
        "SaveAnimatedPNG",
        "SaveVideo",
        "SaveAudio",
    }
)
_SERVER_HEADER = ("Server", "Python/3.11 aiohttp/3.14.5")
_CRASH = "500 Internal Server Error\n\nServer got itself in trouble"
_FEATURES = {"supports_preview_metadata": True, "max_upload_size": 104857600}
_OBJECT_INFO = {
    name: {
        "input": {"required": inputs},
        "output": outputs,
        "output_node": name in OUTPUT_CLASSES,
        "name": name,
        "display_name": name,
        "category": category,
    }
    for name, inputs, outputs, category in [
        (
            "EmptyImage",
            {"width": ["INT", {"default": 512}], "height": ["INT", {}]},
            ["IMAGE"],
            "image",
        ),
        ("ImageInvert", {"image": ["IMAGE"]}, ["IMAGE"], "image"),
        ("SaveImage", {"images": ["IMAGE"], "filename_prefix": ["STRING", {}]}, [], "image"),
        ("PreviewImage", {"images": ["IMAGE"]}, [], "image"),
        ("PrimitiveString", {"value": ["STRING", {}]}, ["STRING"], "utils/primitive"),
        ("PreviewAny", {"source": ["*", {}]}, [], "utils"),
        ("CheckpointLoaderSimple", {"ckpt_name": [[]]}, ["MODEL", "CLIP", "VAE"], "loaders"),
    ]
}


@dataclass(slots=True)
class _Item:
    number: int
    prompt_id: str
    graph: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]

    def as_list(self) -> list[Any]:
        return [self.number, self.prompt_id, self.graph, self.extra_data, self.outputs]


@dataclass(frozen=True, slots=True)
class GpuInfo:
    name: str
    vram_mb: int


class ComfyApp:
    """One ComfyUI process; shutting it down loses queue, history and sockets, as a crash does."""

    def __init__(
        self,
        gpu: GpuInfo,
        prompt_s: float,
        *,
        prompt_error: bool = False,
        environment: Provisioning | None = None,
    ) -> None:
        self.gpu = gpu
        self.environment = environment or Provisioning()  # the studio's nodes and models
        self.prompt_s = prompt_s
        self.prompt_error = prompt_error  # a bad GPU: every prompt fails in its first node
        self._numbers = itertools.count()
        self._saved = itertools.count(1)
        self._pending: list[_Item] = []
        self._running: _Item | None = None
        self._history: dict[str, dict[str, Any]] = {}
        self._sockets: dict[str, WebSocket] = {}
        self._worker: asyncio.Task[None] | None = None
        self._interrupt = asyncio.Event()

    async def handle(self, request: Request) -> Response:
        path = request.path[4:] if request.path.startswith("/api/") else request.path
        route = self._route(request.method, path)
        if route is None:
            return Response(404, b"404: Not Found", "text/plain; charset=utf-8", [_SERVER_HEADER])
        response = await route(request)
        response.headers.append(_SERVER_HEADER)
        return response

    def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()

    def _route(self, method: str, path: str) -> Callable[[Request], Awaitable[Response]] | None:
        if method == "GET":
            if path.startswith("/history/"):
                return lambda _r: self._history_one(path.removeprefix("/history/"))
            if path.startswith("/object_info/"):
                return lambda _r: self._object_info_one(path.removeprefix("/object_info/"))
            if path.startswith("/models/"):
                return lambda _r: self._models_in(path.removeprefix("/models/"))
            return {
                "/": self._index,
                "/system_stats": self._system_stats,
                "/queue": self._queue,
                "/prompt": self._prompt_info,
                "/history": self._history_list,
                "/object_info": self._object_info,
                "/models": self._model_folders,
                "/features": self._features,
                "/embeddings": self._embeddings,
                "/ws": self._ws,
            }.get(path)
        if method == "POST":
            return {
                "/prompt": self._post_prompt,
                "/queue": self._post_queue,
                "/history": self._post_history,
                "/interrupt": self._post_interrupt,
                "/free": self._empty_ok,
            }.get(path)
        return None

    # ---- GET ----

    async def _index(self, _request: Request) -> Response:
        return text_response(200, "<!doctype html><title>ComfyUI</title>", "text/html")

    async def _system_stats(self, _request: Request) -> Response:
        vram = self.gpu.vram_mb * 1024 * 1024
        return json_response(
            200,
            {
                "system": {
                    "os": "posix",
                    "ram_total": 67_108_864_000,
                    "ram_free": 60_000_000_000,
                    "comfyui_version": "0.3.64",
                    "required_frontend_version": "1.27.10",
                    "installed_templates_version": "0.1.95",
                    "required_templates_version": "0.1.95",
                    "python_version": "3.11.7 (main, May  9 2026, 07:35:25) [GCC 12.2.0]",
                    "pytorch_version": "2.14.1+cu130",
                    "embedded_python": False,
                    "argv": [
                        "main.py",
                        "--disable-auto-launch",
                        "--port",
                        "18188",
                        "--enable-cors-header",
                    ],
                },
                "devices": [
                    {
                        "name": f"cuda:0 NVIDIA GeForce {self.gpu.name} : cudaMallocAsync",
                        "type": "cuda",
                        "index": 0,
                        "vram_total": vram,
                        "vram_free": vram - 512 * 1024 * 1024,
                        "torch_vram_total": 0,
                        "torch_vram_free": 0,
                    }
                ],
            },
        )

    async def _queue(self, _request: Request) -> Response:
        running = [self._running.as_list()] if self._running else []
        pending = [item.as_list() for item in self._pending]
        return json_response(200, {"queue_running": running, "queue_pending": pending})

    async def _prompt_info(self, _request: Request) -> Response:
        return json_response(200, {"exec_info": {"queue_remaining": self._remaining()}})

    async def _history_list(self, request: Request) -> Response:
        entries = list(self._history.items())
        try:
            max_items = int(request.query["max_items"]) if "max_items" in request.query else None
            offset = int(request.query.get("offset", "-1"))
        except ValueError:
            return text_response(500, _CRASH)
        if max_items is not None:
            start = offset if offset >= 0 else max(0, len(entries) - max_items)
            entries = entries[start : start + max_items]
        return json_response(200, dict(entries))

    async def _history_one(self, prompt_id: str) -> Response:
        entry = self._history.get(prompt_id)
        return json_response(200, {prompt_id: entry} if entry is not None else {})

    def _classes(self) -> dict[str, Any]:
        """Built-in classes, the checkpoints on disk, and the loaded custom nodes' classes."""
        loader = _OBJECT_INFO["CheckpointLoaderSimple"]
        checkpoints = self.environment.models("checkpoints") or []
        inputs = {"required": {"ckpt_name": [checkpoints]}}
        return {
            **_OBJECT_INFO,
            "CheckpointLoaderSimple": {**loader, "input": inputs},
            **self.environment.object_info(),
        }

    async def _object_info(self, _request: Request) -> Response:
        return json_response(200, self._classes())

    async def _object_info_one(self, name: str) -> Response:
        classes = self._classes()
        return json_response(200, {name: classes[name]} if name in classes else {})

    async def _model_folders(self, _request: Request) -> Response:
        return json_response(200, self.environment.folders())

    async def _models_in(self, folder: str) -> Response:
        files = self.environment.models(folder)
        if files is None:
            return Response(404)  # aiohttp's bare web.Response(status=404)
        return json_response(200, files)

    async def _features(self, _request: Request) -> Response:
        return json_response(200, _FEATURES)

    async def _embeddings(self, _request: Request) -> Response:
        return json_response(200, [])

    async def _ws(self, request: Request) -> Response:
        sid = request.query.get("clientId") or uuid.uuid4().hex
        return websocket.accept(request.headers, lambda ws: self._ws_session(ws, sid))

    async def _ws_session(self, ws: WebSocket, sid: str) -> None:
        """The newest socket for a clientId gets everything; an older one silently nothing."""
        self._sockets[sid] = ws
        ws.send_json({"type": "status", "data": {**self._status(), "sid": sid}})
        try:
            first = True
            while (text := await ws.receive_text()) is not None:
                if first and '"feature_flags"' in text:
                    ws.send_json({"type": "feature_flags", "data": _FEATURES})
                first = False
        finally:
            if self._sockets.get(sid) is ws:
                del self._sockets[sid]

    # ---- POST ----

    async def _post_prompt(self, request: Request) -> Response:
        body = request.json_object()
        if body is None or ("prompt" in body and not isinstance(body["prompt"], dict)):
            return text_response(500, _CRASH)
        if "prompt" not in body:
            return _invalid("no_prompt", "No prompt provided", "No prompt provided")
        graph: dict[str, Any] = body["prompt"]
        for node_id, node in graph.items():
            if not isinstance(node, dict) or "class_type" not in node:
                return _invalid(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                )
        outputs = [nid for nid, node in graph.items() if node["class_type"] in OUTPUT_CLASSES]
        if not outputs:
            return _invalid("prompt_no_outputs", "Prompt has no outputs", "")
        number = next(self._numbers)
        if body.get("front"):
            number = -number
        elif isinstance(body.get("number"), int | float):
            number = int(body["number"])
        extra_data = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        item = _Item(number, prompt_id, graph, extra_data, outputs)
        bisect.insort(self._pending, item, key=lambda i: i.number)
        self._broadcast_status()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        return json_response(200, {"prompt_id": prompt_id, "number": number, "node_errors": {}})

    async def _post_queue(self, request: Request) -> Response:
        body = request.json_object()
        if body is None:
            return text_response(500, _CRASH)
        if body.get("clear"):
            self._pending.clear()
        if isinstance(body.get("delete"), list):
            doomed = set(map(str, body["delete"]))
            self._pending = [item for item in self._pending if item.prompt_id not in doomed]
        self._broadcast_status()
        return await self._empty_ok(request)

    async def _post_history(self, request: Request) -> Response:
        body = request.json_object()
        if body is None:
            return text_response(500, _CRASH)
        if body.get("clear"):
            self._history.clear()
        for prompt_id in body.get("delete") or []:
            self._history.pop(str(prompt_id), None)
        return await self._empty_ok(request)

    async def _post_interrupt(self, request: Request) -> Response:
        body = request.json_object() if request.body else {}
        wanted = (body or {}).get("prompt_id")
        if self._running is not None and wanted in (None, self._running.prompt_id):
            self._interrupt.set()
        return await self._empty_ok(request)

    async def _empty_ok(self, _request: Request) -> Response:
        return Response(200, b"", JSON_TYPE)

    # ---- execution ----

    def _remaining(self) -> int:
        return len(self._pending) + (self._running is not None)

    def _status(self) -> dict[str, Any]:
        return {"status": {"exec_info": {"queue_remaining": self._remaining()}}}

    def _broadcast_status(self) -> None:
        for sock in list(self._sockets.values()):
            sock.send_json({"type": "status", "data": self._status()})

    def _send(self, client_id: Any, kind: str, data: dict[str, Any]) -> None:
        sock = self._sockets.get(client_id) if isinstance(client_id, str) else None
        if sock is not None:
            sock.send_json({"type": kind, "data": data})

    async def _work(self) -> None:
        while self._pending:
            self._running = self._pending.pop(0)
            self._interrupt.clear()
            await self._execute(self._running)

    async def _execute(self, item: _Item) -> None:
        client = item.extra_data.get("client_id")
        pid = item.prompt_id
        messages: list[list[Any]] = []

        def event(kind: str, data: dict[str, Any], keep: bool = True) -> None:
            self._send(client, kind, data)
            if keep:
                messages.append([kind, data])

        event("execution_start", {"prompt_id": pid, "timestamp": _ms()})
        event("execution_cached", {"nodes": [], "prompt_id": pid, "timestamp": _ms()})
        outputs: dict[str, Any] = {}
        executed: list[str] = []
        step = self.prompt_s / max(1, len(item.graph))
        for node_id, node in item.graph.items():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._interrupt.wait(), step)
            if self._interrupt.is_set():
                event(
                    "execution_interrupted",
                    {
                        "prompt_id": pid,
                        "node_id": node_id,
                        "node_type": node["class_type"],
                        "executed": executed,
                        "timestamp": _ms(),
                    },
                )
                outputs = {}
                break
            if self.prompt_error:
                event("execution_error", _oom_error(pid, node_id, node, executed))
                outputs = {}
                break
            event(
                "executing",
                {"node": node_id, "display_node": node_id, "prompt_id": pid},
                keep=False,
            )
            if node_id in item.outputs:
                outputs[node_id] = self._output(item.graph, node)
                event(
                    "executed",
                    {
                        "node": node_id,
                        "display_node": node_id,
                        "output": outputs[node_id],
                        "prompt_id": pid,
                    },
                    keep=False,
                )
            executed.append(node_id)
        else:
            event("execution_success", {"prompt_id": pid, "timestamp": _ms()})
        success = messages[-1][0] == "execution_success"
        self._history.pop(pid, None)
        self._history[pid] = {
            "prompt": item.as_list(),
            "outputs": outputs,
            "status": {
                "status_str": "success" if success else "error",
                "completed": success,
                "messages": messages,
            },
            "meta": {
                nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                for nid in outputs
            },
        }
        self._running = None
        self._broadcast_status()
        self._send(client, "executing", {"node": None, "prompt_id": pid})

    def _output(self, graph: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
        inputs = node.get("inputs") or {}
        kind = node["class_type"]
        if kind == "PreviewAny":
            source = inputs.get("source")
            if isinstance(source, list) and source and str(source[0]) in graph:
                source = (graph[str(source[0])].get("inputs") or {}).get("value", source)
            return {"text": [str(source)]}
        if kind == "SaveImage":
            subfolder, _, prefix = str(inputs.get("filename_prefix", "ComfyUI")).rpartition("/")
            name = f"{prefix}_{next(self._saved):05}_.png"
            return {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}]}
        if kind == "PreviewImage":
            name = f"ComfyUI_temp_sim_{next(self._saved):05}_.png"
            return {"images": [{"filename": name, "subfolder": "", "type": "temp"}]}
        return {}


def _oom_error(
    prompt_id: str, node_id: str, node: dict[str, Any], executed: list[str]
) -> dict[str, Any]:
    """The `execution_error` of a GPU that runs out of memory, as ComfyUI reports it."""
    return {
        "prompt_id": prompt_id,
        "node_id": node_id,
        "node_type": node["class_type"],
        "executed": list(executed),
        "exception_message": "CUDA out of memory. Tried to allocate 2.00 GiB.\n",
        "exception_type": "torch.OutOfMemoryError",
        "traceback": ['  File "/opt/ComfyUI/execution.py", line 496, in execute\n'],
        "current_inputs": {},
        "current_outputs": [],
        "timestamp": _ms(),
    }


def _invalid(kind: str, message: str, details: str) -> Response:
    return json_response(
        400,
        {
            "error": {"type": kind, "message": message, "details": details, "extra_info": {}},
            "node_errors": {},
        },
    )


def _ms() -> int:
    return int(time.time() * 1000)
