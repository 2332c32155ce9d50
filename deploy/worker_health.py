"""Is this container's worker polling its task queues? The `worker` healthcheck of docker-compose.

A worker process that is alive but cut off from Temporal (wrong address, expired TLS, a server
that never came back) must not look healthy: the check asks the server which identities poll
the main and the provider task queue, and passes only if this host's worker is among them on
both. The SDK's default identity is `<pid>@<hostname>`, and a container's hostname is its id.
Exit status 0 = healthy, 1 = not polling, 2 = cannot tell (settings or Temporal unreachable).
"""

from __future__ import annotations

import asyncio
import socket
import sys

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from warmpool.queues import vast_queue
from warmpool.settings import SettingsError, load_settings
from warmpool.temporal import connect


async def pollers(client: Client, queue: str, kind: TaskQueueType.ValueType) -> set[str]:
    answer = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
        )
    )
    return {p.identity for p in answer.pollers}


async def polling(client: Client, queue: str, host: str) -> bool:
    """Does a worker on `host` poll workflows on `queue` and activities on its provider queue?"""
    mine = f"@{host}"
    workflows = await pollers(client, queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW)
    provider = await pollers(client, vast_queue(queue), TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)
    return any(i.endswith(mine) for i in workflows) and any(i.endswith(mine) for i in provider)


async def check() -> int:
    try:
        settings = load_settings()
        client = await connect(settings)
    except (SettingsError, RuntimeError) as exc:
        print(f"worker_health: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    if await polling(client, settings.task_queue, socket.gethostname()):
        return 0
    print(f"worker_health: no worker of {socket.gethostname()} polls", file=sys.stderr)  # noqa: T201
    return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(check()))
