"""How is one instance's ComfyUI reached from outside: through the portal, or bare?

"portal" is Vast.ai's vastai/comfyui image: Caddy on container port 8188 accepts TCP as soon
as the container runs, demands the instance token (401 with a Basic challenge otherwise), and
answers 502 with `X-Portal-Placeholder: true` until ComfyUI (on 18188) is up. "bare" is a
custom image: nothing listens on 8188 until ComfyUI is ready. A mapped 18188 always reaches
ComfyUI directly, without a token, and only while it is up.
"""

from __future__ import annotations

import hmac
from typing import Literal

from vastsim.comfy import ComfyApp, GpuInfo
from vastsim.environment import Provisioning
from vastsim.httpserver import Request, Response, text_response
from vastsim.ports import HostPort

PORTAL_PORT = 8188
COMFY_PORT = 18188
_PLACEHOLDER = (
    "<!doctype html><html><head><title>Instance Portal</title></head>"
    "<body><h1>Loading...</h1><p>This application is still starting.</p></body></html>"
)


class ComfyEndpoint:
    def __init__(
        self,
        *,
        host: str,
        mode: Literal["portal", "bare"],
        token: str,
        container_ports: set[int],
        gpu: GpuInfo,
        prompt_s: float,
        prompt_error: bool = False,
        environment: Provisioning | None = None,
    ) -> None:
        self._host = host
        self._environment = environment
        self._mode = mode
        self._token = token
        self._wanted = container_ports & {PORTAL_PORT, COMFY_PORT}
        self._gpu = gpu
        self._prompt_s = prompt_s
        self._prompt_error = prompt_error
        self._ports: dict[int, HostPort] = {}
        self._comfy: ComfyApp | None = None
        self._firewalled = False

    @property
    def comfy_ready(self) -> bool:
        return self._comfy is not None

    def host_ports(self) -> dict[int, int]:
        """Container port -> host port, for the ports that exist (once the container runs)."""
        return {container: port.port for container, port in self._ports.items()}

    async def start(self, *, firewall: bool) -> None:
        """The container runs: its ports are mapped, and the portal (if any) answers."""
        self._ports = {container: HostPort(self._host) for container in sorted(self._wanted)}
        if firewall:
            self._firewalled = True
            for port in self._ports.values():
                port.firewall()
        elif self._mode == "portal" and PORTAL_PORT in self._ports:
            await self._ports[PORTAL_PORT].listen(self._portal)

    async def comfy_up(self) -> None:
        if self._comfy is not None:
            return
        self._comfy = ComfyApp(
            self._gpu,
            self._prompt_s,
            prompt_error=self._prompt_error,
            environment=self._environment,
        )
        if self._firewalled:
            return
        for container in self._direct_ports():
            await self._ports[container].listen(self._direct)

    def comfy_down(self) -> None:
        """ComfyUI died: the portal falls back to its placeholder, direct ports refuse."""
        if self._comfy is None:
            return
        self._comfy.shutdown()
        self._comfy = None
        if not self._firewalled:
            for container in self._direct_ports():
                self._ports[container].refuse()

    def close(self) -> None:
        if self._comfy is not None:
            self._comfy.shutdown()
            self._comfy = None
        for port in self._ports.values():
            port.close()
        self._ports.clear()

    def _direct_ports(self) -> list[int]:
        direct = [COMFY_PORT] if self._mode == "portal" else [PORTAL_PORT, COMFY_PORT]
        return [container for container in direct if container in self._ports]

    async def _portal(self, request: Request) -> Response:
        if not self._authorized(request):
            response = text_response(401, "Unauthorized\n")
            response.headers.append(("WWW-Authenticate", 'Basic realm="Instance Portal"'))
            return response
        if self._comfy is None:
            response = text_response(502, _PLACEHOLDER, "text/html; charset=utf-8")
            response.headers.append(("X-Portal-Placeholder", "true"))
            return response
        return await self._comfy.handle(request)

    async def _direct(self, request: Request) -> Response:
        comfy = self._comfy
        if comfy is None:  # only in the instant between death and the listener closing
            return text_response(503, "Service Unavailable\n")
        return await comfy.handle(request)

    def _authorized(self, request: Request) -> bool:
        candidates = [request.query.get("token", "")]
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            candidates.append(credential.strip())
        for cookie in request.headers.get("cookie", "").split(";"):
            name, _, value = cookie.strip().partition("=")
            if name == "token":
                candidates.append(value)
        expected = self._token.encode()
        return any(hmac.compare_digest(c.encode(), expected) for c in candidates if c)
