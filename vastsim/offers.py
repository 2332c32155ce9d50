"""Which machines can be rented, and which of them does a search return?

The catalogue is generated from the seed, so a test can rely on the same offers every run. It
deliberately holds bad offers too (small disks, few direct ports, slow links, unverified hosts),
because filtering them out is the client's job.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable, Mapping
from typing import Any

from vastsim.filters import QueryError, compare, matches, parse_filters

# name, per-GPU RAM (MB), typical $/h per GPU, compute capability x100
_GPUS = [
    ("RTX 4090", 24564, 0.40, 890),
    ("RTX 3090", 24576, 0.22, 860),
    ("RTX A5000", 24564, 0.25, 860),
    ("RTX A6000", 49140, 0.50, 860),
    ("RTX 4080", 16376, 0.28, 890),
    ("A100 PCIE", 40960, 0.85, 800),
    ("H100 SXM", 81559, 1.30, 900),
    ("Tesla T4", 15360, 0.15, 750),
]
_GPU_WEIGHTS = [6, 5, 3, 2, 2, 1, 1, 1]
_GEOLOCATIONS = ["Texas, US", "Quebec, CA", "Oslo, NO", "Bavaria, DE", "Tokyo, JP", "Ohio, US"]
_DISKS = [50, 100, 200, 240, 250, 300, 500, 750, 1000]
_DISK_WEIGHTS = [1, 1, 1, 1, 2, 3, 3, 1, 2]
_PORT_COUNTS = [1, 4, 7, 8, 16, 64, 100, 500]
_PORT_WEIGHTS = [1, 1, 1, 1, 2, 3, 3, 2]
_QUERY_KEYS = frozenset({"order", "limit", "type", "allocated_storage"})


def catalogue(count: int, seed: int) -> dict[int, dict[str, Any]]:
    """`count` offers keyed by id. Every 9th offer shares the previous offer's machine."""
    rng = random.Random(seed)
    offers: dict[int, dict[str, Any]] = {}
    offer_id = 4_000_000 + rng.randrange(1_000_000)
    machine_id = 10_000 + rng.randrange(10_000)
    host_id = 100_000 + rng.randrange(100_000)
    for index in range(count):
        offer_id += rng.randint(1, 997)
        if index % 9 != 8:
            machine_id += rng.randint(1, 97)
            host_id += rng.randint(1, 997)
        offers[offer_id] = _offer(rng, offer_id, machine_id, host_id)
    return offers


def _offer(rng: random.Random, offer_id: int, machine_id: int, host_id: int) -> dict[str, Any]:
    gpu_name, gpu_ram, gpu_price, compute_cap = rng.choices(_GPUS, _GPU_WEIGHTS)[0]
    num_gpus = rng.choices([1, 2, 4], [8, 2, 1])[0]
    dph_total = round(min(1.5, max(0.15, gpu_price * num_gpus * rng.uniform(0.8, 1.3))), 4)
    reliability = round(0.999 - rng.random() ** 2 * 0.099, 4)
    cpu_cores = rng.choice([8, 16, 32, 64])
    return {
        "id": offer_id,
        "machine_id": machine_id,
        "host_id": host_id,
        "gpu_name": gpu_name,
        "num_gpus": num_gpus,
        "gpu_ram": gpu_ram,
        "gpu_total_ram": gpu_ram * num_gpus,
        "cpu_cores": None if rng.random() < 0.1 else cpu_cores,
        "cpu_cores_effective": float(cpu_cores * num_gpus) / 4,
        "cpu_ram": rng.choice([32, 64, 128, 256]) * 1000,
        "disk_space": float(rng.choices(_DISKS, _DISK_WEIGHTS)[0]),
        "dph_base": round(dph_total * 0.9, 4),
        "dph_total": dph_total,
        "min_bid": round(dph_total * 0.5, 4),
        "storage_cost": round(rng.uniform(0.1, 0.3), 3),
        "inet_down": round(rng.uniform(100, 2000), 1),
        "inet_up": round(rng.uniform(50, 1500), 1),
        "reliability": reliability,
        "reliability2": reliability,
        "score": round(reliability * 100 / dph_total, 2),
        "direct_port_count": rng.choices(_PORT_COUNTS, _PORT_WEIGHTS)[0],
        "public_ipaddr": "127.0.0.1",
        "static_ip": rng.random() < 0.5,
        "geolocation": rng.choice(_GEOLOCATIONS),
        "datacenter": rng.random() < 0.3,
        "compute_cap": compute_cap,
        "cuda_max_good": 12.8,
        "duration": float(rng.randint(3, 90) * 86400),
        "verification": "verified" if rng.random() < 0.85 else "unverified",
        "rentable": rng.random() < 0.95,
        "rented": False,
        "external": rng.random() < 0.05,
        "is_bid": False,
    }


def search(offers: Iterable[Mapping[str, Any]], query: Any) -> list[dict[str, Any]]:
    """The offers a `POST /bundles/` body selects, ordered and limited as it asks."""
    if not isinstance(query, dict):
        raise QueryError("the query must be a JSON object")
    rows = [{**offer, "verified": offer["verification"] == "verified"} for offer in offers]
    known = set(rows[0]) if rows else set()
    conditions = {k: v for k, v in query.items() if k not in _QUERY_KEYS}
    for name in conditions:
        if rows and name not in known:
            raise QueryError(f"unknown search field {name!r}")
    selected = [row for row in rows if matches(row, parse_filters(conditions))]
    order = _parse_order(query.get("order", [["score", "desc"]]))
    selected.sort(key=functools.cmp_to_key(functools.partial(compare, order)))
    limit = query.get("limit")
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise QueryError("limit must be a non-negative integer")
        selected = selected[:limit]
    for row in selected:
        del row["verified"]
    return selected


def _parse_order(order: Any) -> list[tuple[str, bool]]:
    """[[field, "asc"|"desc"], ...] as (field, descending) pairs."""
    if not isinstance(order, list):
        raise QueryError("order must be a list of [field, 'asc'|'desc']")
    parsed = []
    for item in order:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or item[1] not in ("asc", "desc")
        ):
            raise QueryError("order must be a list of [field, 'asc'|'desc']")
        parsed.append((item[0], item[1] == "desc"))
    return parsed
