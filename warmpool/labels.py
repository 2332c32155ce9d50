"""How a rental is named: the label that makes a rent idempotent and ties an instance to its slot.

A label is `wp.<pool>.<slot>.<attempt>` (short: dstack notes that 60 characters is safe on Vast.ai).
Every label of a pool starts with `wp.<pool>.`, which is what the orphan reaper matches.
"""

from __future__ import annotations

import re

from pydantic import BaseModel

LABEL_ROOT = "wp."
POOL_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,23}", re.ASCII)
_LABEL_RE = re.compile(r"wp\.([a-z0-9][a-z0-9-]{0,23})\.([0-9]{1,5})\.([0-9]{1,7})", re.ASCII)


class SlotLabel(BaseModel):
    pool: str
    slot: int
    attempt: int

    def __str__(self) -> str:
        return f"{LABEL_ROOT}{self.pool}.{self.slot}.{self.attempt}"


def validate_pool_name(name: str) -> str:
    """Pool names end up in labels, workflow ids and search attributes: keep them plain."""
    if not POOL_NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid pool name {name!r}: use 1-24 lower-case letters, digits or '-', "
            "starting with a letter or digit"
        )
    return name


def slot_label(pool: str, slot: int, attempt: int) -> str:
    return str(SlotLabel(pool=pool, slot=slot, attempt=attempt))


def pool_label_prefix(pool: str) -> str:
    return f"{LABEL_ROOT}{pool}."


def parse_label(label: str | None) -> SlotLabel | None:
    """The slot a label names, or None when the instance is not ours."""
    if not label:
        return None
    m = _LABEL_RE.fullmatch(label)
    if m is None:
        return None
    return SlotLabel(pool=m.group(1), slot=int(m.group(2)), attempt=int(m.group(3)))


def pool_workflow_id(pool: str) -> str:
    return f"warmpool/{pool}"


def slot_workflow_id(pool: str, slot: int) -> str:
    return f"warmpool/{pool}/slot-{slot}"
