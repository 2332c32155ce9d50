"""Which token opens an instance's portal? One derived from the pool secret and the instance label.

Vast.ai's ComfyUI image puts a Caddy proxy in front of ComfyUI that wants a Bearer token. The pool
sets `OPEN_BUTTON_TOKEN` to this value at rent time and sends it on every probe, keepalive and
proxied request. Deriving it (instead of storing it) lets any worker recompute it from the label,
so the token never has to travel through workflow history.
"""

from __future__ import annotations

import hashlib
import hmac

TOKEN_HEX_CHARS = 32


def derive_instance_token(secret: bytes, label: str) -> str:
    """HMAC-SHA256(secret, label), first 32 hex chars: deterministic, unguessable without secret."""
    if not secret:
        raise ValueError("the instance-token secret is empty")
    if not label:
        raise ValueError("an instance token needs a non-empty label")
    digest = hmac.new(secret, label.encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:TOKEN_HEX_CHARS]
