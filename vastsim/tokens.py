"""What do Hugging Face and Civitai answer when asked whether a token is valid?

Only the two token checks the pool makes (vastai-api.md section 8), recorded in the call log
as "hf_whoami" and "civitai_me" so tests can see when tokens are (re)validated.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable

from vastsim.cloud import Cloud
from vastsim.httpserver import Request, Response, json_response

HF_PATH = "/hf/api/whoami-v2"
CIVITAI_PATH = "/civitai/api/v1/me"


class TokenApis:
    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud

    async def handle(self, request: Request) -> Response:
        arrived = time.time()
        if request.method == "GET" and request.path == HF_PATH:
            key, response = "hf_whoami", self._hf(request)
        elif request.method == "GET" and request.path == CIVITAI_PATH:
            key, response = "civitai_me", self._civitai(request)
        else:
            key, response = "unknown", json_response(404, {"error": "Not Found"})
        self._cloud.record(request, key, response.status, arrived)
        return response

    def _hf(self, request: Request) -> Response:
        if not _known(_bearer(request), self._cloud.config.hf_tokens):
            return json_response(401, {"error": "Invalid credentials in Authorization header"})
        return json_response(
            200,
            {
                "type": "user",
                "name": "sim",
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "pool", "role": "read"},
                },
            },
        )

    def _civitai(self, request: Request) -> Response:
        token = _bearer(request) or request.query.get("token", "")
        if not _known(token, self._cloud.config.civitai_tokens):
            return json_response(401, {"error": "Unauthorized"})
        return json_response(
            200,
            {
                "id": 1,
                "username": "sim",
                "tier": "free",
                "status": "active",
                "isMember": False,
                "subscriptions": [],
            },
        )


def _bearer(request: Request) -> str:
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else ""


def _known(token: str, valid: Iterable[str]) -> bool:
    return bool(token) and any(hmac.compare_digest(token.encode(), v.encode()) for v in valid)
