"""What does the simulator report about itself to tests and chaos scripts?

These are snapshots (never live objects) and carry no secret: no API key, no portal token.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class CallRecord(BaseModel):
    """One API call, rejected ones included. `path` has no query string (it may hold a key)."""

    model_config = ConfigDict(frozen=True)

    method: str
    path: str
    endpoint_key: str
    status: int
    at: float  # epoch seconds when the call arrived


class InstanceInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    offer_id: int
    machine_id: int
    label: str | None
    image: str
    actual_status: str | None
    intended_status: str | None
    cur_state: str | None
    next_state: str | None
    status_msg: str | None
    destroyed: bool
    created_at: float  # epoch seconds
    destroyed_at: float | None
    comfy_mode: str
    comfy_ready: bool
    host_ports: dict[str, int]  # e.g. {"8188/tcp": 41234}, once the container runs
    faults: list[str]
    dph_now: float = 0.0
    """$/h billed now: `dph_total` while the GPU runs, the disk alone while stopped or not
    running yet, 0 once destroyed."""
    spent: float = 0.0
    """Dollars billed since the create, over simulated time (`speed` hours per real hour)."""
