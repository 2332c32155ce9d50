"""Which processes does a chaos run kill and restart, and how? Dev server, simulator, workers.

Every process is real and separate: `temporal server start-dev` on an SQLite file (so a restart
keeps every workflow), `python -m vastsim` (driven through its /_sim control API),
`python worker.py` with the settings in its environment, exactly as an operator runs it, and
(for the scenarios that lease through it) `python -m warmpool.gateway`. This process only drives
them: it starts pools and leases through Temporal or the gateway and reads the simulator.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from pydantic import AliasChoices
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import WorkflowAlreadyStartedError

from warmpool import search_attributes as sa
from warmpool.codec import data_converter
from warmpool.devserver import dev_server_command
from warmpool.labels import pool_workflow_id
from warmpool.models import PoolConfig, PoolInput, ScalingPolicy
from warmpool.names import Pool
from warmpool.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
INSTANCE_SECRET = "chaos-instance-secret"
READY_LINE = "worker running on task queues"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def env_name(field: str) -> str:
    """The environment variable a Settings field is read from (its first alias, or prefixed)."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"WARMPOOL_{field.upper()}"


def settings_env(values: Mapping[str, object]) -> dict[str, str]:
    return {env_name(k): ",".join(v) if isinstance(v, list) else str(v) for k, v in values.items()}


async def wait_until(check: Any, within: float, what: str, step: float = 0.1) -> None:
    """Poll a sync or async predicate until it holds; TimeoutError names `what`."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {within:.0f}s")
        await asyncio.sleep(step)


class Process:
    """A child process in its own session, logging to a file."""

    def __init__(self, name: str, args: list[str], log: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.args = args
        self.log = log
        self.env = dict(env)
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, stdout: int | None = None) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdout=stdout if stdout is not None else log,
                stderr=log,
                env=self.env,
                cwd=self.log.parent,
                start_new_session=True,
            )
        return self.proc

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, signum: int) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signum)

    async def wait(self, within: float) -> bool:
        """True when the process has exited within `within` seconds."""
        try:
            await wait_until(lambda: not self.alive, within, f"{self.name} still running")
        except TimeoutError:
            return False
        return True

    async def stop(self, signum: int = signal.SIGTERM, within: float = 20) -> None:
        self.send(signum)
        if not await self.wait(within) and self.proc is not None:
            self.proc.kill()
            await self.wait(5)


class DevServer(Process):
    """`temporal server start-dev` on an SQLite file: stop and start keep every workflow."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.port = port
        self.db = workdir / "temporal.sqlite"
        super().__init__(
            "temporal",
            dev_server_command(port, self.db),
            workdir / "temporal.log",
            os.environ,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, within: float = 60) -> None:
        self.spawn()

        async def answers() -> bool:
            if not self.alive:
                raise RuntimeError(f"the dev server exited; see {self.log}")
            try:
                client = await Client.connect(self.address)
                await client.count_workflows()
            except Exception:  # not up yet
                return False
            return True

        await wait_until(answers, within, "the dev server does not answer", step=0.3)


class Simulator(Process):
    """`python -m vastsim` and its control API."""

    def __init__(self, workdir: Path, *, speed: float, offers: int, seed: int) -> None:
        super().__init__(
            "vastsim",
            [
                sys.executable,
                "-m",
                "vastsim",
                "--speed",
                str(speed),
                "--offers",
                str(offers),
                "--seed",
                str(seed),
            ],
            workdir / "vastsim.log",
            os.environ,
        )
        self.speed = speed
        self.urls: dict[str, str] = {}
        self._control: httpx.AsyncClient | None = None

    async def start(self, within: float = 30) -> None:
        proc = self.spawn(stdout=subprocess.PIPE)
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), within)
        self.urls = json.loads(line)
        self._control = httpx.AsyncClient(base_url=self.urls["control_url"], timeout=30)

    async def stop(self, signum: int = signal.SIGTERM, within: float = 20) -> None:
        if self._control is not None:
            await self._control.aclose()
        await super().stop(signum, within)

    @property
    def control(self) -> httpx.AsyncClient:
        assert self._control is not None, "simulator not started"
        return self._control

    async def state(self) -> dict[str, Any]:
        response = await self.control.get("/state")
        response.raise_for_status()
        state: dict[str, Any] = response.json()
        return state

    async def add_fault(self, **fault: object) -> str:
        response = await self.control.post("/faults", json=fault)
        response.raise_for_status()
        fault_id: str = response.json()["id"]
        return fault_id

    async def clear_faults(self) -> None:
        (await self.control.delete("/faults")).raise_for_status()

    async def comfy(self, instance_id: int, action: str) -> None:
        """`kill` or `revive` the ComfyUI of one instance."""
        response = await self.control.post(
            f"/instances/{instance_id}/comfy", json={"action": action}
        )
        response.raise_for_status()


class Worker(Process):
    """`python worker.py`; ready once it logs that it polls its task queues."""

    def __init__(self, workdir: Path, env: Mapping[str, str], number: int) -> None:
        super().__init__(
            f"worker-{number}",
            [sys.executable, str(ROOT / "worker.py")],
            workdir / "workers.log",
            env,
        )
        self._offset = self.log.stat().st_size if self.log.exists() else 0

    def ready(self) -> bool:
        with self.log.open("rb") as log:
            log.seek(self._offset)
            return READY_LINE.encode() in log.read()

    async def start(self, within: float = 60) -> None:
        self.spawn()

        def ready() -> bool:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited; see {self.log}")
            return self.ready()

        await wait_until(ready, within, f"{self.name} not polling")


class GatewayProcess(Process):
    """`python -m warmpool.gateway` on a free loopback port; ready once `/healthz` answers."""

    def __init__(self, workdir: Path, env: Mapping[str, str], port: int) -> None:
        super().__init__(
            "gateway", [sys.executable, "-m", "warmpool.gateway"], workdir / "gateway.log", env
        )
        self.url = f"http://127.0.0.1:{port}"

    async def start(self, within: float = 60) -> None:
        self.spawn()

        async def healthy() -> bool:
            if not self.alive:
                raise RuntimeError(f"the gateway exited; see {self.log}")
            try:
                async with httpx.AsyncClient(base_url=self.url, timeout=2) as http:
                    return (await http.get("/healthz")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(healthy, within, "the gateway does not answer", step=0.2)


def identity(worker: Process) -> str:
    """The Temporal identity a `worker.py` process reports (the SDK's default, pid@host)."""
    assert worker.proc is not None
    return f"{worker.proc.pid}@{socket.gethostname()}"


class ChaosStack:
    """One dev server, one simulator, one worker at a time (plus any a scenario adds for a
    while), and this process's client."""

    def __init__(
        self,
        workdir: Path,
        settings: Mapping[str, object],
        *,
        sim_speed: float,
        offers: int,
        seed: int,
        task_queue: str = "chaos",
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.values = dict(settings)
        self.settings = Settings(**{**self.values, "task_queue": task_queue})  # type: ignore[arg-type]
        self.server = DevServer(workdir, free_port())
        self.sim = Simulator(workdir, speed=sim_speed, offers=offers, seed=seed)
        self.worker: Worker | None = None
        self.workers_started = 0
        self.extra: list[Process] = []
        """More processes a scenario started (a second worker, a gateway): stopped at close."""
        self._client: Client | None = None

    async def start(self) -> None:
        await self.server.start()
        await self.sim.start()
        await self.start_worker()

    async def close(self) -> None:
        for process in self.extra:
            await process.stop()
        if self.worker is not None:
            await self.worker.stop()
        await self.sim.stop()
        await self.server.stop()

    def worker_env(self) -> dict[str, str]:
        urls = self.sim.urls
        return {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", str(self.workdir)),
            "TEMPORAL_ADDRESS": self.server.address,
            "WARMPOOL_TASK_QUEUE": self.settings.task_queue,
            "VASTAI_BASE_URL": urls["base_url"],
            "VASTAI_API_KEY": urls["api_key"],
            "HF_ENDPOINT": urls["hf_base_url"],
            "CIVITAI_BASE_URL": urls["civitai_base_url"],
            "WARMPOOL_INSTANCE_SECRET": INSTANCE_SECRET,
            "WARMPOOL_SECRETS_DIR": str(self.workdir / "secrets"),
            "WARMPOOL_LOG_JSON": "true",
            **settings_env(self.values),
        }

    async def start_worker(self) -> Worker:
        self.workers_started += 1
        self.worker = Worker(self.workdir, self.worker_env(), self.workers_started)
        await self.worker.start()
        return self.worker

    async def start_extra_worker(self) -> Worker:
        """One more `worker.py` on the same task queues, beside `self.worker`."""
        self.workers_started += 1
        worker = Worker(self.workdir, self.worker_env(), self.workers_started)
        self.extra.append(worker)
        await worker.start()
        return worker

    async def start_gateway(self, pools: list[str], admin_key: str) -> GatewayProcess:
        env = {
            **self.worker_env(),
            **settings_env({"gateway_pools": pools, "gateway_port": free_port()}),
            "ADMIN_API_KEY": admin_key,
        }
        gateway = GatewayProcess(self.workdir, env, int(env[env_name("gateway_port")]))
        self.extra.append(gateway)
        await gateway.start()
        return gateway

    async def stop_extra(self, process: Process, signum: int = signal.SIGTERM) -> None:
        await process.stop(signum)
        if process in self.extra:
            self.extra.remove(process)

    async def client(self) -> Client:
        if self._client is None:
            self._client = await Client.connect(
                self.server.address, data_converter=data_converter(None)
            )
        return self._client

    async def start_pool(
        self,
        pool: str,
        *,
        min_ready: int,
        max_slots: int,
        safe_mode_after: int = 5,
        buffer: int = 1,
    ) -> None:
        client = await self.client()
        config = PoolConfig(
            min_ready=min_ready,
            max_slots=max_slots,
            scaling=ScalingPolicy(buffer=buffer),
            safe_mode_after=safe_mode_after,
            default_lease=timedelta(minutes=30),
            slot=self.settings.slot_config(),
        )
        try:
            await client.start_workflow(
                Pool.WORKFLOW,
                PoolInput(pool=pool, config=config),
                id=pool_workflow_id(pool),
                task_queue=self.settings.task_queue,
                search_attributes=TypedSearchAttributes([SearchAttributePair(sa.POOL_NAME, pool)]),
            )
        except WorkflowAlreadyStartedError:
            pass
