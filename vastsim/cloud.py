"""What does the simulated provider hold? Offers, instances, faults and the call log, without HTTP.

The Vast.ai API, the control API and the Python `Simulator` all act on one `Cloud`.
"""

from __future__ import annotations

import random
import secrets
import time
from collections import Counter, deque
from typing import Any

from vastsim.config import (
    ENVIRONMENT_KINDS,
    INSTANCE_KINDS,
    Fault,
    SimConfig,
    default_fault_mix,
)
from vastsim.environment import Provisioning, carries_environment
from vastsim.faults import FaultBook, InstanceFaults, Scope
from vastsim.httpserver import Request
from vastsim.instance import Instance, RentRequest
from vastsim.offers import catalogue
from vastsim.ports import reserve
from vastsim.records import CallRecord, InstanceInfo


class Cloud:
    def __init__(self, config: SimConfig, root_url: str) -> None:
        self.config = config
        self.root_url = root_url
        self.faults = FaultBook(random.Random(config.seed))
        self.offers = catalogue(config.offers, config.seed)
        self.instances: dict[int, Instance] = {}
        self.calls: deque[CallRecord] = deque(maxlen=config.call_log_limit)
        self.call_counts: Counter[str] = Counter()
        self.logs: dict[str, tuple[float, str]] = {}
        self._ids = random.Random(config.seed + 1)
        self._next_id = 20_000_000 + self._ids.randrange(5_000_000)
        # Bound, never listening: the SSH port and unmapped ports point here, and are refused.
        self._dead = reserve(config.instance_bind_host)
        self.dead_port: int = self._dead.getsockname()[1]
        mix = default_fault_mix() if config.fault_mix == "default" else []
        for fault in [*config.faults, *mix]:
            self.faults.add(fault)

    def record(self, request: Request, endpoint_key: str, status: int, at: float) -> None:
        self.call_counts[endpoint_key] += 1
        self.calls.append(
            CallRecord(
                method=request.method,
                path=request.path,
                endpoint_key=endpoint_key,
                status=status,
                at=at,
            )
        )

    def offers_view(self) -> list[dict[str, Any]]:
        """Offers as the search shows them, `rented` reflecting the live rentals."""
        taken = {i.offer["id"] for i in self.instances.values() if i.destroyed_at is None}
        return [{**offer, "rented": offer["id"] in taken} for offer in self.offers.values()]

    def rentable(self, offer_id: int) -> bool:
        offer = self.offers.get(offer_id)
        if offer is None or not offer["rentable"]:
            return False
        return all(
            i.offer["id"] != offer_id or i.destroyed_at is not None for i in self.instances.values()
        )

    def create(self, offer_id: int, rent: RentRequest, hidden_for: float = 0.0) -> Instance:
        offer = self.offers[offer_id]
        scope = Scope("create", offer_id, offer["machine_id"], rent.image)
        faults = InstanceFaults.from_faults(self.faults.take_all(INSTANCE_KINDS, scope))
        provisioning = self._provisioning(rent, scope)
        self._next_id += self._ids.randint(1, 50)
        instance = Instance(
            instance_id=self._next_id,
            offer=dict(offer),
            rent=rent,
            faults=faults,
            config=self.config,
            dead_port=self.dead_port,
            hidden_for=hidden_for,
            provisioning=provisioning,
        )
        self.instances[instance.id] = instance
        instance.launch()
        return instance

    def _provisioning(self, rent: RentRequest, scope: Scope) -> Provisioning:
        """The rental's environment; environment faults are used up only by rentals that carry
        one (a manifest or a PROVISIONING_SCRIPT)."""
        if not carries_environment(rent.env):
            return Provisioning(config=self.config)
        faults = self.faults.take_all(ENVIRONMENT_KINDS, scope)
        return Provisioning.for_rent(rent.env, faults, self.config)

    def live(self, instance_id: int) -> Instance | None:
        """The instance if it exists and is not destroyed (hidden or not)."""
        instance = self.instances.get(instance_id)
        return instance if instance is not None and instance.destroyed_at is None else None

    def publish_log(self, instance: Instance, now: float) -> str:
        key = secrets.token_hex(16)
        ready_at = now + self.config.scaled(self.config.log_delay_s)
        self.logs[key] = (ready_at, instance.log_text(now))
        return f"{self.root_url}/logs/{key}.log"

    # ---- control ----

    def add_fault(self, fault: Fault) -> str:
        return self.faults.add(fault)

    def instance(self, instance_id: int) -> Instance:
        try:
            return self.instances[instance_id]
        except KeyError:
            raise KeyError(f"no instance {instance_id}") from None

    def infos(self) -> list[InstanceInfo]:
        now = time.monotonic()
        return [instance.info(now) for instance in self.instances.values()]

    def state(self) -> dict[str, Any]:
        """Everything a chaos script in another process may want to assert on."""
        return {
            "instances": [info.model_dump() for info in self.infos()],
            "offers": self.offers_view(),
            "faults": self.faults.listing(),
            "faults_fired": dict(self.faults.fired),
            "call_counts": dict(self.call_counts),
            "calls": [call.model_dump() for call in self.calls],
        }

    def reset(self) -> None:
        """Forget every instance, call, log and fault (the catalogue stays)."""
        self.close_instances()
        self.instances.clear()
        self.calls.clear()
        self.call_counts.clear()
        self.logs.clear()
        self.faults.clear()

    def close_instances(self) -> None:
        """Release every socket and task; the records stay as they were."""
        for instance in self.instances.values():
            instance.halt()

    def close(self) -> None:
        self.close_instances()
        self._dead.close()
