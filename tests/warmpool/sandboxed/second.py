"""A workflow module that records each time it is executed."""

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from tests.warmpool.sandbox_imports import EXECUTED

EXECUTED[__name__] += 1


@workflow.defn
class Second:
    @workflow.run
    async def run(self) -> str:
        return __name__
