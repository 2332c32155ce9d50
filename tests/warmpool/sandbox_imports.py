"""Host-side record of which test workflow modules a sandbox executed (a passed-through module)."""

from collections import Counter

EXECUTED: Counter[str] = Counter()
