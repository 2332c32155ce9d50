"""How hard and how long does a chaos run push? The full and the short (CI) profiles.

Timings are the product's settings scaled down (as in the integration tests), so a slot boots
in seconds; the faults themselves are real: SIGKILL, a stopped server, failing HTTP calls.
"""

from __future__ import annotations

from dataclasses import dataclass

SETTINGS: dict[str, object] = {
    "poll_active_ms": 300,
    "poll_idle_ms": 1000,
    "keepalive_interval_ms": 300,
    "keepalive_timeout_ms": 500,
    "keepalive_max_failures": 3,
    "token_cache_ms": 60_000,
    "readiness_initial_s": 0.3,
    "readiness_max_s": 1.0,
    "readiness_timeout_s": 20,
    "provision_timeout_s": 60,
    "fatal_grace_s": 1.0,
    "retry_backoff_initial_s": 0.5,
    "retry_backoff_max_s": 2.0,
    "tcp_timeout_s": 1.0,
    "http_timeout_s": 2.0,
    "vast_calls_per_second": 50,
    "vast_pacing_scale": 0,
    "vast_timeout_s": 2.0,
    "min_direct_ports": 2,
    "min_inet_down": 0,
    "min_reliability": 0,
    "max_dph": 5,
    "log_level": "INFO",
}
"""Worker settings (as environment variables) and the slot config of every chaos pool."""


@dataclass(frozen=True)
class Profile:
    name: str
    kills: int
    kill_delay: tuple[float, float]
    """Seconds a fresh worker runs before its SIGKILL (it needs about 1 s to start polling)."""
    kill_pool: int
    restarts: int
    api_pool: int
    flap_cycles: int
    converge_s: float
    """How long a scenario may take to settle after its last fault before that is a violation."""
    drain: bool = True
    """End with the drain scenario (every pool drained, nothing left billing)."""
    failover: bool = True
    """Run the two-worker failover scenario (about 2 minutes: it waits out a heartbeat timeout)."""
    sim_speed: float = 4.0
    """The simulator boots an instance in 7 s / speed."""
    api_failure: float = 0.30
    seed: int = 7


FULL = Profile(
    name="full",
    kills=100,
    kill_delay=(0.5, 4.0),
    kill_pool=3,
    restarts=3,
    api_pool=4,
    flap_cycles=4,
    converge_s=240,
)
SHORT = Profile(
    name="short",
    kills=3,
    kill_delay=(0.5, 2.0),
    kill_pool=2,
    restarts=1,
    api_pool=2,
    flap_cycles=2,
    converge_s=100,
    drain=False,
    failover=False,
)
