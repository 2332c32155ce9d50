"""Workflow code only: deterministic, no I/O. `WORKFLOWS` is what a worker registers."""

from workflows.pool import WarmPoolWorkflow
from workflows.reaper import OrphanReaperWorkflow
from workflows.slot import WarmSlotWorkflow
from workflows.token_watch import TokenWatchWorkflow

WORKFLOWS: list[type] = [
    WarmPoolWorkflow,
    WarmSlotWorkflow,
    TokenWatchWorkflow,
    OrphanReaperWorkflow,
]

__all__ = [
    "WORKFLOWS",
    "OrphanReaperWorkflow",
    "TokenWatchWorkflow",
    "WarmPoolWorkflow",
    "WarmSlotWorkflow",
]
