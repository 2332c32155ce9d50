"""AES-GCM payload codec, keyring parsing, the data converter, and the codec server."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime

import httpx
import pytest
from google.protobuf import json_format
from starlette.applications import Starlette
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.failure.v1 import Failure
from temporalio.exceptions import ApplicationError

from warmpool.codec import (
    AesGcmCodec,
    CodecError,
    Keyring,
    KeyringError,
    data_converter,
    new_key,
    parse_keyring,
)
from warmpool.codec_server import create_codec_app
from warmpool.models import Lease, SlotCounters

K1 = os.urandom(32)
K2 = os.urandom(32)
UI = "http://127.0.0.1:8233"


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def plain(data: bytes = b'{"a": 1}') -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=data)


async def test_round_trip_hides_data_and_metadata() -> None:
    codec = AesGcmCodec(Keyring("k1", {"k1": K1}))
    original = plain(b'{"holder": "studio-7"}')
    [encoded] = await codec.encode([original])
    assert encoded.metadata["encoding"] == b"binary/encrypted"
    assert encoded.metadata["encryption-key-id"] == b"k1"
    assert b"studio-7" not in encoded.data and b"json/plain" not in encoded.data
    assert await codec.decode([encoded]) == [original]


async def test_same_payload_encrypts_differently_each_time() -> None:
    codec = AesGcmCodec(Keyring("k1", {"k1": K1}))
    first, second = await codec.encode([plain(), plain()])
    assert first.data != second.data


async def test_key_rotation_keeps_old_payloads_readable() -> None:
    old_codec = AesGcmCodec(parse_keyring(f"k1:{b64(K1)}"))
    [old_payload] = await old_codec.encode([plain(b"old")])
    rotated = AesGcmCodec(parse_keyring(f"k2:{b64(K2)},k1:{b64(K1)}"))
    [new_payload] = await rotated.encode([plain(b"new")])
    assert new_payload.metadata["encryption-key-id"] == b"k2"
    assert await rotated.decode([old_payload, new_payload]) == [plain(b"old"), plain(b"new")]
    with pytest.raises(CodecError, match="'k2'.*not in WARMPOOL_CODEC_KEYS"):
        await old_codec.decode([new_payload])


async def test_wrong_key_or_tampered_data_fails_clearly() -> None:
    [payload] = await AesGcmCodec(Keyring("k1", {"k1": K1})).encode([plain()])
    impostor = AesGcmCodec(Keyring("k1", {"k1": K2}))
    with pytest.raises(CodecError, match="wrong key or corrupted"):
        await impostor.decode([payload])
    tampered = Payload()
    tampered.CopyFrom(payload)
    tampered.data = payload.data[:-1] + bytes([payload.data[-1] ^ 1])
    with pytest.raises(CodecError):
        await AesGcmCodec(Keyring("k1", {"k1": K1})).decode([tampered])


async def test_unencrypted_payloads_pass_through_decode() -> None:
    codec = AesGcmCodec(Keyring("k1", {"k1": K1}))
    legacy = [plain(b'"from before encryption"'), Payload(metadata={"encoding": b"binary/null"})]
    assert await codec.decode(legacy) == legacy


def test_parse_keyring_first_is_active_and_urlsafe_base64_is_accepted() -> None:
    urlsafe = base64.urlsafe_b64encode(K2).decode()
    keyring = parse_keyring(f" k2:{urlsafe} , k1:{b64(K1)} ")
    assert keyring.active_id == "k2"
    assert dict(keyring.keys) == {"k2": K2, "k1": K1}
    assert len(base64.b64decode(new_key())) == 32


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("justbase64", "entry 1 is not"),
        (f"k1:{b64(K1)},k1:{b64(K2)}", "appears twice"),
        (f"k1:{b64(K1[:16])}", "32 bytes, got 16"),
        ("k1:not*base64!", "not valid base64"),
        (f"bad id:{b64(K1)}", "must be 1-64"),
    ],
    ids=["empty", "no-id", "twice", "short-key", "not-base64", "bad-id"],
)
def test_parse_keyring_errors_name_the_variable_but_never_key_bytes(
    spec: str, message: str
) -> None:
    with pytest.raises(KeyringError, match=message) as caught:
        parse_keyring(spec)
    text = str(caught.value)
    assert "WARMPOOL_CODEC_KEYS" in text
    for secret in (b64(K1), b64(K2), b64(K1[:16]), "not*base64!"):
        assert secret not in text


def test_reprs_show_key_ids_only() -> None:
    keyring = Keyring("k1", {"k1": K1})
    for text in (repr(keyring), repr(AesGcmCodec(keyring))):
        assert "k1" in text and b64(K1) not in text and repr(K1) not in text


async def test_data_converter_encrypts_pydantic_models_and_failures() -> None:
    converter = data_converter(Keyring("k1", {"k1": K1}))
    value = SlotCounters(attempts=3, failures_by_reason={"no_space": 2})
    [payload] = await converter.encode([value])
    assert payload.metadata["encoding"] == b"binary/encrypted"
    assert b"no_space" not in payload.data
    assert await converter.decode([payload], [SlotCounters]) == [value]

    failure = Failure()
    await converter.encode_failure(ApplicationError("holder secret-lease-info"), failure)
    assert failure.message == "Encoded failure"
    assert "secret-lease-info" not in str(failure)
    decoded = await converter.decode_failure(failure)
    assert "secret-lease-info" in str(decoded)


async def test_data_converter_without_keyring_is_plain_pydantic() -> None:
    converter = data_converter(None)
    [payload] = await converter.encode([SlotCounters(attempts=1)])
    assert payload.metadata["encoding"] == b"json/plain"
    assert converter.payload_codec is None


def http(app: Starlette) -> httpx.AsyncClient:
    """Starlette's TestClient warns about httpx 0.28; httpx's own ASGI transport does not."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://codec.test")


def payloads_json(payloads: list[Payload]) -> str:
    return json_format.MessageToJson(Payloads(payloads=payloads))


def from_json(text: str) -> list[Payload]:
    return list(json_format.Parse(text, Payloads()).payloads)


async def test_codec_server_encode_decode_in_temporal_json_format() -> None:
    codec = AesGcmCodec(Keyring("k1", {"k1": K1}))
    client = http(create_codec_app(codec))
    original = plain(b'{"lease_id": "L-1"}')
    body = {
        "payloads": [
            {
                "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
                "data": base64.b64encode(original.data).decode(),
            }
        ]
    }
    encoded = await client.post("/encode", json=body, headers={"X-Namespace": "default"})
    assert encoded.status_code == 200
    [wire] = encoded.json()["payloads"]
    assert base64.b64decode(wire["metadata"]["encoding"]) == b"binary/encrypted"
    decoded = await client.post("/default/decode", content=encoded.text)  # namespaced path form
    assert decoded.status_code == 200
    assert from_json(decoded.text) == [original]


async def test_codec_server_rejects_garbage_and_unknown_paths() -> None:
    client = http(create_codec_app(AesGcmCodec(Keyring("k1", {"k1": K1}))))
    assert (await client.post("/decode", content=b"{not json")).status_code == 400
    assert (await client.post("/transmogrify", json={"payloads": []})).status_code == 404
    assert (await client.get("/decode")).status_code == 405


async def test_codec_server_reports_unknown_key_without_crashing() -> None:
    [payload] = await AesGcmCodec(Keyring("k9", {"k9": K2})).encode([plain()])
    client = http(create_codec_app(AesGcmCodec(Keyring("k1", {"k1": K1}))))
    response = await client.post("/decode", content=payloads_json([payload]))
    assert response.status_code == 422
    assert "'k9'" in response.json()["error"]


async def test_codec_server_cors_preflight_for_the_ui() -> None:
    client = http(create_codec_app(AesGcmCodec(Keyring("k1", {"k1": K1}))))
    preflight = await client.options(
        "/decode",
        headers={
            "Origin": UI,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == UI
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert {"content-type", "x-namespace", "authorization"} <= set(
        allowed.replace(" ", "").split(",")
    )
    actual = await client.post("/decode", content=payloads_json([plain()]), headers={"Origin": UI})
    assert actual.headers["access-control-allow-origin"] == UI

    evil = await client.options(
        "/decode",
        headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "POST"},
    )
    assert evil.status_code == 400
    assert "access-control-allow-origin" not in evil.headers


async def test_codec_server_bearer_auth() -> None:
    codec = AesGcmCodec(Keyring("k1", {"k1": K1}))
    client = http(create_codec_app(codec, auth_token="operator-token-1", allowed_origins=[UI]))
    body = payloads_json([plain()])
    missing = await client.post("/encode", content=body, headers={"Origin": UI})
    assert missing.status_code == 401
    assert missing.headers["access-control-allow-origin"] == UI  # the UI can read the 401
    assert "operator-token-1" not in missing.text
    wrong = await client.post("/encode", content=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = await client.post(
        "/encode", content=body, headers={"Authorization": "Bearer operator-token-1"}
    )
    assert ok.status_code == 200
    # A preflight carries no credentials and must still pass.
    preflight = await client.options(
        "/encode",
        headers={
            "Origin": UI,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200


async def test_the_server_decodes_what_the_converter_wrote() -> None:
    """What the UI does: show a payload the worker's converter wrote."""
    codec = AesGcmCodec(Keyring("k1", {"k1": K1}))
    converter = data_converter(Keyring("k1", {"k1": K1}))
    lease = Lease(
        lease_id="L-9",
        holder="studio",
        request_id="r-1",
        granted_at=datetime(2026, 1, 1, tzinfo=UTC),
        leased_until=datetime(2026, 1, 1, 1, tzinfo=UTC),
    )
    payloads = await converter.encode([lease])
    client = http(create_codec_app(codec))
    response = await client.post("/decode", content=payloads_json(payloads))
    [decoded] = from_json(response.text)
    assert json.loads(decoded.data)["holder"] == "studio"
