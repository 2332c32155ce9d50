"""How fast does a fatal line in the provisioning log get the instance destroyed?

Measures: a real OpenSSH sshd on loopback (the test fixture in `tests/sshd.py`) serves a log
file; the simulator reports that sshd as its instances' SSH endpoint, and ComfyUI never comes
up, so each slot waits in PROBING with its log collector running. The bench then appends a
"CUDA error" line and times until the simulator records the slot's destroy call, --rounds
times, at the collector's poll interval --poll (the default setting is 2 s).

    .venv/bin/python bench/fatal_log_to_destroy.py [--poll 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

from harness import ROOT, dev_server, print_table, run, summary

sys.path.insert(0, str(ROOT))  # the sshd fixture and the stack helpers live in tests/

from tests.integration.conftest import FAST, FAST_SIM, sim_secrets, start_stack  # noqa: E402
from tests.sshd import running_sshd  # noqa: E402
from vastsim import Fault, Simulator  # noqa: E402
from warmpool.clients import slot as slot_client  # noqa: E402
from warmpool.logging import configure_logging  # noqa: E402
from warmpool.models import SlotState  # noqa: E402
from warmpool.settings import Settings  # noqa: E402

FATAL_LINE = "RuntimeError: CUDA error: device-side assert triggered\n"


async def destroyed(sim: Simulator, instance_id: int) -> None:
    """Return once the simulator has recorded the destroy (polled: it has no event for it)."""
    while not any(i.id == instance_id and i.destroyed for i in sim.instances()):  # noqa: ASYNC110
        await asyncio.sleep(0.005)


async def main(poll: float, rounds: int) -> None:
    configure_logging(json=False, level="WARNING", secret_values=lambda: [])
    seconds: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, running_sshd(Path(tmp)) as sshd:
        log = Path(tmp) / "provisioning.log"
        sim_config = FAST_SIM.model_copy(update={"ssh_host": sshd.host, "ssh_port": sshd.port})
        async with dev_server() as env, Simulator(sim_config) as sim, AsyncExitStack() as exits:
            settings = Settings(
                **{**FAST, "readiness_timeout_s": 300},
                ssh_logs=True,
                ssh_user=sshd.username,
                ssh_log_paths=[str(log)],
                ssh_poll_interval_s=poll,
            )
            secrets = sim_secrets(sim, WARMPOOL_SSH_KEY=sshd.client_key_pem)
            stack = await start_stack(exits, env, sim, settings, secrets)
            for index in range(rounds):
                log.write_text("booting\n")
                sim.add_fault(Fault(kind="comfy_never_ready", count=1))
                handle = await stack.start_slot(index=index)
                while True:  # the collector has delivered the first line: it is following
                    status = await slot_client.query_status(handle)
                    if status.state == SlotState.PROBING and "booting" in status.log_tail:
                        break
                    await asyncio.sleep(0.05)
                assert status.instance is not None
                with log.open("a") as file:
                    file.write(FATAL_LINE)
                started = time.monotonic()
                await destroyed(sim, status.instance.id)
                seconds.append(time.monotonic() - started)
                log.write_text("")
                await slot_client.retire(handle, "benchmark over")
                await handle.result()
    print(f"fatal log line -> destroy call (ssh poll {poll:g} s, {rounds} rounds, seconds)")
    print_table(["poll", "destroy after"], [[f"{poll:g} s", summary(seconds)]])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poll", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    run(main(args.poll, args.rounds))
