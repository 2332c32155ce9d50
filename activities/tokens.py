"""Are the service tokens valid? The preflight and periodic token checks, as an activity.

Results carry no token (only a fingerprint of which version was checked), so they may enter
workflow history and status.
"""

from __future__ import annotations

from temporalio import activity

from warmpool.models import Model
from warmpool.tokens import TokenCheck, TokenService, TokenValidator


class TokenCheckInput(Model):
    services: list[TokenService]
    force: bool = False


class TokenActivities:
    def __init__(self, validator: TokenValidator) -> None:
        self._validator = validator

    @activity.defn(name="tokens.check")
    async def check(self, input: TokenCheckInput) -> list[TokenCheck]:
        results = await self._validator.check_all(input.services, force=input.force)
        for result in results:
            log = activity.logger.info if result.ok else activity.logger.warning
            log("token check %s: ok=%s %s", result.service, result.ok, result.detail)
        return results
