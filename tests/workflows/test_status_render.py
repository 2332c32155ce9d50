"""`pool status` as the operator reads it, from a hand-built `PoolStatus` (no server): the
scaling policy, its reading and last decisions, the READY / STOPPED / renting tiers with their
$/h, and what idle has cost. `--json` is the model dump, so it carries the same figures."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta
from typing import Any

from warmpool.cli.pool import DECISIONS_SHOWN, render_pool
from warmpool.models import (
    CostView,
    FloorPeriod,
    PoolConfig,
    PoolStats,
    PoolStatus,
    ScalingDecision,
    ScalingPolicy,
    ScalingView,
    SlotState,
    SlotView,
)

S = SlotState
AT = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def slot(index: int, state: SlotState, dph: float | None = None, **fields: Any) -> SlotView:
    instance = 100 + index if dph is not None else None
    return SlotView(
        index=index, state=state, since=AT, instance_id=instance, dph_total=dph, **fields
    )


def studio(**fields: Any) -> PoolStatus:
    config = PoolConfig(
        min_ready=1,
        max_slots=6,
        scaling=ScalingPolicy(
            schedule=[FloorPeriod(days=["mon", "tue", "wed", "thu", "fri"], start=time(8),
                                  end=time(20), floor=3)],
            timezone="Europe/Paris",
            stopped_target=1,
        ),
    )  # fmt: skip
    values: dict[str, Any] = {
        "pool": "studio",
        "config": config,
        "slots": [
            slot(0, S.READY, 0.42, connection_url="http://10.0.0.1:40001"),
            slot(1, S.LEASED, 0.40, lease_id="L-1", connection_url="http://10.0.0.1:40002"),
            slot(2, S.RENTING),
            slot(3, S.STOPPED, 0.0117),
            slot(4, S.RESUMING, 0.38),
        ],
        "counts": {"READY": 1, "LEASED": 1, "RENTING": 1, "STOPPED": 1, "RESUMING": 1},
        "idle_ready": 1,
        "spend_per_hour": 1.2117,
        "budget_limited": False,
        "safe_mode": False,
        "safe_reason": None,
        "draining": False,
        "active_leases": [],
        "recent_leases": [],
        "waiting": 2,
        "failures": [],
        "granted_total": 7,
        "stats": PoolStats(),
        "scaling": ScalingView(
            floor=3,
            demand=3,
            target=4,
            warm=4,
            stopped=1,
            surplus_since=None,
            decisions=[
                ScalingDecision(at=AT - timedelta(minutes=k), before=0, after=1, reason=f"old {k}")
                for k in range(10, 4, -1)
            ]
            + [ScalingDecision(at=AT, before=1, after=4, reason="1 leased + 2 waiting + buffer 1")],
        ),
        "costs": CostView(
            spend_per_hour_by_tier={
                "idle": 0.42,
                "leased": 0.4,
                "starting": 0.38,
                "stopped": 0.0117,
            },
            spend_total=3.2145,
            spend_by_tier={"idle": 1.1, "leased": 2.0, "starting": 0.1, "stopped": 0.0145},
            idle_gpu_hours=2.6,
            leased_gpu_hours=5.0,
            dollars_per_leased_hour=0.6429,
            lease_wait_p50_s=0.0,
            lease_wait_p95_s=45.0,
            refusals=3,
            since=AT - timedelta(hours=8),
        ),
    }
    return PoolStatus.model_validate(values | fields)


def test_status_shows_the_policy_its_reading_the_tiers_and_what_idle_costs() -> None:
    lines = render_pool(studio()).splitlines()
    assert lines[:2] == [
        "pool studio: min_ready 1, max_slots 6, idle READY 1, spend $1.21/h",
        "policy: buffer 1, floor min_ready 1 + schedule mon-fri 08:00-20:00=3 (Europe/Paris), "
        "scale down after 10m surplus, stopped tier 1 after 5m idle",
    ]
    assert lines[2] == "scaling: floor 3, demand 3, target 4, warm 4, stopped 1"
    decisions = [line for line in lines if line.startswith("  ") and "scaled" in line]
    assert len(decisions) == DECISIONS_SHOWN, "the last few, not all"
    assert decisions[-1] == "  09:00:00 scaled 1 → 4: 1 leased + 2 waiting + buffer 1"
    assert (
        "tiers: READY 1 $0.42/h, leased 1 $0.40/h, renting 1 + resuming 1 $0.38/h, "
        "STOPPED 1 $0.0117/h (disk only)"
    ) in lines
    assert (
        "costs since 2025-03-03 01:00 UTC: $3.21 spent "
        "(idle $1.10, leased $2.00, starting $0.10, stopped $0.0145)"
    ) in lines
    assert (
        "  idle 2.6 GPU-h, leased 5 GPU-h, $0.64 per leased hour; lease wait p50 0s, p95 45s; "
        "3 lease(s) refused"
    ) in lines
    table = lines[lines.index(next(line for line in lines if line.startswith("slot "))) :]
    assert [row.split()[1] for row in table[1:]] == [
        "READY",
        "LEASED",
        "RENTING",
        "STOPPED",
        "RESUMING",
    ], "every slot as it is, parked ones included"


def test_status_json_is_the_model_dump_with_scaling_and_costs() -> None:
    payload = json.loads(json.dumps(studio().model_dump(mode="json")))
    assert payload["scaling"]["target"] == 4 and payload["scaling"]["stopped"] == 1
    assert payload["scaling"]["decisions"][-1]["after"] == 4
    assert payload["costs"]["spend_per_hour_by_tier"]["stopped"] == 0.0117
    assert payload["costs"]["lease_wait_p95_s"] == 45.0
    assert payload["config"]["scaling"]["schedule"][0]["start"] == "08:00:00"
    assert PoolStatus.model_validate(payload) == studio(), "round-trips"


def test_a_surplus_says_when_the_pool_scales_down() -> None:
    view = studio().scaling
    assert view is not None
    surplus = view.model_copy(update={"surplus_since": AT, "stopped": 0, "target": 2})
    text = render_pool(studio(scaling=surplus))
    assert "surplus since 09:00:00, scaling down from 09:05:00" in text, "park_after first"
    full = surplus.model_copy(update={"stopped": 1})
    text = render_pool(studio(scaling=full))
    assert "surplus since 09:00:00, scaling down from 09:10:00" in text, "stopped tier full"


def test_before_any_lease_the_figures_say_so() -> None:
    costs = CostView(
        spend_per_hour_by_tier={"idle": 0.5, "leased": 0.0, "starting": 0.0, "stopped": 0.0},
        spend_total=0.0,
        spend_by_tier={},
        idle_gpu_hours=0.0,
        leased_gpu_hours=0.0,
        dollars_per_leased_hour=None,
        lease_wait_p50_s=None,
        lease_wait_p95_s=None,
        refusals=0,
        since=None,
    )
    text = render_pool(studio(costs=costs))
    assert "costs: $0.00 spent\n" in text
    assert "- per leased hour; lease wait p50 -, p95 -; 0 lease(s) refused" in text


def test_a_status_without_the_policy_reading_still_renders() -> None:
    """A finished pool's last status, or one from before the policy: no scaling nor costs."""
    old = studio(scaling=None, costs=None)
    text = render_pool(old)
    assert "scaling:" not in text and "costs" not in text
    assert "tiers: READY 1, leased 1, renting 1 + resuming 1, STOPPED 1 (disk only)" in text
    finished = render_pool(studio(), finished="pool studio has finished (drained)")
    assert "FINISHED" in finished and "scaling:" not in finished and "tiers:" not in finished
    assert "costs since" in finished, "what it cost stays readable after the end"


# ---- the studio's environment -------------------------------------------------------------------

OLD, NEW = "env-0123456789ab", "env-ba9876543210"


def test_status_shows_the_target_environment_and_slots_per_version() -> None:
    slots = [
        slot(0, S.READY, 0.42, connection_url="http://10.0.0.1:40001", env_version=NEW),
        slot(1, S.LEASED, 0.40, lease_id="L-1", env_version=OLD),
        slot(2, S.INSTALLING, 0.41, env_version=NEW),
        slot(3, S.READY, 0.40, env_version=OLD),
        slot(4, S.RENTING),
    ]
    config = studio().config.model_copy(update={"max_surge": 2})
    status = studio(
        config=config,
        slots=slots,
        environment_version=NEW,
        slots_by_environment={NEW: 2, OLD: 2, "none": 1},
    )
    lines = render_pool(status).splitlines()
    assert lines[2] == (
        f"environment {NEW}: 2 slot(s) on it; rolling out (max_surge 2): 2 on {OLD}, 1 without "
        "an environment"
    )
    head = next(line for line in lines if line.startswith("slot "))
    assert head.split() == ["slot", "state", "instance", "$/h", "lease", "environment", "url"]
    rows = lines[lines.index(head) + 1 : lines.index(head) + 6]
    assert [row.split()[-2] for row in rows] == [NEW, OLD, NEW, OLD, "-"]
    assert rows[2].split()[1] == "INSTALLING"
    done = studio(
        slots=slots[:1], environment_version=NEW, slots_by_environment={NEW: 1}, config=config
    )
    assert f"environment {NEW}: 1 slot(s) on it" in render_pool(done).splitlines()
    payload = json.loads(json.dumps(status.model_dump(mode="json")))
    assert payload["environment_version"] == NEW
    assert payload["slots_by_environment"] == {NEW: 2, OLD: 2, "none": 1}
    assert payload["config"]["max_surge"] == 2


def test_without_an_environment_nothing_about_it_is_shown() -> None:
    text = render_pool(studio())
    assert "environment" not in text, "a pool without one reads as before"


def test_slot_status_shows_its_environment_and_what_installs() -> None:
    from warmpool.cli.slot import progress_line, render_slot
    from warmpool.models import SlotCounters, SlotStatus

    def status(state: SlotState, **fields: Any) -> SlotStatus:
        values: dict[str, Any] = {
            "workflow_id": "warmpool/studio/slot-2",
            "pool": "studio",
            "index": 2,
            "state": state,
            "attempt": 1,
            "instance": None,
            "offer": None,
            "image_used": "vastai/comfyui:latest",
            "connection_url": None,
            "port_report": None,
            "lease": None,
            "last_lease_end": None,
            "counters": SlotCounters(),
            "transitions": [],
            "last_failure": None,
            "blocked_reason": None,
            "retiring": False,
            "state_since": AT,
            "ready_since": None,
            "time_to_ready_s": None,
            "warmup_seconds": None,
            "excluded_machines": [],
            "log_tail": [],
        }
        return SlotStatus.model_validate(values | fields)

    installing = status(
        S.INSTALLING,
        environment_version=NEW,
        env_missing=["model checkpoints/sdxl.safetensors", "node class FaceDetailer (from x)"],
        env_progress="downloading checkpoints/sdxl.safetensors 45% (3.1/6.9 GB)",
    )
    rows = {
        line.split("  ", 1)[0]: line.split("  ", 1)[1].strip()
        for line in render_slot(installing).splitlines()
        if "  " in line and not line.startswith(" ")
    }
    assert rows["environment"] == NEW
    assert rows["provisioning"] == "downloading checkpoints/sdxl.safetensors 45% (3.1/6.9 GB)"
    assert rows["missing"] == (
        "model checkpoints/sdxl.safetensors, node class FaceDetailer (from x)"
    )
    assert progress_line(installing) == (
        "[INSTALLING] downloading checkpoints/sdxl.safetensors 45% (3.1/6.9 GB)"
    )
    ready = render_slot(status(S.READY, environment_version=NEW, env_missing=["stale"]))
    assert "missing" not in ready and "provisioning" not in ready, "only while INSTALLING"
    plain = render_slot(status(S.READY))
    assert "environment    -" in plain
