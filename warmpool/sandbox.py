"""How does a worker sandbox a thousand slot workflows without a copy of every workflow module each?

Temporal's sandbox re-imports a workflow's module for every run it keeps cached, so that runs
share no module state. Importing `workflows.slot` runs the package's `__init__`, which imports
every workflow module (pool, reaper, token watch, and the pydantic models they define): that
was most of a cached slot's memory. `LeanSandbox` sandboxes each workflow exactly as the
default runner does, except that the *other* workflow modules come from the host: the running
workflow's own module is still re-imported and restricted, and the others' code never runs in
its sandbox (they are only imported by the package).
"""

from __future__ import annotations

from collections.abc import Sequence

from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions
from temporalio.workflow import _Definition


class LeanSandbox(WorkflowRunner):
    """One default sandbox per workflow module, passing the other workflow modules through."""

    def __init__(
        self,
        workflows: Sequence[type],
        restrictions: SandboxRestrictions = SandboxRestrictions.default,
    ) -> None:
        modules = {cls.__module__ for cls in workflows}
        self._runners = {
            module: SandboxedWorkflowRunner(
                restrictions=restrictions.with_passthrough_modules(*(modules - {module}))
            )
            for module in modules
        }
        self._fallback = SandboxedWorkflowRunner(restrictions=restrictions)

    def restrictions_for(self, workflow: type) -> SandboxRestrictions:
        return self._runner(workflow).restrictions

    def _runner(self, workflow: type) -> SandboxedWorkflowRunner:
        return self._runners.get(workflow.__module__, self._fallback)

    def prepare_workflow(self, defn: _Definition) -> None:
        self._runner(defn.cls).prepare_workflow(defn)

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return self._runner(det.defn.cls).create_instance(det)

    def set_worker_level_failure_exception_types(
        self, types: Sequence[type[BaseException]]
    ) -> None:
        for runner in (*self._runners.values(), self._fallback):
            runner.set_worker_level_failure_exception_types(types)
