"""How does a test start a fake Vast.ai (plus HF and Civitai) on loopback and steer it?

One HTTP listener serves the Vast.ai API (/api/v0, /api/v1), the log files behind
`result_url` (/logs), the token checks (/hf, /civitai) and the control API (/_sim). Each
running instance gets its own ComfyUI port(s) besides.
"""

from __future__ import annotations

from types import TracebackType

from vastsim.api import VastApi
from vastsim.cloud import Cloud
from vastsim.config import Fault, SimConfig
from vastsim.control import ControlApi
from vastsim.httpserver import HttpServer, Request, Response
from vastsim.ports import reserve
from vastsim.records import CallRecord, InstanceInfo
from vastsim.tokens import TokenApis


class Simulator:
    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self._cloud: Cloud | None = None
        self._server: HttpServer | None = None

    async def start(self) -> None:
        if self._server is not None:
            return
        sock = reserve(self.config.host, self.config.port)
        cloud = Cloud(self.config, f"http://{self.config.api_ip}:{sock.getsockname()[1]}")
        api, tokens, control = VastApi(cloud), TokenApis(cloud), ControlApi(cloud)

        async def dispatch(request: Request) -> Response:
            path = request.path
            if path.startswith("/_sim/"):
                return await control.handle(request)
            if path.startswith(("/hf/", "/civitai/")):
                return await tokens.handle(request)
            if path.startswith("/logs/") and request.method == "GET":
                return api.log_file(request)
            return await api.handle(request)

        self._server = HttpServer(dispatch)
        await self._server.start(sock)
        self._cloud = cloud

    async def stop(self) -> None:
        """Close every listener; instances are left as they were (not destroyed)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._cloud is not None:
            self._cloud.close()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def cloud(self) -> Cloud:
        if self._cloud is None:
            raise RuntimeError("the simulator is not started")
        return self._cloud

    @property
    def base_url(self) -> str:
        return f"{self.cloud.root_url}/api/v0"

    @property
    def api_key(self) -> str:
        return self.config.api_key.get_secret_value()

    @property
    def hf_base_url(self) -> str:
        return f"{self.cloud.root_url}/hf"

    @property
    def civitai_base_url(self) -> str:
        return f"{self.cloud.root_url}/civitai"

    @property
    def control_url(self) -> str:
        return f"{self.cloud.root_url}/_sim"

    def add_fault(self, fault: Fault) -> str:
        return self.cloud.add_fault(fault)

    def clear_faults(self) -> None:
        self.cloud.faults.clear()

    def instances(self) -> list[InstanceInfo]:
        """Every instance ever created, destroyed ones included."""
        return self.cloud.infos()

    def live_instances(self) -> list[InstanceInfo]:
        return [info for info in self.cloud.infos() if not info.destroyed]

    def offers(self) -> list[dict[str, object]]:
        return self.cloud.offers_view()

    @property
    def calls(self) -> list[CallRecord]:
        """The newest `call_log_limit` calls, oldest first."""
        return list(self.cloud.calls)

    @property
    def call_counts(self) -> dict[str, int]:
        """Calls per endpoint key since start (or reset), never truncated."""
        return dict(self.cloud.call_counts)

    def set_instance_status(self, instance_id: int, **fields: str | None) -> None:
        """Pin actual_status, intended_status, cur_state, next_state or status_msg."""
        self.cloud.instance(instance_id).force(fields)

    def clear_instance_status(self, instance_id: int) -> None:
        """Undo `set_instance_status` (e.g. a host heartbeat that came back)."""
        self.cloud.instance(instance_id).unforce()

    async def kill_comfy(self, instance_id: int) -> None:
        await self.cloud.instance(instance_id).kill_comfy()

    async def revive_comfy(self, instance_id: int) -> None:
        await self.cloud.instance(instance_id).revive_comfy()

    def provisioning_log(self, instance_id: int) -> list[str]:
        """The instance's provisioning log lines so far (`warmpool: model ...` and so on)."""
        return self.cloud.instance(instance_id).provisioning.lines()

    def reset(self) -> None:
        self.cloud.reset()
