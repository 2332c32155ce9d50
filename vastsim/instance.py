"""Where is a rented instance in its life, and what does the Vast.ai API show about it?

Status is computed from the time elapsed since the rental, on each read (no polling loop).
Only what needs real sockets, the ComfyUI endpoint, is driven by one small lifecycle task per
instance; the API reports "running" only once that task has actually mapped the ports.

A stop closes the container (no ports, ComfyUI gone) and keeps the disk; a start resumes it
`resume_s` later on new host ports, ComfyUI up `comfy_boot_s` after that (nothing to download
again), unless the host's GPU was taken meanwhile (fault `gpu_taken`): then it stays stopped
with `intended_status` "running". Billing: `dph_total` (the contract's rate, shown even while
stopped, as Vast.ai may) while the GPU runs, the disk's `storage_total_cost` otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from vastsim.comfy import GpuInfo
from vastsim.config import SimConfig
from vastsim.endpoint import ComfyEndpoint
from vastsim.environment import Provisioning
from vastsim.faults import InstanceFaults
from vastsim.records import InstanceInfo

log = logging.getLogger(__name__)

NO_SPACE_MSG = (
    "Error response from daemon: failed to register layer: write /opt/workspace-internal/"
    "ComfyUI/models/checkpoints/.cache: no space left on device"
)
OCI_MSG = (
    "Error response from daemon: failed to create task for container: failed to create shim "
    "task: OCI runtime create failed: runc create failed: unable to start container process: "
    "error during container init: nvidia-container-cli: device error: unknown device"
)
PULL_MSG = (
    "Error response from daemon: pull access denied for {image}, repository does not exist or "
    "may require 'docker login': denied: manifest unknown"
)
GPU_TAKEN_MSG = (
    "Required resources are not available on the host: its GPU is rented by another client. "
    "The instance will start when they are free."
)
RESUMING_MSG = "Instance is starting"
HOURS_PER_MONTH = 720.0  # storage_cost is $/GB/month of 30 days
_STATUS_MSGS = {
    "exited": "Container exited with code 1",
    "unknown": None,
    "offline": "Host is offline",
    "load_failed": "Error: container failed to load",
}
_SECRET_NAME = re.compile("TOKEN|KEY|PASSWORD|SECRET", re.IGNORECASE)
_PORT_FLAG = re.compile(r"^-p\s+(?:\d+:)?(\d+)(?:/(tcp|udp))?$")
_STATE_FIELDS = frozenset(
    {"actual_status", "intended_status", "cur_state", "next_state", "status_msg"}
)
STORED_COLUMNS = _STATE_FIELDS | {
    "id",
    "machine_id",
    "host_id",
    "label",
    "image_uuid",
    "image_runtype",
    "start_date",
    "disk_space",
    "public_ipaddr",
    "ssh_host",
    "ssh_port",
}


@dataclass(frozen=True, slots=True)
class RentRequest:
    """A validated create body (PUT /asks/{id}/)."""

    image: str
    disk: float
    label: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    runtype: str | None = None
    price: float | None = None
    stopped: bool = False

    def container_ports(self) -> list[tuple[int, str]]:
        """(container port, protocol) for every `"-p X:Y": "1"` entry of env."""
        ports = []
        for key in self.env:
            match = _PORT_FLAG.match(key.strip())
            if match:
                ports.append((int(match.group(1)), match.group(2) or "tcp"))
        return ports


class Instance:
    def __init__(
        self,
        *,
        instance_id: int,
        offer: dict[str, Any],
        rent: RentRequest,
        faults: InstanceFaults,
        config: SimConfig,
        dead_port: int,
        hidden_for: float = 0.0,
        provisioning: Provisioning | None = None,
    ) -> None:
        now = time.monotonic()
        self.id = instance_id
        self.provisioning = provisioning or Provisioning()  # the studio's environment
        self.offer = offer
        self.rent = rent
        self.label = rent.label
        self.faults = faults
        self.api_key = secrets.token_hex(32)
        self.comfy_mode: Literal["portal", "bare"] = (
            "bare" if (faults.comfy_mode or config.comfy_mode) == "bare" else "portal"
        )
        self._portal_token = rent.env.get("OPEN_BUTTON_TOKEN") or secrets.token_urlsafe(24)
        self._config = config
        self._dead_port = dead_port
        self.created_epoch = time.time()
        self.hidden_until = now + hidden_for
        self.destroyed_at: float | None = None
        self.destroyed_epoch: float | None = None
        self._visible_until = 0.0
        self.stopped = rent.stopped
        self.gpu_taken = False
        self._resumed_at: float | None = None  # the start call that resumed it, if any
        self._created_at = now
        self._gpu_billing = False  # the current run bills the GPU from its running time
        self._gpu_billed = 0.0  # real seconds of GPU billing of earlier runs
        self._overrides: dict[str, str | None] = {}
        self._origin = now
        self._booted = False
        self._comfy_killed = False
        self._endpoint: ComfyEndpoint | None = None
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle ----

    def launch(self) -> None:
        """Start the clock's real side effects (a no-op for a rental that can never run)."""
        f = self.faults
        if self.stopped or f.no_space or f.oci_failed or f.pull_failed or f.status:
            return
        self._gpu_billing = True
        self._task = asyncio.create_task(self._lifecycle(), name=f"vastsim-instance-{self.id}")

    def stop(self) -> None:
        """Stopped now, whatever it was doing (a repeated stop changes nothing)."""
        self._end_gpu_billing(time.monotonic())
        self.stopped = True
        self.gpu_taken = False
        self._resumed_at = None
        self.halt()

    def parked(self, now: float) -> bool:
        """Stopped (by a stop or an outbid) and not asked to run again: a start resumes it."""
        return self.destroyed_at is None and (self.stopped or self._outbid(now))

    def start(self, *, gpu_taken: bool = False) -> None:
        """Resume a parked instance: running `resume_s` from now on new host ports, or never
        when `gpu_taken`. Anything else (running, resuming) is left as it is."""
        now = time.monotonic()
        if not self.parked(now):
            return
        self.halt()  # an outbid the timeline has not acted on yet
        self._end_gpu_billing(now)
        self.stopped = False
        self.gpu_taken = gpu_taken
        self._resumed_at = now
        self._comfy_killed = False  # a restarted container starts ComfyUI afresh
        if not gpu_taken:
            self.launch()

    def destroy(self, linger: float = 0.0) -> None:
        """Destroyed now; still shown (stopped -> unloaded) for `linger` real seconds."""
        now = time.monotonic()
        self._end_gpu_billing(now)
        self.destroyed_at = now
        self.destroyed_epoch = time.time()
        self._visible_until = now + linger
        self.halt()

    async def kill_comfy(self) -> None:
        self._comfy_killed = True
        if self._endpoint is not None:
            self._endpoint.comfy_down()

    async def revive_comfy(self) -> None:
        self._comfy_killed = False
        if self._endpoint is not None and time.monotonic() >= self._times()[3]:
            await self._endpoint.comfy_up()

    def force(self, fields: dict[str, str | None]) -> None:
        """Pin status fields to given values (tests of the client's state machine)."""
        unknown = set(fields) - _STATE_FIELDS
        if unknown:
            raise ValueError(f"cannot force {sorted(unknown)}; allowed: {sorted(_STATE_FIELDS)}")
        if any(value is not None and not isinstance(value, str) for value in fields.values()):
            raise ValueError("forced status fields must be strings or null")
        self._overrides.update(fields)

    def unforce(self) -> None:
        """Drop every pinned status field: the instance shows its own timeline again."""
        self._overrides.clear()

    def halt(self) -> None:
        """Release the task and sockets (stop, destroy, simulator shutdown)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None
        self._booted = False
        self.provisioning.close()

    async def _lifecycle(self) -> None:
        try:
            await self._run_timeline()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("instance %s lifecycle failed", self.id)

    async def _run_timeline(self) -> None:
        c, f = self._config, self.faults
        _, _, running, ready = self._times()
        await _sleep_until(running)
        self.provisioning.begin(running)
        if not f.ports_never:
            self._endpoint = ComfyEndpoint(
                host=c.instance_bind_host,
                mode=self.comfy_mode,
                token=self._portal_token,
                container_ports={
                    port for port, proto in self.rent.container_ports() if proto == "tcp"
                },
                gpu=GpuInfo(str(self.offer["gpu_name"]), int(self.offer["gpu_ram"])),
                prompt_s=c.scaled(c.prompt_s),
                prompt_error=f.prompt_error,
                environment=self.provisioning,
            )
            await self._endpoint.start(firewall=f.firewall)
        self._booted = True
        steps: list[tuple[float, str]] = []
        if not f.comfy_never_ready:
            steps.append((ready, "ready"))
            if f.comfy_dies_after is not None:
                steps.append((ready + c.scaled(f.comfy_dies_after), "die"))
        if f.outbid_after is not None:
            steps.append((running + c.scaled(f.outbid_after), "outbid"))
        for at, step in sorted(steps):
            await _sleep_until(at)
            if step == "outbid":
                self._end_gpu_billing(at)
                self.stopped = True
                if self._endpoint is not None:
                    self._endpoint.close()
                    self._endpoint = None
                return
            if self._endpoint is None:
                continue
            if step == "ready" and not self._comfy_killed:
                await self._endpoint.comfy_up()
            elif step == "die":
                self._endpoint.comfy_down()

    # ---- what the API shows ----

    def gone(self, now: float) -> bool:
        return self.destroyed_at is not None and now >= self._visible_until

    def visible(self, now: float) -> bool:
        return not self.gone(now) and now >= self.hidden_until

    def _times(self) -> tuple[float, float, float, float]:
        """When the instance becomes created, loading, running, and ComfyUI ready (for a
        resumed one: its start call twice, then running again and ComfyUI ready again)."""
        c = self._config
        if self._resumed_at is not None:
            running = self._resumed_at + c.scaled(c.resume_s)
            ready = running + self.provisioning.comfy_delay(running) + c.scaled(c.comfy_boot_s)
            return self._resumed_at, self._resumed_at, running, ready
        created = self._origin + c.scaled(c.provision_s)
        loading = created + c.scaled(c.created_s)
        running = loading + c.scaled(c.loading_s)
        ready = running + self.provisioning.comfy_delay(running) + c.scaled(c.comfy_boot_s)
        return created, loading, running, ready

    def _states(self, now: float) -> dict[str, str | None]:
        if self.destroyed_at is not None:
            states: dict[str, str | None] = {
                "actual_status": "stopped",
                "intended_status": "stopped",
                "cur_state": "stopped",
                "next_state": "unloaded",
                "status_msg": "Instance is being destroyed",
            }
        elif self.stopped or self._outbid(now):
            states = dict.fromkeys(
                ("actual_status", "intended_status", "cur_state", "next_state"), "stopped"
            )
            states["status_msg"] = "Instance stopped"
        elif self._resuming(now):
            states = {
                "actual_status": "stopped",
                "intended_status": "running",
                "cur_state": "stopped",
                "next_state": "running",
                "status_msg": GPU_TAKEN_MSG if self.gpu_taken else RESUMING_MSG,
            }
        else:
            actual, message = self._container(now)
            states = {
                "actual_status": actual,
                "intended_status": "running",
                "cur_state": "running",
                "next_state": "running",
                "status_msg": message,
            }
        return {**states, **self._overrides}

    def _outbid(self, now: float) -> bool:
        after = self.faults.outbid_after
        if after is None or self.gpu_taken:
            return False
        return now >= self._times()[2] + self._config.scaled(after)

    def _resuming(self, now: float) -> bool:
        """Asked to run again and not running yet (forever when its GPU was taken)."""
        if self._resumed_at is None or self.stopped:
            return False
        return self.gpu_taken or now < self._times()[2]

    # ---- billing ----

    def storage_per_hour(self) -> float:
        """$/h of the disk: billed from the create to the destroy, stopped or not."""
        return self.rent.disk * float(self.offer["storage_cost"]) / HOURS_PER_MONTH

    def _gpu_seconds(self, now: float) -> float:
        """Real seconds the current run has billed the GPU: from running to now (or outbid)."""
        if not self._gpu_billing:
            return 0.0
        running = self._times()[2]
        end = now
        if self.faults.outbid_after is not None:
            end = min(end, running + self._config.scaled(self.faults.outbid_after))
        return max(0.0, end - running)

    def _end_gpu_billing(self, now: float) -> None:
        self._gpu_billed += self._gpu_seconds(now)
        self._gpu_billing = False

    def dph_now(self, now: float) -> float:
        """What it bills now, $/h: `dph_total` while the GPU runs, the disk when stopped or
        not running yet, nothing once destroyed."""
        if self.destroyed_at is not None:
            return 0.0
        if self._gpu_billing and not self._outbid(now) and now >= self._times()[2]:
            return float(self.offer["dph_total"])
        return self.storage_per_hour()

    def spent(self, now: float) -> float:
        """Dollars billed so far, in simulated hours: the disk all along, the rest of
        `dph_total` while the GPU ran."""
        end = self.destroyed_at if self.destroyed_at is not None else now
        storage = self.storage_per_hour()
        gpu_rate = max(0.0, float(self.offer["dph_total"]) - storage)
        gpu_s = self._gpu_billed + self._gpu_seconds(now)
        real_s = storage * (end - self._created_at) + gpu_rate * gpu_s
        return real_s * self._config.speed / 3600.0

    def _container(self, now: float) -> tuple[str | None, str | None]:
        """actual_status and status_msg of a rental that was not stopped."""
        f = self.faults
        created, loading, running, _ = self._times()
        if now < created:
            return None, None
        if f.oci_failed:
            return "created", OCI_MSG
        if now < loading:
            return "created", "Container created"
        if f.no_space:
            return "loading", NO_SPACE_MSG
        if f.pull_failed:
            return "loading", PULL_MSG.format(image=self.rent.image)
        if f.status is not None and now >= running:
            return f.status, _STATUS_MSGS[f.status]
        if now < running or not self._booted:
            return "loading", f"Pulling image {self.rent.image}"
        return "running", f"success, running {self.rent.image}/{self._runtype_suffix()}"

    def _runtype_suffix(self) -> str:
        runtype = self.rent.runtype or "ssh"
        return next((kind for kind in ("jupyter", "args", "ssh") if kind in runtype), "ssh")

    def _ports(self, now: float, running: bool) -> dict[str, Any] | None:
        """The `ports` dict once mapped; None if it is running but not mapped (yet)."""
        if not running or self._endpoint is None:
            return None
        if now < self._times()[2] + self._config.scaled(self.faults.ports_late):
            return None
        mapped = self._endpoint.host_ports()
        ports: dict[str, Any] = {}
        for container, proto in self.rent.container_ports():
            host = mapped.get(container, self._dead_port) if proto == "tcp" else self._dead_port
            ports[f"{container}/{proto}"] = [{"HostIp": "0.0.0.0", "HostPort": str(host)}]
        if self._config.ssh_port is not None:
            ports["22/tcp"] = [{"HostIp": "0.0.0.0", "HostPort": str(self._config.ssh_port)}]
        return ports

    def row(self, now: float) -> dict[str, Any]:
        """The stored columns (STORED_COLUMNS): what the v1 list can filter on, and cheap."""
        return {
            "id": self.id,
            "machine_id": self.offer["machine_id"],
            "host_id": self.offer["host_id"],
            "label": self.label,
            **self._states(now),
            "image_uuid": self.rent.image,
            "image_runtype": self.rent.runtype,
            "start_date": self.created_epoch,
            "disk_space": self.rent.disk,
            "public_ipaddr": f"{self._config.public_ip}\n",
            "ssh_host": self._config.ssh_host or self._config.public_ip,
            "ssh_port": self._config.ssh_port or self._dead_port,
        }

    def view(self, now: float) -> dict[str, Any]:
        """The instance object of `GET /instances/{id}/` and of the v1 list."""
        offer, row = self.offer, self.row(now)
        running = row["actual_status"] == "running" and self._booted
        ports = self._ports(now, running)
        host_ports = [int(e[0]["HostPort"]) for e in (ports or {}).values()]
        uptime = now - self._times()[2] if running else None
        obj: dict[str, Any] = {
            **row,
            "local_ipaddrs": "10.2.202.31 172.17.0.1 \n",
            "direct_port_start": min(host_ports) if host_ports else -1,
            "direct_port_end": max(host_ports) if host_ports else -1,
            "direct_port_count": offer["direct_port_count"],
            "ssh_idx": "1",
            "dph_total": offer["dph_total"],
            "dph_base": offer["dph_base"],
            "storage_cost": offer["storage_cost"],
            "storage_total_cost": round(self.storage_per_hour(), 6),
            "gpu_name": offer["gpu_name"],
            "num_gpus": offer["num_gpus"],
            "gpu_ram": offer["gpu_ram"],
            "cpu_cores": offer["cpu_cores"],
            "inet_down": offer["inet_down"],
            "inet_up": offer["inet_up"],
            "reliability2": offer["reliability2"],
            "geolocation": offer["geolocation"],
            "jupyter_token": None,
            "is_bid": self.rent.price is not None,
            "min_bid": offer["min_bid"],
            "end_date": self.created_epoch + offer["duration"],
            "duration": time.time() - self.created_epoch,
            "uptime_mins": None if uptime is None else round(uptime / 60, 2),
            "extra_env": [
                [key, "***" if _SECRET_NAME.search(key) else value]
                for key, value in self.rent.env.items()
            ],
        }
        if ports is not None or (running and self.faults.ports_never):
            obj["ports"] = ports
        return obj

    def log_text(self, now: float) -> str:
        """The container log `request_logs` serves: what a human would grep for the cause."""
        states = self._states(now)
        lines = [f"Pulling image {self.rent.image}", f"status: {states['actual_status']}"]
        if states["status_msg"]:
            lines.append(str(states["status_msg"]))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return "".join(f"{stamp} {line}\n" for line in lines)

    def info(self, now: float) -> InstanceInfo:
        states = self._states(now)
        mapped = self._endpoint.host_ports() if self._endpoint is not None else {}
        return InstanceInfo(
            id=self.id,
            offer_id=self.offer["id"],
            machine_id=self.offer["machine_id"],
            label=self.label,
            image=self.rent.image,
            actual_status=states["actual_status"],
            intended_status=states["intended_status"],
            cur_state=states["cur_state"],
            next_state=states["next_state"],
            status_msg=states["status_msg"],
            destroyed=self.destroyed_at is not None,
            created_at=self.created_epoch,
            destroyed_at=self.destroyed_epoch,
            comfy_mode=self.comfy_mode,
            comfy_ready=self._endpoint is not None and self._endpoint.comfy_ready,
            host_ports={f"{port}/tcp": host for port, host in mapped.items()},
            faults=[*self.faults.kinds, *self.provisioning.plan.fault_kinds],
            dph_now=self.dph_now(now),
            spent=self.spent(now),
        )


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
