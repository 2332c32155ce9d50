"""What does the simulated Vast.ai REST API answer? Paths, auth, bodies and errors of vastai-api.md.

Every call is recorded (rejected ones too) under an endpoint key: bundles, create, show,
list_v1, list_v0, destroy, label (PUT on an instance: label or state), user, logs, unknown.
Answering faults (rate_limit, server_error, bad_key, success_false, non_json) and `slow` are
scoped by endpoint key only; the others are scoped by offer, machine and image as well
(`gpu_taken` is taken by the start of a stopped instance, under endpoint key "label").
With `SimConfig.min_intervals` set, an endpoint also answers 429 (no Retry-After) to a call of
an API key that arrives sooner than its interval after that key's last accepted call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from vastsim.cloud import Cloud
from vastsim.config import ANSWERING_KINDS
from vastsim.faults import Scope, answer, too_frequent, unauthorized
from vastsim.filters import QueryError
from vastsim.httpserver import Request, Response, json_response, text_response
from vastsim.instance import Instance, RentRequest
from vastsim.listing import ListError, page
from vastsim.offers import search

Action = Callable[[Request, str], Awaitable[Response]]

_INVALID_BODY = {"error": "invalid_request", "msg": "Invalid json body"}
_ENV_ENTRY_MAX, _ENV_TOTAL_MAX = 256, 32768


class RentError(Exception):
    def __init__(self, error: str, msg: str) -> None:
        super().__init__(msg)
        self.error = error
        self.msg = msg


class VastApi:
    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud
        self._routes: list[tuple[str, re.Pattern[str], str, Action]] = [
            ("POST", re.compile(r"/api/v0/bundles/?"), "bundles", self._search),
            ("PUT", re.compile(r"/api/v0/asks/([^/]+)/?"), "create", self._create),
            ("GET", re.compile(r"/api/v0/instances/?"), "list_v0", self._list_v0),
            ("PUT", re.compile(r"/api/v0/instances/request_logs/([^/]+)/?"), "logs", self._logs),
            ("GET", re.compile(r"/api/v0/instances/([^/]+)/?"), "show", self._show),
            ("PUT", re.compile(r"/api/v0/instances/([^/]+)/?"), "label", self._manage),
            ("DELETE", re.compile(r"/api/v0/instances/([^/]+)/?"), "destroy", self._destroy),
            ("GET", re.compile(r"/api/v0/users/current/?"), "user", self._user),
            ("GET", re.compile(r"/api/v1/instances/?"), "list_v1", self._list_v1),
        ]
        self._accepted: dict[tuple[str, str], float] = {}  # (identity, endpoint) -> monotonic

    async def handle(self, request: Request) -> Response:
        arrived = time.time()
        key, action, arg = "unknown", None, ""
        for method, pattern, route_key, route_action in self._routes:
            match = pattern.fullmatch(request.path)
            if match and method == request.method:
                key, action, arg = route_key, route_action, (match.groups() or ("",))[0]
                break
        if action is None:
            response = json_response(
                404, {"success": False, "error": "not_found", "msg": "Unknown API path"}
            )
        else:
            response = await self._answer(request, key, action, arg)
        self._cloud.record(request, key, response.status, arrived)
        return response

    async def _answer(self, request: Request, key: str, action: Action, arg: str) -> Response:
        cloud = self._cloud
        limited = self._too_soon(request, key)
        if limited is not None:
            return limited
        slow = cloud.faults.take({"slow"}, Scope(key))
        if slow is not None and slow.seconds:
            await asyncio.sleep(cloud.config.scaled(slow.seconds))
        fault = cloud.faults.take(ANSWERING_KINDS, Scope(key))
        if fault is not None:
            return answer(fault, key)
        # gpuhunt searches without a key, so the search accepts none (but not a wrong one).
        if not self._authorized(request, optional=key == "bundles"):
            return unauthorized()
        return await action(request, arg)

    def _too_soon(self, request: Request, key: str) -> Response | None:
        """Vast.ai's rate limit: a minimum interval per endpoint and identity (the key sent;
        keyless calls share one), measured at arrival between accepted calls."""
        intervals = self._cloud.config.min_intervals
        interval = intervals.get(key, 0.0) if intervals else 0.0
        if interval <= 0:
            return None
        identity = _credential(request) or "anonymous"  # every caller of the simulator is local
        now = time.monotonic()
        last = self._accepted.get((identity, key))
        if last is not None and now - last < self._cloud.config.scaled(interval):
            return too_frequent(key, threshold=interval)
        self._accepted[(identity, key)] = now
        return None

    def _authorized(self, request: Request, *, optional: bool) -> bool:
        given = _credential(request)
        if not given:
            return optional
        expected = self._cloud.config.api_key.get_secret_value()
        return hmac.compare_digest(given.encode(), expected.encode())

    # ---- offers ----

    async def _search(self, request: Request, _arg: str) -> Response:
        try:
            query = request.json()
        except ValueError:
            return json_response(400, _INVALID_BODY)
        try:
            offers = search(self._cloud.offers_view(), query)
        except QueryError as exc:
            return json_response(400, {"error": "invalid_request", "msg": str(exc)})
        return json_response(200, {"offers": offers})

    async def _create(self, request: Request, arg: str) -> Response:
        cloud = self._cloud
        offer_id = int(arg) if arg.isdigit() else -1
        body = request.json_object()
        if body is None:
            return json_response(400, _INVALID_BODY)
        offer = cloud.offers.get(offer_id)
        image = body.get("image") if isinstance(body.get("image"), str) else None
        scope = Scope("create", offer_id, offer["machine_id"] if offer else None, image)
        vanished = cloud.faults.take({"vanished_offer"}, scope)
        if vanished is not None and vanished.value == "410":
            return json_response(
                410,
                {
                    "success": False,
                    "error": "no_such_ask",
                    "msg": f"Instance type by id {offer_id} is no longer available.",
                    "ask_id": offer_id,
                },
            )
        if vanished is not None or not cloud.rentable(offer_id):
            return json_response(
                404,
                {
                    "success": False,
                    "error": "invalid_args",
                    "msg": f"error 404/3603: no_such_ask Instance type by id {arg} is not "
                    "available.",
                    "ask_id": offer_id,
                },
            )
        try:
            rent = parse_rent(body)
        except RentError as exc:
            return json_response(
                400, {"success": False, "error": exc.error, "msg": exc.msg, "ask_id": offer_id}
            )
        failing = cloud.faults.take({"create_fail_with_contract"}, scope)
        lag = cloud.faults.take({"list_lag"}, scope)
        if failing is not None:
            rent = dataclasses.replace(rent, stopped=True)
        hidden = cloud.config.scaled(lag.seconds or 0.0) if lag is not None else 0.0
        instance = cloud.create(offer_id, rent, hidden_for=hidden)
        if failing is not None:
            return json_response(
                400,
                {
                    "success": False,
                    "error": "invalid_price",
                    "msg": "Your bid is below the minimum; the instance was created stopped.",
                    "new_contract": instance.id,
                    "ask_id": offer_id,
                },
            )
        return json_response(
            200,
            {"success": True, "new_contract": instance.id, "instance_api_key": instance.api_key},
        )

    # ---- instances ----

    async def _show(self, request: Request, arg: str) -> Response:
        now = time.monotonic()
        instance = self._cloud.instances.get(int(arg)) if arg.isdigit() else None
        if instance is not None and instance.visible(now):
            return json_response(200, {"instances": instance.view(now)})
        hidden = instance is not None and not instance.gone(now)
        if not hidden and self._cloud.faults.take({"show_404"}, self._scope("show", instance)):
            return json_response(
                404, {"success": False, "error": "not_found", "msg": "Instance not found"}
            )
        return json_response(200, {"instances": None})

    async def _list_v0(self, _request: Request, _arg: str) -> Response:
        return json_response(200, {"instances_found": 0, "instances": []})

    async def _list_v1(self, request: Request, _arg: str) -> Response:
        now = time.monotonic()
        listed = [i for i in self._cloud.instances.values() if i.visible(now)]
        try:
            body = page(listed, request.query, lambda i: i.row(now), lambda i: i.view(now))
        except ListError as exc:
            return json_response(400, {"success": False, "error": exc.error, "msg": exc.msg})
        broken = self._cloud.faults.take({"malformed_list"}, Scope("list_v1"))
        if broken is not None:
            if broken.value == "missing":
                del body["instances"]
            else:
                body["instances"] = "oops"
        return json_response(200, body)

    async def _destroy(self, _request: Request, arg: str) -> Response:
        cloud, now = self._cloud, time.monotonic()
        instance = cloud.instances.get(int(arg)) if arg.isdigit() else None
        if instance is None or instance.gone(now):
            scope = self._scope("destroy", instance)
            if cloud.faults.take({"destroy_not_found_variant"}, scope):
                return json_response(404, {"error": "not_found", "msg": "Instance not found"})
            return _no_such_instance(arg)
        if instance.destroyed_at is None:
            delay = cloud.faults.take({"destroy_delay"}, self._scope("destroy", instance))
            linger = cloud.config.scaled(delay.seconds or 0.0) if delay is not None else 0.0
            instance.destroy(linger)
        return json_response(200, {"success": True})

    async def _manage(self, request: Request, arg: str) -> Response:
        instance = self._cloud.live(int(arg)) if arg.isdigit() else None
        if instance is None:
            return _no_such_instance(arg)
        body = request.json_object()
        if body is None:
            return json_response(400, _INVALID_BODY)
        if "label" in body:
            label = body["label"]
            if label is not None and not isinstance(label, str):
                return _invalid_args("label must be a string")
            if label is not None and len(label) > 1024:
                return json_response(
                    400, {"success": False, "error": "label_too_long", "msg": "label is too long"}
                )
            instance.label = label
            return json_response(
                200, {"success": True, "msg": f"label for {instance.id} set to '{label}'"}
            )
        if body.get("state") == "stopped":
            instance.stop()
        elif body.get("state") == "running":
            if instance.parked(time.monotonic()):  # a no-op start uses up no fault
                taken = self._cloud.faults.take({"gpu_taken"}, self._scope("label", instance))
                instance.start(gpu_taken=taken is not None)
        else:
            return _invalid_args("expected 'label' or 'state' ('running' | 'stopped')")
        return json_response(200, {"success": True})

    async def _logs(self, _request: Request, arg: str) -> Response:
        instance = self._cloud.live(int(arg)) if arg.isdigit() else None
        if instance is None:
            return json_response(
                404, {"success": False, "error": "invalid_id", "msg": f"Instance {arg} not found."}
            )
        url = self._cloud.publish_log(instance, time.monotonic())
        return json_response(200, {"success": True, "result_url": url})

    async def _user(self, _request: Request, _arg: str) -> Response:
        return json_response(
            200,
            {
                "id": 424242,
                "key_id": 1,
                "email": "sim@example.com",
                "username": "sim",
                "credit": 25.0,
                "balance": 0.0,
                "can_pay": True,
                "has_billing": True,
                "ssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheSimulatorOnly sim",
                "api_key": self._cloud.config.api_key.get_secret_value(),
            },
        )

    def _scope(self, key: str, instance: Instance | None) -> Scope:
        if instance is None:
            return Scope(key)
        return Scope(key, instance.offer["id"], instance.offer["machine_id"], instance.rent.image)

    def log_file(self, request: Request) -> Response:
        """The file behind a `result_url`: 404 until it "appears", like S3 after the request."""
        key = request.path.removeprefix("/logs/").removesuffix(".log")
        entry = self._cloud.logs.get(key)
        if entry is None or time.monotonic() < entry[0]:
            return text_response(404, "NoSuchKey\n", "application/xml")
        return text_response(200, entry[1])


def _credential(request: Request) -> str:
    """The API key a call carries: the bearer header, else the `api_key` query parameter."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    given = credential.strip() if scheme.lower() == "bearer" else ""
    return given or request.query.get("api_key", "")


def parse_rent(body: dict[str, Any]) -> RentRequest:
    """The create body checked as the docs describe, or RentError(error, msg)."""
    image = body.get("image")
    if not isinstance(image, str) or not image or len(image) > 1024:
        raise RentError("invalid_args", "image is required (at most 1024 characters)")
    disk = body.get("disk", 10.0)
    if not isinstance(disk, int | float) or isinstance(disk, bool) or disk < 8:
        raise RentError("invalid_args", "disk must be a number of GB, at least 8")
    label = body.get("label")
    if label is not None and (not isinstance(label, str) or len(label) > 256):
        raise RentError("invalid_args", "label must be a string of at most 256 characters")
    env = body.get("env", {})
    if env is None:
        env = {}
    if not isinstance(env, dict):
        raise RentError("invalid_args", "env must be a JSON object of KEY: value")
    env = {str(k): str(v) for k, v in env.items()}
    if any(len(k) + len(v) > _ENV_ENTRY_MAX for k, v in env.items()) or (
        sum(len(k) + len(v) for k, v in env.items()) > _ENV_TOTAL_MAX
    ):
        raise RentError("invalid_args", "env entries are limited to 256 characters, 32768 total")
    onstart = body.get("onstart")
    if onstart is not None and (not isinstance(onstart, str) or len(onstart) > 4048):
        raise RentError("invalid_args", "onstart must be a string of at most 4048 characters")
    price = body.get("price")
    if price is not None and (not isinstance(price, int | float) or not 0.001 <= price <= 128):
        raise RentError("invalid_price", "price must be between 0.001 and 128 $/h")
    target = body.get("target_state", "running")
    if target not in ("running", "stopped", None):
        raise RentError("invalid_args", "target_state must be 'running' or 'stopped'")
    runtype = body.get("runtype")
    return RentRequest(
        image=image,
        disk=float(disk),
        label=label,
        env=env,
        runtype=runtype if isinstance(runtype, str) else None,
        price=float(price) if price is not None else None,
        stopped=target == "stopped",
    )


def _invalid_args(msg: str) -> Response:
    return json_response(400, {"success": False, "error": "invalid_args", "msg": msg})


def _no_such_instance(arg: str) -> Response:
    msg = f"Instance {arg} not found."
    return json_response(404, {"success": False, "error": "no_such_instance", "msg": msg})
