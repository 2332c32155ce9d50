"""Which page of instances does `GET /api/v1/instances/` answer, and how does its cursor work?

Query values are URL-encoded JSON. The cursor (`next_token` / `after_token`) is a keyset over
the sort columns plus the id, so instances created or destroyed between pages never make the
walk skip or repeat a survivor.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from vastsim.filters import QueryError, compare, matches, parse_filters
from vastsim.instance import STORED_COLUMNS

T = TypeVar("T")
MAX_LIMIT = 25


class ListError(Exception):
    def __init__(self, error: str, msg: str) -> None:
        super().__init__(msg)
        self.error = error
        self.msg = msg


def page(
    items: Sequence[T],
    query: Mapping[str, str],
    row: Callable[[T], dict[str, Any]],
    view: Callable[[T], dict[str, Any]],
) -> dict[str, Any]:
    """The v1 answer for `items` (every listed instance) under the request's query values.

    `row` gives an item's stored columns (cheap), `view` its full object: only the page's
    items pay for a full view, unless the order needs a computed column.
    """
    try:
        limit = _limit(_param(query, "limit"))
        order = _order(_param(query, "order_by"))
        filters = parse_filters(_param(query, "select_filters") or {})
        columns = _param(query, "select_cols")
    except QueryError as exc:
        raise ListError("invalid_request", str(exc)) from exc
    for name, _, _ in filters:
        if name not in STORED_COLUMNS:
            raise ListError("invalid_request", f"cannot filter on computed column {name!r}")
    keyed = view if any(col not in STORED_COLUMNS for col, _ in order) else row
    selected: list[tuple[dict[str, Any], T]] = []
    for item in items:
        key = keyed(item)
        if matches(key, filters):
            selected.append((key, item))

    def by_order(a: tuple[dict[str, Any], T], b: tuple[dict[str, Any], T]) -> int:
        return compare(order, a[0], b[0])

    selected.sort(key=functools.cmp_to_key(by_order))
    total = len(selected)
    label_counts = Counter(key["label"] for key, _ in selected if key["label"] is not None)
    token = query.get("after_token")
    if token:
        anchor = _decode_token(token, order)
        selected = [(key, item) for key, item in selected if compare(order, key, anchor) > 0]
    chosen = selected[:limit]
    next_token = _encode_token(chosen[-1][0], order) if len(selected) > limit else None
    instances = [view(item) for _, item in chosen]
    if isinstance(columns, list) and columns and "*" not in columns:
        instances = [{k: obj.get(k) for k in ["id", *columns]} for obj in instances]
    return {
        "success": True,
        "instances_found": len(instances),
        "total_instances": total,
        "label_counts": dict(label_counts),
        "next_token": next_token,
        "instances": instances,
    }


def _param(query: Mapping[str, str], name: str) -> Any:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise QueryError(f"{name} is not valid JSON") from exc


def _limit(value: Any) -> int:
    if value is None:
        return MAX_LIMIT
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise QueryError("limit must be a positive integer")
    return min(value, MAX_LIMIT)


def _order(value: Any) -> list[tuple[str, bool]]:
    """order_by as (column, descending) pairs, the id last as the tie-breaker."""
    items = value if value is not None else [{"col": "id", "dir": "asc"}]
    if not isinstance(items, list):
        raise QueryError("order_by must be a list of {col, dir}")
    order: list[tuple[str, bool]] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("col"), str):
            raise QueryError("order_by must be a list of {col, dir}")
        direction = item.get("dir", "asc")
        if direction not in ("asc", "desc"):
            raise QueryError("order_by dir must be asc or desc")
        order.append((item["col"], direction == "desc"))
    if all(col != "id" for col, _ in order):
        order.append(("id", False))
    return order


def _encode_token(row: Mapping[str, Any], order: list[tuple[str, bool]]) -> str:
    key = json.dumps({"k": [row.get(col) for col, _ in order]}, separators=(",", ":"))
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _decode_token(token: str, order: list[tuple[str, bool]]) -> dict[str, Any]:
    try:
        if token.startswith('"'):  # sent JSON-encoded like the other values
            token = json.loads(token)
        padded = token + "=" * (-len(token) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))["k"]
    except (ValueError, TypeError, KeyError, binascii.Error) as exc:
        raise ListError("invalid_token", "after_token is not a valid cursor") from exc
    if not isinstance(key, list) or len(key) != len(order):
        raise ListError("invalid_token", "after_token does not match this order_by")
    return {col: value for (col, _), value in zip(order, key, strict=True)}
