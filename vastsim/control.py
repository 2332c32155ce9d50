"""How does a test or chaos script in another process drive the simulator? The /_sim/ API.

It mirrors the Python API of `Simulator`. There is no auth: the simulator listens on loopback.
"""

from __future__ import annotations

import re

from pydantic import ValidationError

from vastsim.cloud import Cloud
from vastsim.config import Fault
from vastsim.httpserver import Request, Response, json_response

_INSTANCE = re.compile(r"/_sim/instances/(\d+)(/comfy)?/?")
_PROVISIONING_LOG = re.compile(r"/_sim/instances/(\d+)/provisioning-log")
_OK = {"success": True}


class ControlApi:
    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud

    async def handle(self, request: Request) -> Response:
        cloud, method, path = self._cloud, request.method, request.path.rstrip("/")
        if method == "GET" and path == "/_sim/state":
            return json_response(200, cloud.state())
        if method == "DELETE" and path == "/_sim/faults":
            cloud.faults.clear()
            return json_response(200, _OK)
        if method == "GET" and (match := _PROVISIONING_LOG.fullmatch(path)):
            return self._provisioning_log(int(match.group(1)))
        if method == "POST" and path == "/_sim/reset":
            cloud.reset()
            return json_response(200, _OK)
        if method == "DELETE" and (match := _INSTANCE.fullmatch(path)) and not match.group(2):
            try:
                cloud.instance(int(match.group(1))).unforce()
            except KeyError as exc:
                return _error(404, str(exc))
            return json_response(200, _OK)
        if method != "POST":
            return _error(404, "unknown control path")
        body = request.json_object()
        if body is None:
            return _error(400, "body must be a JSON object")
        if path == "/_sim/faults":
            try:
                return json_response(200, {"id": cloud.add_fault(Fault.model_validate(body))})
            except ValidationError as exc:
                return _error(400, str(exc))
        match = _INSTANCE.fullmatch(path)
        if match is None:
            return _error(404, "unknown control path")
        try:
            instance = cloud.instance(int(match.group(1)))
        except KeyError as exc:
            return _error(404, str(exc))
        if match.group(2) is None:
            try:
                instance.force(body)
            except ValueError as exc:
                return _error(400, str(exc))
        elif body.get("action") == "kill":
            await instance.kill_comfy()
        elif body.get("action") == "revive":
            await instance.revive_comfy()
        else:
            return _error(400, "action must be 'kill' or 'revive'")
        return json_response(200, _OK)

    def _provisioning_log(self, instance_id: int) -> Response:
        """The instance's provisioning log lines so far (`warmpool: ...`), and its version."""
        try:
            provisioning = self._cloud.instance(instance_id).provisioning
        except KeyError as exc:
            return _error(404, str(exc))
        return json_response(200, {"version": provisioning.version, "lines": provisioning.lines()})


def _error(status: int, msg: str) -> Response:
    return json_response(status, {"success": False, "error": "sim_control", "msg": msg})
