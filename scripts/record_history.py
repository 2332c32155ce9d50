"""Which slot history does the replay test check? This script records it, from a real run.

    .venv/bin/python scripts/record_history.py [--out tests/histories/slot_lifecycle.json]

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
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from temporalio.client import WorkflowHandle  # noqa: E402
from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from tests.integration.conftest import FAST, FAST_SIM, INSTANCE_SECRET  # noqa: E402
from tests.sshd import Sshd, running_sshd  # noqa: E402
from vastsim import Fault, Simulator  # noqa: E402
from warmpool import search_attributes as sa  # noqa: E402
from warmpool.instance_token import derive_instance_token  # noqa: E402
from warmpool.labels import slot_workflow_id  # noqa: E402
from warmpool.logging import configure_logging  # noqa: E402
from warmpool.models import (  # noqa: E402
    Lease,
    LeaseEndRequest,
    SlotEvent,
    SlotInput,
    SlotState,
    SlotStatus,
)
from warmpool.secrets import EnvSecretStore, LayeredSecretStore, current_values  # noqa: E402
from warmpool.settings import Settings  # noqa: E402
from worker import serving  # noqa: E402

DEFAULT_OUT = ROOT / "tests" / "histories" / "slot_lifecycle.json"
POOL = "replay"
QUEUE = "replay-recording"
TIME_LIMIT_S = 120.0
PROVISIONING_LOG = ("pulling image vastai/comfyui", "downloading models", "starting ComfyUI")


async def wait_for(
    handle: WorkflowHandle[object, SlotStatus], predicate: Callable[[SlotStatus], bool]
) -> SlotStatus:
    """Poll the status query: the recording only moves on once the slot is where we expect."""
    while True:
        status: SlotStatus = await handle.query("status", result_type=SlotStatus)
        if predicate(status):
            return status
        await asyncio.sleep(0.1)


async def record() -> str:
    """Run the stack, record one lifecycle, shut everything down; return the history JSON."""
    with tempfile.TemporaryDirectory() as tmp, running_sshd(Path(tmp)) as sshd:
        log = Path(tmp) / "provisioning.log"
        log.write_text("".join(f"{line}\n" for line in PROVISIONING_LOG))
        return await record_with(sshd, log)


async def record_with(sshd: Sshd, log: Path) -> str:
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
                text = await run_lifecycle(env, sim, settings, [sshd.client_key_pem])
    finally:
        await env.shutdown()
    return text


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
        lambda s: s.state == SlotState.READY and s.counters.failures_by_reason == {"no_space": 1},
    )
    if first_ready.instance is None:
        raise SystemExit("record_history: a READY slot without an instance")
    await sim.kill_comfy(first_ready.instance.id)
    await wait_for(
        handle, lambda s: s.state == SlotState.READY and s.counters.keepalive_losses == 1
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
    text = (await handle.fetch_history()).to_json()
    labels = [f"wp.{POOL}.0.{attempt}" for attempt in range(1, final.attempt + 1)]
    tokens = [derive_instance_token(INSTANCE_SECRET.encode(), label) for label in labels]
    if any(secret in text for secret in [sim.api_key, INSTANCE_SECRET, *tokens, *secrets]):
        raise SystemExit("record_history: a secret reached the history; nothing written")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    args = parser.parse_args()
    text = asyncio.run(record())
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"wrote {out} ({len(text)} characters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
