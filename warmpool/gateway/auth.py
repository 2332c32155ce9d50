"""Who may use the admin endpoints? Whoever sends the admin key in `X-Admin-Key`.

`X-Admin-API-Key` is accepted too (the seeds' clients send either; header names are case
insensitive). The key is the secret `admin`: the file store first (a rotation needs no
restart), then `ADMIN_API_KEY`. It is compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader

from warmpool.gateway.context import Gateway, get_gateway
from warmpool.gateway.errors import ApiError
from warmpool.secrets import SecretName

HEADER = "X-Admin-Key"
ALT_HEADER = "X-Admin-API-Key"

_primary = APIKeyHeader(name=HEADER, scheme_name="AdminKey", auto_error=False)
_alternative = APIKeyHeader(name=ALT_HEADER, scheme_name="AdminApiKey", auto_error=False)


def check_admin_key(expected: str | None, supplied: str | None, header: str) -> None:
    if not expected:
        raise ApiError(
            503,
            "admin_disabled",
            "no admin key is configured: set ADMIN_API_KEY (or the `admin` file in "
            "WARMPOOL_SECRETS_DIR)",
        )
    if not supplied:
        raise ApiError(
            401,
            "unauthorized",
            f"missing admin key: send it in the {HEADER} header ({ALT_HEADER} is accepted too)",
        )
    if not hmac.compare_digest(supplied.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", f"wrong admin key in the {header} header")


async def require_admin(
    gateway: Annotated[Gateway, Depends(get_gateway)],
    primary: Annotated[str | None, Security(_primary)],
    alternative: Annotated[str | None, Security(_alternative)],
) -> None:
    """Dependency of every admin route."""
    supplied, header = (primary, HEADER) if primary else (alternative, ALT_HEADER)
    check_admin_key(gateway.secrets.get(SecretName.ADMIN), supplied, header)
