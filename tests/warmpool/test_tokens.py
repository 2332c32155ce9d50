"""Token checks against mocked Hugging Face, Civitai and Vast.ai answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from warmpool.secrets import EnvSecretStore, SecretName, fingerprint
from warmpool.tokens import TokenCheck, TokenService, TokenValidator

FAKE_HF = "hf_GoodToken1234567890"
FAKE_CIVITAI = "civitai-token-abcdef"
HF = "http://hf.test"
CIVITAI = "http://civitai.test"


class MutableStore:
    """A writable in-memory store, to rotate tokens between checks."""

    def __init__(self, **values: str) -> None:
        self.values = {SecretName(k): v for k, v in values.items()}

    def get(self, name: SecretName) -> str | None:
        return self.values.get(name)

    def set(self, name: SecretName, value: str) -> None:
        self.values[name] = value

    def version(self, name: SecretName) -> str:
        return fingerprint(self.get(name))


class FakeServices:
    """HF whoami-v2 and Civitai /me, answering per token; records each request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.civitai_status = "active"
        self.fail_with: Callable[[httpx.Request], httpx.Response] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail_with is not None:
            return self.fail_with(request)
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if request.url.host == "hf.test" and request.url.path == "/api/whoami-v2":
            if token != FAKE_HF:
                return httpx.Response(
                    401, json={"error": "Invalid credentials in Authorization header"}
                )
            return httpx.Response(
                200,
                json={
                    "type": "user",
                    "name": "alice",
                    "auth": {"type": "access_token", "accessToken": {"role": "read"}},
                },
            )
        if request.url.host == "civitai.test" and request.url.path == "/api/v1/me":
            if token != FAKE_CIVITAI:
                return httpx.Response(401, json={"error": "Unauthorized"})
            return httpx.Response(
                200,
                json={"id": 1, "username": "bob", "tier": "free", "status": self.civitai_status},
            )
        return httpx.Response(404)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_validator(
    store: object, services: FakeServices, clock: Clock | None = None, **kwargs: object
) -> TokenValidator:
    return TokenValidator(
        store,  # type: ignore[arg-type]
        hf_base_url=HF + "/",
        civitai_base_url=CIVITAI,
        transport=httpx.MockTransport(services),
        clock=clock or Clock(),
        **kwargs,  # type: ignore[arg-type]
    )


def assert_no_token(check: TokenCheck, *tokens: str) -> None:
    dumped = check.model_dump_json()
    for token in tokens:
        assert token not in dumped


async def test_hf_valid_token_reports_identity_and_role() -> None:
    services = FakeServices()
    validator = make_validator(MutableStore(hf=FAKE_HF), services)
    check = await validator.check(TokenService.HF)
    assert check.ok and check.configured and not check.transient
    assert check.identity == "alice"
    assert "role read" in check.detail
    assert check.version == fingerprint(FAKE_HF)
    assert services.requests[0].url == "http://hf.test/api/whoami-v2"
    assert services.requests[0].headers["authorization"] == f"Bearer {FAKE_HF}"
    assert_no_token(check, FAKE_HF)


async def test_hf_bad_token_is_invalid_not_transient() -> None:
    validator = make_validator(MutableStore(hf="hf_WrongToken9876543"), FakeServices())
    check = await validator.check(TokenService.HF)
    assert not check.ok and check.configured and not check.transient
    assert check.detail == "401 Invalid credentials in Authorization header"
    assert_no_token(check, "hf_WrongToken9876543")


async def test_civitai_uses_me_with_bearer_and_reports_user() -> None:
    services = FakeServices()
    check = await make_validator(MutableStore(civitai=FAKE_CIVITAI), services).check(
        TokenService.CIVITAI
    )
    assert check.ok and check.identity == "bob"
    request = services.requests[0]
    assert request.url.path == "/api/v1/me"
    assert "token" not in request.url.params
    assert request.headers["authorization"] == f"Bearer {FAKE_CIVITAI}"


async def test_civitai_bad_token_and_banned_user_are_invalid() -> None:
    services = FakeServices()
    bad = await make_validator(MutableStore(civitai="nope-nope-nope"), services).check(
        TokenService.CIVITAI
    )
    assert not bad.ok and not bad.transient and bad.detail.startswith("401")
    services.civitai_status = "banned"
    banned = await make_validator(MutableStore(civitai=FAKE_CIVITAI), services).check(
        TokenService.CIVITAI
    )
    assert not banned.ok and not banned.transient
    assert "banned" in banned.detail and banned.identity == "bob"


async def test_unset_token_is_not_configured_and_makes_no_request() -> None:
    services = FakeServices()
    validator = make_validator(EnvSecretStore({}), services)
    checks = await validator.check_all([TokenService.HF, TokenService.CIVITAI, TokenService.VAST])
    assert [c.service for c in checks] == [TokenService.HF, TokenService.CIVITAI, TokenService.VAST]
    assert all(not c.ok and not c.configured and c.version == "unset" for c in checks)
    assert services.requests == []


@pytest.mark.parametrize(
    "failure",
    [
        lambda r: httpx.Response(503, text="upstream down"),
        lambda r: httpx.Response(429, json={"error": "slow down"}),
        lambda r: httpx.Response(200, text="<html>captive portal</html>"),
    ],
    ids=["5xx", "429", "not-json"],
)
async def test_unknown_answers_are_transient(
    failure: Callable[[httpx.Request], httpx.Response],
) -> None:
    services = FakeServices()
    services.fail_with = failure
    check = await make_validator(MutableStore(hf=FAKE_HF), services).check(TokenService.HF)
    assert not check.ok and check.configured and check.transient
    assert check.detail.startswith("could not check:")


async def test_network_error_is_transient_and_never_quotes_the_token() -> None:
    services = FakeServices()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused while sending {request.headers['authorization']}")

    services.fail_with = refuse
    check = await make_validator(MutableStore(hf=FAKE_HF), services).check(TokenService.HF)
    assert check.transient and not check.ok
    assert "ConnectError" in check.detail
    assert_no_token(check, FAKE_HF)


async def test_transient_results_are_not_cached() -> None:
    services = FakeServices()
    services.fail_with = lambda r: httpx.Response(502)
    validator = make_validator(MutableStore(hf=FAKE_HF), services)
    assert (await validator.check(TokenService.HF)).transient
    services.fail_with = None
    assert (await validator.check(TokenService.HF)).ok
    assert len(services.requests) == 2


async def test_results_are_cached_for_the_ttl_and_force_bypasses() -> None:
    services, clock = FakeServices(), Clock()
    validator = make_validator(MutableStore(hf=FAKE_HF), services, clock, cache_ttl=60.0)
    first = await validator.check(TokenService.HF)
    clock.now += 59
    assert await validator.check(TokenService.HF) == first
    assert len(services.requests) == 1
    await validator.check(TokenService.HF, force=True)
    assert len(services.requests) == 2
    clock.now += 61
    await validator.check(TokenService.HF)
    assert len(services.requests) == 3


async def test_rotated_token_is_rechecked_at_once() -> None:
    services = FakeServices()
    store = MutableStore(hf="hf_OldRevokedToken00")
    validator = make_validator(store, services, cache_ttl=3600.0)
    assert not (await validator.check(TokenService.HF)).ok
    store.set(SecretName.HF, FAKE_HF)
    check = await validator.check(TokenService.HF)
    assert check.ok and check.version == fingerprint(FAKE_HF)
    assert len(services.requests) == 2


async def test_concurrent_checks_share_one_request() -> None:
    services = FakeServices()
    validator = make_validator(MutableStore(hf=FAKE_HF), services)
    results = await asyncio.gather(*(validator.check(TokenService.HF) for _ in range(5)))
    assert all(r.ok for r in results)
    assert len(services.requests) == 1


async def test_token_unfit_for_a_header_is_rejected_without_a_request() -> None:
    services = FakeServices()
    check = await make_validator(MutableStore(hf="hf_bad\ntoken123"), services).check(
        TokenService.HF
    )
    assert not check.ok and not check.transient
    assert services.requests == []


class VastAuthError(Exception):
    pass


async def test_vast_check_outcomes() -> None:
    services = FakeServices()
    store = MutableStore(vast="vast-key-0123456789")

    async def good() -> str:
        return "alice@example.com"

    async def bad_key() -> str:
        raise VastAuthError("401 Invalid user key vast-key-0123456789")

    async def down() -> str:
        raise httpx.ConnectTimeout("timed out")

    ok = await make_validator(store, services, vast_check=good).check(TokenService.VAST)
    assert ok.ok and ok.identity == "alice@example.com"
    invalid = await make_validator(store, services, vast_check=bad_key).check(TokenService.VAST)
    assert not invalid.ok and not invalid.transient and "VastAuthError" in invalid.detail
    assert_no_token(invalid, "vast-key-0123456789")
    unknown = await make_validator(store, services, vast_check=down).check(TokenService.VAST)
    assert not unknown.ok and unknown.transient
    missing = await make_validator(store, services).check(TokenService.VAST)
    assert missing.transient and "no Vast.ai checker" in missing.detail
