"""How does a worker sandbox a thousand slot workflows without a copy of every workflow module each?

Temporal's sandbox re-imports a workflow's module for every run it keeps cached, so that runs
share no module state. Importing `workflows.slot` runs the package's `__init__`, which imports
every workflow module (pool, reaper, token watch, and the pydantic models they define): that
was most of a cached slot's memory. `LeanSandbox` sandboxes each workflow exactly as the
default runner does, except that the *other* workflow modules come from the host: the running
workflow's own module is still re-imported and restricted, and the others' code never runs in
its sandbox (they are only imported by the package).

Workflows named in `unsandboxed` run without a sandbox. The worker does that for the pool
alone: every lease is one of its workflow tasks, and the sandbox's per-activation cost
(restricted imports and builtins swapped in and out, proxied modules) made a lease cost
3.0-5.0 ms more than a bare update round trip on the CI machine, against 0.9-1.8 ms without
it (`bench/lease_latency.py`, 2026-12-07). The pool is one run per pool
(not a thousand), keeps no module state, and its tests still run it in the default sandbox
(`tests/workflows/test_pool.py` uses a plain `Worker`), so a restricted call in it fails there.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from temporalio.worker import (
    UnsandboxedWorkflowRunner,
    WorkflowInstance,
    WorkflowInstanceDetails,
    WorkflowRunner,
)
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions
from temporalio.workflow import _Definition


class LeanSandbox(WorkflowRunner):
    """One default sandbox per workflow module, passing the other workflow modules through;
    no sandbox for the workflows in `unsandboxed`."""

    def __init__(
        self,
        workflows: Sequence[type],
        restrictions: SandboxRestrictions = SandboxRestrictions.default,
        *,
        unsandboxed: Collection[type] = (),
    ) -> None:
        modules = {cls.__module__ for cls in workflows}
        self._runners = {
            module: SandboxedWorkflowRunner(
                restrictions=restrictions.with_passthrough_modules(*(modules - {module}))
            )
            for module in modules
        }
        self._fallback = SandboxedWorkflowRunner(restrictions=restrictions)
        self._unsandboxed = set(unsandboxed)
        self._bare = UnsandboxedWorkflowRunner()

    def restrictions_for(self, workflow: type) -> SandboxRestrictions:
        return self._sandbox(workflow).restrictions

    def _sandbox(self, workflow: type) -> SandboxedWorkflowRunner:
        return self._runners.get(workflow.__module__, self._fallback)

    def _runner(self, workflow: type) -> WorkflowRunner:
        return self._bare if workflow in self._unsandboxed else self._sandbox(workflow)

    def prepare_workflow(self, defn: _Definition) -> None:
        self._runner(defn.cls).prepare_workflow(defn)

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return self._runner(det.defn.cls).create_instance(det)

    def set_worker_level_failure_exception_types(
        self, types: Sequence[type[BaseException]]
    ) -> None:
        for runner in (*self._runners.values(), self._fallback, self._bare):
            runner.set_worker_level_failure_exception_types(types)
