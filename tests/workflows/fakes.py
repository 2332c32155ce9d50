"""A scripted provider behind the real activity names, for time-skipping workflow tests.

Each machine gets a scenario; an instance's provider status advances with every `observe`
call, so the workflow's own (skipped) timers drive the timeline. Real activities against the
simulator are tested in tests/integration.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.worker import Worker

from activities.comfy import CleanInput, ProbeInput, WarmupInput, WatchInput, WatchResult
from activities.slots import exclude_machine, message_slot
from activities.ssh import SshFollowInput, SshFollowResult
from activities.tokens import TokenCheckInput
from activities.vast import (
    DestroyResult,
    RentInput,
    RentResult,
    SearchInput,
    StateResult,
    exclude_failed_host,
    machines_to_exclude,
    refuse_excluded,
)
from warmpool.environment import EnvironmentCheckInput, EnvironmentReport
from warmpool.models import (
    CandidateReport,
    FailureReason,
    InstanceView,
    Observation,
    OfferSummary,
    PortReport,
    SshLogBatch,
)
from warmpool.names import Slot
from warmpool.queues import provider_queues
from warmpool.tokens import TokenCheck


@dataclass
class FakeInstance:
    id: int
    machine_id: int
    label: str
    scenario: str
    observes: int = 0
    destroyed: bool = False
    fatal_seen_at: int | None = None
    stopped: bool = False
    resuming: bool = False
    restarts: int = 0


@dataclass
class FakeCloud:
    """Machines 1..n, each with a scenario (default "ok")."""

    machines: int = 6
    scenarios: dict[int, str] = field(default_factory=dict)
    token_ok: bool = True
    rate_limited_rents: int = 0
    crash_after_create: bool = False
    observe_failures: int = 0
    """The next observes that fail as the provider's API does when it rate-limits."""
    key_rejected: bool = False
    """Every search fails with the provider's 401 (a revoked key)."""
    instances: dict[int, FakeInstance] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    creates_by_machine: Counter[int] = field(default_factory=Counter)
    next_id: int = 10_000_000
    kill_on_watch: set[int] = field(default_factory=set)
    """Instance ids whose next watch reports keepalive lost (e.g. while leased)."""
    move_on_watch: set[int] = field(default_factory=set)
    """Instance ids the provider now maps to another port: a watch on the old URL says so."""
    ssh_logs: dict[int, list[SshLogBatch]] = field(default_factory=dict)
    """Per machine: the `ssh_log` batches its collector signals (instance_id 0 = its own)."""
    ssh_fatal: dict[int, str] = field(default_factory=dict)
    """Per machine: the fatal line the collector returns after its batches."""
    ssh_inputs: list[SshFollowInput] = field(default_factory=list)
    env_checks: Counter[int] = field(default_factory=Counter)
    env_checks_until_complete: int = 2

    def scenario(self, machine: int) -> str:
        return self.scenarios.get(machine, "ok")

    def live(self) -> list[FakeInstance]:
        return [i for i in self.instances.values() if not i.destroyed]

    def activities(self) -> list[Callable[..., Any]]:
        return [
            self.check,
            self.search,
            self.rent,
            self.observe,
            self.destroy,
            self.stop,
            self.start,
            self.await_ready,
            self.validate_ports,
            self.watch,
            self.warmup,
            self.check_environment,
            self.clean,
            self.follow_logs,
            message_slot,  # real: these two only talk to Temporal
            exclude_machine,
        ]

    @activity.defn(name="tokens.check")
    async def check(self, input: TokenCheckInput) -> list[TokenCheck]:
        self.calls["tokens.check"] += 1
        return [
            TokenCheck(
                service=s,
                ok=self.token_ok,
                configured=True,
                detail="ok" if self.token_ok else "401 Invalid user key",
                checked_at=datetime.now(UTC),
                version="abcd1234",
            )
            for s in input.services
        ]

    @activity.defn(name="vast.search_offers")
    async def search(self, input: SearchInput) -> list[OfferSummary]:
        self.calls["vast.search_offers"] += 1
        if self.key_rejected:
            raise ApplicationError("401 Invalid user key", type="VastAuthError", non_retryable=True)
        excluded = await machines_to_exclude(input)
        busy = {i.machine_id for i in self.live()}
        # One offer at a time: the scenario's machine order stays the rent order.
        return [
            OfferSummary(id=100 + m, machine_id=m, dph_total=0.3 + m / 100, disk_space=300)
            for m in range(1, self.machines + 1)
            if m not in excluded and m not in busy
        ][:1]

    @activity.defn(name="vast.rent")
    async def rent(self, input: RentInput) -> RentResult:
        self.calls["vast.rent"] += 1
        for inst in self.live():
            if inst.label == input.label:
                return RentResult(instance_id=inst.id, adopted=True)
        if self.rate_limited_rents > 0:
            self.rate_limited_rents -= 1
            raise ApplicationError(
                "429 API requests too frequent",
                type="VastRateLimited",
                next_retry_delay=timedelta(seconds=1),
            )
        machine = input.offer_id - 100
        await refuse_excluded(input)  # before the check: no await between it and the create
        if any(i.machine_id == machine for i in self.live()):
            raise ApplicationError(
                "no_such_ask: offer already rented", type="VastOfferUnavailable", non_retryable=True
            )
        self.creates_by_machine[machine] += 1
        if self.scenario(machine) == "create_fails":
            await exclude_failed_host(input)  # as the real rent does
            raise ApplicationError(
                "create failed: success false", type="VastCreateFailed", non_retryable=True
            )
        self.next_id += 1
        self.instances[self.next_id] = FakeInstance(
            id=self.next_id,
            machine_id=machine,
            label=input.label,
            scenario=self.scenario(machine),
        )
        self.calls["create"] += 1
        if self.crash_after_create:
            self.crash_after_create = False
            raise ApplicationError("worker lost after create", type="TransportLost")
        return RentResult(instance_id=self.next_id, adopted=False)

    def _view(self, inst: FakeInstance) -> InstanceView:
        n = inst.observes
        status: str | None = None
        msg: str | None = None
        ports: dict[str, int] = {}
        intended = "running"
        if n >= 2:
            status = "loading"
        if n >= 3:
            status = "running"
            ports = {"8188/tcp": 40000 + inst.machine_id + 100 * inst.restarts}
        if inst.stopped and (not inst.resuming or inst.scenario == "gpu_taken" or n < 3):
            # parked; or resuming, which a taken GPU never finishes
            status, ports = "stopped", {}
            intended = "running" if inst.resuming else "stopped"
        elif inst.resuming:
            inst.stopped = inst.resuming = False
        match inst.scenario:
            case "no_space" if n >= 2:
                status, msg, ports = (
                    "loading",
                    "failed to register layer: no space left on device",
                    {},
                )
            case "load_failed" if n >= 2:
                status, ports = "load_failed", {}
            case "unknown_blip" if n == 2:
                status = "unknown"
            case "ports_late" if 3 <= n < 6:
                ports = {}
            case "stuck_loading" if n >= 2:
                status, ports = "loading", {}
            case _:
                pass
        return InstanceView(
            id=inst.id,
            label=inst.label,
            machine_id=inst.machine_id,
            actual_status=status,
            status_msg=msg,
            public_ip="127.0.0.1",
            ports=ports,
            cur_state="stopped" if status == "stopped" else "running",
            intended_status=intended,
            next_state=intended,
            dph_total=0.3,
            ssh_host="127.0.0.1" if self.ssh_logs else None,
            ssh_port=22 if self.ssh_logs else None,
        )

    @activity.defn(name="vast.observe")
    async def observe(self, instance_id: int) -> Observation:
        self.calls["vast.observe"] += 1
        if self.observe_failures > 0:
            self.observe_failures -= 1
            raise ApplicationError(
                "429 API requests too frequent",
                type="VastRateLimited",
                next_retry_delay=timedelta(milliseconds=20),
            )
        inst = self.instances.get(instance_id)
        if inst is None or inst.destroyed:
            return Observation(gone=True)
        inst.observes += 1
        return Observation(gone=False, instance=self._view(inst))

    @activity.defn(name="vast.destroy")
    async def destroy(self, instance_id: int) -> DestroyResult:
        self.calls["vast.destroy"] += 1
        inst = self.instances.get(instance_id)
        gone = inst is None or inst.destroyed
        if inst is not None:
            inst.destroyed = True
        return DestroyResult(instance_id=instance_id, confirmed=True, already_gone=gone)

    @activity.defn(name="vast.stop")
    async def stop(self, instance_id: int) -> StateResult:
        self.calls["vast.stop"] += 1
        inst = self.instances.get(instance_id)
        if inst is None or inst.destroyed:
            return StateResult(instance_id=instance_id, state="stopped", gone=True)
        inst.stopped, inst.resuming = True, False
        return StateResult(instance_id=instance_id, state="stopped")

    @activity.defn(name="vast.start")
    async def start(self, instance_id: int) -> StateResult:
        self.calls["vast.start"] += 1
        inst = self.instances.get(instance_id)
        if inst is None or inst.destroyed:
            return StateResult(instance_id=instance_id, state="running", gone=True)
        if inst.stopped and not inst.resuming:
            inst.resuming, inst.observes = True, 0
            inst.restarts += 1
        return StateResult(instance_id=instance_id, state="running")

    def _report(self, input: ProbeInput, outcome: str) -> PortReport:
        port = input.instance.ports.get("8188/tcp", 8188)
        ready = outcome == "ready"
        return PortReport(
            candidates=[
                CandidateReport(
                    name="mapped-8188",
                    host="127.0.0.1",
                    port=port,
                    tcp_ok=outcome != "timeout",
                    outcome=outcome,
                )
            ],
            url=f"http://127.0.0.1:{port}" if ready else None,
            firewall=outcome == "timeout",
        )

    @activity.defn(name="comfy.await_ready")
    async def await_ready(self, input: ProbeInput) -> PortReport:
        self.calls["comfy.await_ready"] += 1
        scenario = self.scenario(input.instance.machine_id or 0)
        if scenario == "never_ready":
            raise ApplicationError(
                "ComfyUI not ready",
                type="NotReady",
                category=ApplicationErrorCategory.BENIGN,
                next_retry_delay=timedelta(seconds=20),
            )
        if scenario == "firewall":
            raise ApplicationError(
                "all timed out",
                self._report(input, "timeout").model_dump(mode="json"),
                type="Firewall",
                non_retryable=True,
            )
        return self._report(input, "ready")

    @activity.defn(name="comfy.validate_ports")
    async def validate_ports(self, input: ProbeInput) -> PortReport:
        self.calls["comfy.validate_ports"] += 1
        return self._report(input, "ready")

    @activity.defn(name="comfy.warmup")
    async def warmup(self, input: WarmupInput) -> float:
        return 1.5

    @activity.defn(name="comfy.check_environment")
    async def check_environment(self, input: EnvironmentCheckInput) -> EnvironmentReport:
        """Everything is there once checked `env_checks_until_complete` times on an instance;
        a machine whose scenario is "model_missing" never gets the first required model."""
        self.calls["comfy.check_environment"] += 1
        port = int(input.url.rsplit(":", 1)[1])
        inst = next(i for i in self.live() if port % 100 == i.machine_id % 100)
        self.env_checks[inst.id] += 1
        missing = [f"model {folder}/{file}" for folder, file in input.checks.models]
        if self.scenario(inst.machine_id) == "model_missing":
            missing = missing[:1]
        elif self.env_checks[inst.id] >= self.env_checks_until_complete:
            missing = []
        return EnvironmentReport(missing=missing, classes_found=0, models_found={})

    @activity.defn(name="comfy.clean")
    async def clean(self, input: CleanInput) -> None:
        self.calls["comfy.clean"] += 1

    @activity.defn(name="comfy.watch")
    async def watch(self, input: WatchInput) -> WatchResult:
        self.calls["comfy.watch"] += 1
        inst = self.instances[input.instance_id]
        if self.scenario(inst.machine_id) == "keepalive_lost" or inst.id in self.kill_on_watch:
            return WatchResult(
                reason=FailureReason.KEEPALIVE_LOST,
                detail=f"{input.keepalive.max_failures} pings failed",
            )
        while inst.id not in self.kill_on_watch:
            moved = {"8188/tcp": 50000 + inst.machine_id}
            # Every watch on the old URL sees it (a cancelled one may still run a moment).
            if inst.id in self.move_on_watch and not input.url.endswith(f":{moved['8188/tcp']}"):
                view = self._view(inst).model_copy(update={"ports": moved})
                return WatchResult(
                    reason=FailureReason.PORTS_CHANGED, detail="ComfyUI moved", instance=view
                )
            activity.heartbeat()
            await asyncio.sleep(0.05)
        return WatchResult(reason=FailureReason.KEEPALIVE_LOST, detail="pings failed")

    @activity.defn(name="ssh.follow_logs")
    async def follow_logs(self, input: SshFollowInput) -> SshFollowResult:
        """Signal the machine's scripted batches, then return its fatal line or wait for cancel."""
        self.calls["ssh.follow_logs"] += 1
        self.ssh_inputs.append(input)
        machine = self.instances[input.instance_id].machine_id
        handle = activity.client().get_workflow_handle(input.workflow_id)
        for batch in self.ssh_logs.get(machine, []):
            own = batch.model_copy(update={"instance_id": batch.instance_id or input.instance_id})
            await handle.signal(Slot.SSH_LOG, own)
        if machine in self.ssh_fatal:
            return SshFollowResult(fatal_line=self.ssh_fatal[machine], path="/log", lines_seen=0)
        try:
            while True:
                activity.heartbeat()
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.calls["ssh.cancelled"] += 1
            raise


def workers(
    client: Client,
    queue: str,
    activities: list[Callable[..., Any]],
    workflows: list[type],
    **kw: Any,
) -> list[Worker]:
    """The main worker and one for every provider queue, as `worker.create_workers` runs them."""
    main = Worker(client, task_queue=queue, workflows=workflows, activities=activities, **kw)
    return [main] + [
        Worker(client, task_queue=q, activities=activities, **kw) for q in provider_queues(queue)
    ]
