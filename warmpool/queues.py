"""Which task queues carry what? The provider task queues beside a worker's main queue.

Vast.ai activities go to provider task queues whose start rate the Temporal server limits across
every worker: search, create and destroy, the endpoints with the tightest per-key limits, each on
a queue of its own at one start per endpoint interval; every other provider call on
`<queue>-vast` (`vast_calls_per_second`), stop and start (park, resume) included: they are rare,
idempotent, and paced per client at their endpoint's 1.1 s. Shared by the activity options
(`workflows/options.py`), the activities' registration (`activities/__init__.py`) and the worker.
"""

from __future__ import annotations

from dataclasses import dataclass

VAST_QUEUE_SUFFIX = "-vast"


@dataclass(frozen=True)
class PacedQueue:
    """A provider task queue for one activity, started at most once per `endpoint`'s minimum
    interval (a key of `warmpool.vast.VAST_DEFAULT_MIN_INTERVALS`) across every worker."""

    suffix: str
    activity: str
    endpoint: str

    def name(self, task_queue: str) -> str:
        return f"{task_queue}{self.suffix}"


SEARCH_QUEUE = PacedQueue("-vast-search", "vast.search_offers", "bundles")
CREATE_QUEUE = PacedQueue("-vast-create", "vast.rent", "create")
DESTROY_QUEUE = PacedQueue("-vast-destroy", "vast.destroy", "destroy")
PACED_QUEUES = (SEARCH_QUEUE, CREATE_QUEUE, DESTROY_QUEUE)


def vast_queue(task_queue: str) -> str:
    """Every other provider call (observe, show, listings, stop, start): `vast_calls_per_second`."""
    return f"{task_queue}{VAST_QUEUE_SUFFIX}"


def provider_queues(task_queue: str) -> list[str]:
    """Every provider task queue of `task_queue`, the shared one first."""
    return [vast_queue(task_queue), *(q.name(task_queue) for q in PACED_QUEUES)]
