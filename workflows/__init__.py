"""Workflow code only: deterministic, no I/O. `WORKFLOWS` is what a worker registers."""

from workflows.slot import WarmSlotWorkflow

WORKFLOWS: list[type] = [WarmSlotWorkflow]

__all__ = ["WORKFLOWS", "WarmSlotWorkflow"]
