"""Which histories does the replay test check? This script records them, from a real run.

    .venv/bin/python scripts/record_history.py [--out tests/histories/slot_lifecycle.json]
        [--pool-out tests/histories/pool_leases.json]

An in-process Temporal dev server, the simulator and a worker with the real activities run one
slot through its whole lifecycle: the first instance fails with "no space left on device" (destroyed
at once, replaced on another machine), the second reaches READY and then loses ComfyUI (keepalive
loss, replaced), the third reaches READY, is leased and released (the `end_lease` update answers
after the clean), and a retire ends the slot in DONE. Every instance's
logs are followed over SSH (a private sshd on loopback, as in the tests; `scripts/ensure-sshd.sh`
installs it), so the history holds `ssh_log` signals and collectors cancelled at READY. The
history is written as JSON for `tests/workflows/test_replay.py`, which replays it against the
current workflow code: re-record after an intended change to the workflow's commands, never to
hide an unintended one.

Then a pool of at most two slots runs on the same stack: a lease takes its one READY slot, a
waiting request (`request_lease`) is granted once the replacement is READY, the first lease is
renewed, both are released (each slot cleans), the surplus slot is parked (stopped) and resumed
when a third lease leaves no idle slot above use, and a drain ends the pool. The replay test
replays that history in Temporal's default sandbox, which the worker spares the pool.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from temporalio.client import WorkflowHandle, WorkflowHistory  # noqa: E402
from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from tests.integration.conftest import FAST, FAST_SIM, INSTANCE_SECRET  # noqa: E402
from tests.sshd import Sshd, running_sshd  # noqa: E402
from vastsim import Fault, Simulator  # noqa: E402
from warmpool import search_attributes as sa  # noqa: E402
from warmpool.clients import pool as pool_client  # noqa: E402
from warmpool.instance_token import derive_instance_token  # noqa: E402
from warmpool.labels import pool_workflow_id, slot_workflow_id  # noqa: E402
from warmpool.logging import configure_logging  # noqa: E402
from warmpool.models import (  # noqa: E402
    Lease,
    LeaseEndRequest,
    LeaseRequest,
    PoolConfig,
    PoolInput,
    PoolStatus,
    RenewRequest,
    ScalingPolicy,
    SlotEvent,
    SlotInput,
    SlotState,
    SlotStatus,
)
from warmpool.secrets import EnvSecretStore, LayeredSecretStore, current_values  # noqa: E402
from warmpool.settings import Settings  # noqa: E402
from worker import serving  # noqa: E402

DEFAULT_OUT = ROOT / "tests" / "histories" / "slot_lifecycle.json"
DEFAULT_POOL_OUT = ROOT / "tests" / "histories" / "pool_leases.json"
POOL = "replay"
POOL_OF_TWO = "replaypool"
QUEUE = "replay-recording"
TIME_LIMIT_S = 240.0
PROVISIONING_LOG = ("pulling image vastai/comfyui", "downloading models", "starting ComfyUI")


Status = TypeVar("Status", SlotStatus, PoolStatus)


async def wait_for(
    handle: WorkflowHandle[object, Status], kind: type[Status], predicate: Callable[[Status], bool]
) -> Status:
    """Poll the status query: the recording only moves on once the workflow is where we expect."""
    while True:
        status: Status = await handle.query("status", result_type=kind)
        if predicate(status):
            return status
        await asyncio.sleep(0.1)


class Recorded(NamedTuple):
    slot: str
    pool: str


async def record() -> Recorded:
    """Run the stack, record a slot's lifecycle and a pool's leases, shut everything down."""
    with tempfile.TemporaryDirectory() as tmp, running_sshd(Path(tmp)) as sshd:
        log = Path(tmp) / "provisioning.log"
        log.write_text("".join(f"{line}\n" for line in PROVISIONING_LOG))
        return await record_with(sshd, log)


async def record_with(sshd: Sshd, log: Path) -> Recorded:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        data_converter=pydantic_data_converter,
        search_attributes=sa.ALL,
    )
    sim_config = FAST_SIM.model_copy(update={"ssh_host": sshd.host, "ssh_port": sshd.port})
    try:
        async with Simulator(sim_config) as sim:
            secrets = LayeredSecretStore(
                [
                    EnvSecretStore(
                        {
                            "VASTAI_API_KEY": sim.api_key,
                            "WARMPOOL_INSTANCE_SECRET": INSTANCE_SECRET,
                            "WARMPOOL_SSH_KEY": sshd.client_key_pem,
                        }
                    )
                ]
            )
            configure_logging(level="WARNING", secret_values=lambda: current_values(secrets))
            settings = Settings(
                **FAST,
                ssh_logs=True,
                ssh_user=sshd.username,
                ssh_log_paths=[str(log)],
                ssh_poll_interval_s=0.05,
            )
            async with (
                serving(
                    env.client,
                    settings,
                    secrets,
                    sim,
                    task_queue=QUEUE,
                    heartbeat_throttle=timedelta(seconds=0.2),
                ),
                asyncio.timeout(TIME_LIMIT_S),
            ):
                secret_values = [sshd.client_key_pem]
                slot = await run_lifecycle(env, sim, settings, secret_values)
                pool = await run_pool(env, sim, settings, secret_values)
    finally:
        await env.shutdown()
    return Recorded(slot, pool)


async def run_lifecycle(
    env: WorkflowEnvironment, sim: Simulator, settings: Settings, secrets: list[str]
) -> str:
    """Drive one slot through failures, replacements and retire; return its history as JSON.

    The history is checked for secrets first (`secrets` and the ones derived here): it is
    committed to the repository.
    """
    sim.add_fault(Fault(kind="no_space", count=1))
    handle = await env.client.start_workflow(
        "WarmSlotWorkflow",
        SlotInput(pool=POOL, index=0, config=settings.slot_config()),
        id=slot_workflow_id(POOL, 0),
        task_queue=QUEUE,
        result_type=SlotStatus,
    )
    first_ready = await wait_for(
        handle,
        SlotStatus,
        lambda s: s.state == SlotState.READY and s.counters.failures_by_reason == {"no_space": 1},
    )
    if first_ready.instance is None:
        raise SystemExit("record_history: a READY slot without an instance")
    await sim.kill_comfy(first_ready.instance.id)
    await wait_for(
        handle,
        SlotStatus,
        lambda s: s.state == SlotState.READY and s.counters.keepalive_losses == 1,
    )
    now = datetime.now(UTC)
    lease = Lease(
        lease_id="recorded-lease",
        holder="recorder",
        request_id="recorded-request",
        granted_at=now,
        leased_until=now + timedelta(minutes=5),
    )
    leased = await handle.execute_update("assign_lease", lease, result_type=SlotEvent)
    if leased.state != SlotState.LEASED:
        raise SystemExit(f"record_history: the assigned slot is {leased.state}, not LEASED")
    cleaned = await handle.execute_update(
        "end_lease",
        LeaseEndRequest(lease_id=lease.lease_id, reason="released"),
        result_type=SlotEvent,
    )
    if cleaned.state != SlotState.READY:
        raise SystemExit(f"record_history: the released slot is {cleaned.state}, not READY")
    await handle.signal("retire", "recording over")
    final = await handle.result()
    if final.state != SlotState.DONE or sim.live_instances():
        raise SystemExit(f"record_history: the slot did not end cleanly: {final.state}")
    if final.log_tail.count(PROVISIONING_LOG[-1]) < 2:
        raise SystemExit("record_history: the SSH collector delivered too little; run it again")
    labels = [f"wp.{POOL}.0.{attempt}" for attempt in range(1, final.attempt + 1)]
    return without_secrets(await handle.fetch_history(), sim, labels, secrets)


def without_secrets(
    history: WorkflowHistory, sim: Simulator, labels: list[str], secrets: list[str]
) -> str:
    """The history as JSON, refused if any secret, or a portal token of `labels`, is in it."""
    text = history.to_json()
    tokens = [derive_instance_token(INSTANCE_SECRET.encode(), label) for label in labels]
    if any(secret in text for secret in [sim.api_key, INSTANCE_SECRET, *tokens, *secrets]):
        raise SystemExit("record_history: a secret reached the history; nothing written")
    return text


async def run_pool(
    env: WorkflowEnvironment, sim: Simulator, settings: Settings, secrets: list[str]
) -> str:
    """Lease, wait for capacity, renew, release and drain a pool of two slots; its history."""
    client = env.client
    policy = ScalingPolicy(
        buffer=1,
        stopped_target=1,
        park_after=timedelta(seconds=1),
        scale_down_delay=timedelta(seconds=30),
    )
    config = PoolConfig(min_ready=1, max_slots=2, scaling=policy, slot=settings.slot_config())
    handle = await client.start_workflow(
        "WarmPoolWorkflow",
        PoolInput(pool=POOL_OF_TWO, config=config),
        id=pool_workflow_id(POOL_OF_TWO),
        task_queue=QUEUE,
        result_type=PoolStatus,
    )
    await wait_for(handle, PoolStatus, lambda s: s.idle_ready == 1)
    first = await pool_client.acquire(
        client, POOL_OF_TWO, LeaseRequest(holder="recorder", request_id="recorded-first")
    )
    waited = await pool_client.acquire_waiting(
        client,
        POOL_OF_TWO,
        LeaseRequest(
            holder="recorder", request_id="recorded-waiting", wait_for=timedelta(seconds=60)
        ),
        poll_s=0.1,
    )
    await pool_client.renew(client, POOL_OF_TWO, RenewRequest(lease_id=first.lease_id))
    for grant in (first, waited):
        await pool_client.release(client, POOL_OF_TWO, grant.lease_id)
    # Both clean; the surplus slot is parked (stopped), then resumed for the next lease's buffer.
    await wait_for(handle, PoolStatus, lambda s: s.counts.get("STOPPED") == 1)
    third = await pool_client.acquire(
        client, POOL_OF_TWO, LeaseRequest(holder="recorder", request_id="recorded-third")
    )
    await wait_for(handle, PoolStatus, lambda s: s.idle_ready == 1 and "STOPPED" not in s.counts)
    await pool_client.release(client, POOL_OF_TWO, third.lease_id)
    await wait_for(handle, PoolStatus, lambda s: not any(v.cleaning for v in s.slots))
    await handle.signal("drain")
    final = await handle.result()
    if final.slots or final.granted_total != 3 or sim.live_instances():
        raise SystemExit(f"record_history: the pool did not end cleanly: {final.counts}")
    labels = [info.label for info in sim.instances() if info.label]
    return without_secrets(await handle.fetch_history(), sim, labels, secrets)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the slot's history")
    parser.add_argument(
        "--pool-out", type=Path, default=DEFAULT_POOL_OUT, help="the pool's history"
    )
    args = parser.parse_args()
    recorded = asyncio.run(record())
    for out, text in ((args.out, recorded.slot), (args.pool_out, recorded.pool)):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"wrote {out} ({len(text)} characters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
