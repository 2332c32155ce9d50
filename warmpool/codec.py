"""How are Temporal payloads encrypted? AES-GCM with a rotatable keyring, and the data converter.

Defence in depth: secrets never enter workflow history by design (DESIGN invariant 4), and this
codec also keeps the rest of the payloads (instance addresses, lease holders) unreadable to
anyone with access to the Temporal server. It cannot hide search attributes, workflow ids or
logs; with `encode_common_attributes` the failure converter moves exception messages and stack
traces into an encoded payload so they are encrypted too.

Key rotation: `WARMPOOL_CODEC_KEYS=k2:<base64>,k1:<base64>` encrypts with `k2` (the first) and
still decrypts payloads written with `k1`. Payloads that are not marked encrypted pass through
decode unchanged, so histories recorded before encryption was enabled still replay.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

KEYS_VARIABLE = "WARMPOOL_CODEC_KEYS"
ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
KEY_BYTES = 32
_NONCE_BYTES = 12
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class KeyringError(ValueError):
    """A malformed keyring; the message names the variable and key id, never key bytes."""


class CodecError(ValueError):
    """A payload this codec cannot decrypt (unknown key id, wrong key, corrupted data)."""


@dataclass(frozen=True, repr=False)
class Keyring:
    """AES-256 keys by id; `active_id` encrypts, every key decrypts."""

    active_id: str
    keys: Mapping[str, bytes]

    def __post_init__(self) -> None:
        if self.active_id not in self.keys:
            raise KeyringError(f"{KEYS_VARIABLE}: active key id {self.active_id!r} has no key")
        for key_id, key in self.keys.items():
            if not _KEY_ID_RE.match(key_id):
                raise KeyringError(
                    f"{KEYS_VARIABLE}: key id {key_id!r} must be 1-64 of [A-Za-z0-9._-]"
                )
            if len(key) != KEY_BYTES:
                raise KeyringError(
                    f"{KEYS_VARIABLE}: key {key_id!r} must be {KEY_BYTES} bytes, got {len(key)}"
                )
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))

    def __repr__(self) -> str:
        return f"Keyring(active_id={self.active_id!r}, key_ids={sorted(self.keys)!r})"


def parse_keyring(spec: str, *, variable: str = KEYS_VARIABLE) -> Keyring:
    """Parse `id:base64key,...` (first entry is the active key) as found in the environment."""
    entries = [entry.strip() for entry in spec.split(",") if entry.strip()]
    if not entries:
        raise KeyringError(f"{variable} is empty: expected 'key_id:base64key[,...]'")
    keys: dict[str, bytes] = {}
    for position, entry in enumerate(entries, start=1):
        key_id, sep, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not sep or not key_id:
            raise KeyringError(f"{variable}: entry {position} is not 'key_id:base64key'")
        if key_id in keys:
            raise KeyringError(f"{variable}: key id {key_id!r} appears twice")
        keys[key_id] = _decode_key(encoded.strip(), key_id, variable)
    return Keyring(active_id=next(iter(keys)), keys=keys)


def _decode_key(encoded: str, key_id: str, variable: str) -> bytes:
    """Standard or URL-safe base64 of exactly 32 bytes."""
    normalised = encoded.replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(normalised, validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"{variable}: key {key_id!r} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise KeyringError(
            f"{variable}: key {key_id!r} must decode to {KEY_BYTES} bytes, got {len(key)}"
        )
    return key


def new_key() -> str:
    """A fresh random key in the keyring's base64 form (for an operator adding a key)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


class AesGcmCodec(PayloadCodec):
    """Encrypts each whole payload (metadata included) with AES-256-GCM and a random nonce.

    The wire format matches Temporal's encryption samples: data is `nonce || ciphertext+tag`,
    metadata is `encoding: binary/encrypted` and `encryption-key-id: <id>`.
    """

    def __init__(self, keyring: Keyring) -> None:
        self._active_id = keyring.active_id
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keyring.keys.items()}

    def __repr__(self) -> str:
        return f"AesGcmCodec(active_id={self._active_id!r}, key_ids={sorted(self._ciphers)!r})"

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        cipher = self._ciphers[self._active_id]
        key_id = self._active_id.encode()
        encoded = []
        for payload in payloads:
            nonce = os.urandom(_NONCE_BYTES)
            sealed = cipher.encrypt(nonce, payload.SerializeToString(), None)
            encoded.append(
                Payload(
                    metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id},
                    data=nonce + sealed,
                )
            )
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decode_one(payload) for payload in payloads]

    def _decode_one(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise CodecError(
                f"payload is encrypted with key id {key_id!r}, which is not in {KEYS_VARIABLE} "
                f"(known: {sorted(self._ciphers)}); add the old key to decrypt it"
            )
        data = payload.data
        try:
            plain = cipher.decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:], None)
        except InvalidTag:
            raise CodecError(
                f"payload does not decrypt with key {key_id!r}: wrong key or corrupted data"
            ) from None
        return Payload.FromString(plain)


def data_converter(keyring: Keyring | None) -> DataConverter:
    """The converter for clients and workers: pydantic, plus encryption when a keyring is given.

    Every client and worker of a namespace must agree: a worker without the keyring cannot read
    what an encrypting client wrote.
    """
    if keyring is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=AesGcmCodec(keyring),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
