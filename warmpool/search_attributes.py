"""Which custom search attributes does the product register? Names others rely on (DESIGN.md)."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

POOL_NAME = SearchAttributeKey.for_keyword("WarmPoolName")
SLOT_STATE = SearchAttributeKey.for_keyword("WarmPoolSlotState")
INSTANCE_ID = SearchAttributeKey.for_int("WarmPoolInstanceId")
ENV_VERSION = SearchAttributeKey.for_keyword("WarmPoolEnvVersion")
"""The studio environment's version a slot runs ("none" without one): rollouts in the Web UI."""

ALL = (POOL_NAME, SLOT_STATE, INSTANCE_ID, ENV_VERSION)


def dev_server_flags() -> list[str]:
    """`temporal server start-dev` flags registering every attribute."""
    types = {"KEYWORD": "Keyword", "INT": "Int"}
    flags: list[str] = []
    for key in ALL:
        flags += ["--search-attribute", f"{key.name}={types[key.indexed_value_type.name]}"]
    return flags
