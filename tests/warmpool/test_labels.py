"""Rental labels and workflow ids: the round trip the adopt-by-label and the reaper rely on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmpool.labels import (
    SlotLabel,
    parse_label,
    pool_label_prefix,
    pool_workflow_id,
    slot_label,
    slot_workflow_id,
    validate_pool_name,
)

pool_names = st.from_regex(r"[a-z0-9][a-z0-9-]{0,23}", fullmatch=True)


@given(pool=pool_names, slot=st.integers(0, 99_999), attempt=st.integers(0, 9_999_999))
def test_label_round_trip(pool: str, slot: int, attempt: int) -> None:
    label = slot_label(pool, slot, attempt)
    assert parse_label(label) == SlotLabel(pool=pool, slot=slot, attempt=attempt)
    assert label.startswith(pool_label_prefix(pool))
    assert len(label) <= 60, "Vast.ai labels longer than 60 characters are not safe"


def test_label_format_is_stable() -> None:
    assert slot_label("studio", 3, 12) == "wp.studio.3.12"
    assert pool_workflow_id("studio") == "warmpool/studio"
    assert slot_workflow_id("studio", 3) == "warmpool/studio/slot-3"


@pytest.mark.parametrize(
    "label",
    [
        None,
        "",
        "my-own-instance",
        "wp.studio.3",
        "wp.studio.3.12.extra",
        "wp.Studio.3.12",
        "wp.studio.x.12",
        "xwp.studio.3.12",
        "wp.studio.3.12 ",
        "wp.studio.3.12\n",
        "wp.studio.123456.1",
    ],
)
def test_labels_that_are_not_ours_parse_to_none(label: str | None) -> None:
    assert parse_label(label) is None


def test_pool_prefix_does_not_match_a_longer_pool_name() -> None:
    """The reaper of pool "a" must never touch the instances of pool "ab"."""
    assert not slot_label("ab", 0, 1).startswith(pool_label_prefix("a"))


@pytest.mark.parametrize("name", ["a", "studio", "gpu-4090", "0pool", "a" * 24])
def test_valid_pool_names(name: str) -> None:
    assert validate_pool_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Bad Name", "Studio", "-lead", "a_b", "a.b", "a/b", "a" * 25, "pool\n"]
)
def test_invalid_pool_names_are_rejected_with_the_name(name: str) -> None:
    with pytest.raises(ValueError, match="invalid pool name") as info:
        validate_pool_name(name)
    assert repr(name) in str(info.value)
