"""How does a Vast.ai filter such as `{"gpu_ram": {"gte": 24000}}` decide on one row?

Shared by the offer search and the v1 instance list. Null never matches (as in SQL), except
an explicit `{"eq": null}`; a value of the wrong type does not match either.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

Filter = tuple[str, str, Any]


class QueryError(ValueError):
    """The query is malformed; the message names what is wrong (never a secret)."""


def _contains(value: Any, operand: Any) -> bool:
    return bool(value in operand)


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "in": _contains,
    "notin": lambda value, operand: not _contains(value, operand),
}


def parse_filters(fields: Mapping[str, Any]) -> list[Filter]:
    """`{"field": {"op": value}, ...}` as a list of (field, op, value), checked for shape."""
    parsed: list[Filter] = []
    for name, condition in fields.items():
        if not isinstance(condition, dict) or not condition:
            raise QueryError(f"filter for {name!r} must be an object such as {{'eq': value}}")
        for op, operand in condition.items():
            if op not in _OPS:
                raise QueryError(f"unknown operator {op!r} for {name!r}")
            if op in ("in", "notin") and not isinstance(operand, list):
                raise QueryError(f"operator {op!r} for {name!r} needs a list")
            parsed.append((name, op, operand))
    return parsed


def matches(row: Mapping[str, Any], filters: list[Filter]) -> bool:
    return all(_holds(row.get(name), op, operand) for name, op, operand in filters)


def _holds(value: Any, op: str, operand: Any) -> bool:
    if value is None:
        return op == "eq" and operand is None
    try:
        return _OPS[op](value, operand)
    except TypeError:
        return False


def compare(order: list[tuple[str, bool]], a: Mapping[str, Any], b: Mapping[str, Any]) -> int:
    """Order rows by (field, descending) pairs; nulls sort last whatever the direction."""
    for name, descending in order:
        x, y = a.get(name), b.get(name)
        if x == y:
            continue
        if x is None or y is None:
            return 1 if x is None else -1
        try:
            result = -1 if x < y else 1
        except TypeError:
            continue
        return -result if descending else result
    return 0
