"""LeanSandbox: a run re-imports its own workflow module, never the other workflow modules; an
unsandboxed workflow re-imports nothing."""

from __future__ import annotations

from collections.abc import Sequence

from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from tests.helpers import new_queue
from tests.warmpool.sandbox_imports import EXECUTED
from tests.warmpool.sandboxed import First, Second
from warmpool.sandbox import LeanSandbox
from workflows import WORKFLOWS
from workflows.slot import WarmSlotWorkflow

FIRST, SECOND = First.__module__, Second.__module__


async def executions_for_three_runs_of_first(
    env: WorkflowEnvironment, runner: WorkflowRunner, workflows: Sequence[type]
) -> dict[str, int]:
    """How often each module ran while a worker validated both workflows and ran First 3x."""
    before = dict(EXECUTED)
    queue = new_queue()
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=list(workflows),
        workflow_runner=runner,
        max_cached_workflows=0,
    ):
        for n in range(3):
            result = await env.client.execute_workflow(
                First.run, id=f"first-{queue}-{n}", task_queue=queue
            )
            assert result == FIRST
    return {name: EXECUTED[name] - before.get(name, 0) for name in (FIRST, SECOND)}


async def test_a_run_reimports_its_own_module_but_not_its_siblings(
    ts_env: WorkflowEnvironment,
) -> None:
    lean = await executions_for_three_runs_of_first(
        ts_env, LeanSandbox([First, Second]), [First, Second]
    )
    default = await executions_for_three_runs_of_first(
        ts_env, SandboxedWorkflowRunner(), [First, Second]
    )
    # Validation builds one instance of each workflow; each run of First builds one more.
    assert lean == {FIRST: 1 + 3, SECOND: 1}, "each module runs only in its own sandboxes"
    assert default == {FIRST: 2 + 3, SECOND: 2 + 3}, "the default re-imports every sibling"


async def test_an_unsandboxed_workflow_runs_on_the_host_module_while_its_sibling_is_sandboxed(
    ts_env: WorkflowEnvironment,
) -> None:
    runs = await executions_for_three_runs_of_first(
        ts_env, LeanSandbox([First, Second], unsandboxed=[First]), [First, Second]
    )
    assert runs == {FIRST: 0, SECOND: 1}, "First never re-imported; Second still validated alone"


def test_the_workers_slot_sandbox_takes_the_other_workflow_modules_from_the_host() -> None:
    passed = LeanSandbox(WORKFLOWS).restrictions_for(WarmSlotWorkflow).passthrough_modules
    others = {cls.__module__ for cls in WORKFLOWS} - {WarmSlotWorkflow.__module__}
    assert others and others <= passed
    assert WarmSlotWorkflow.__module__ not in passed
