"""What is each workflow and each of its messages called on the wire? Every name, spelled once.

A workflow module declares its handlers with these names (`@workflow.update(name=Pool.LEASE)`)
and every client (`warmpool/clients/`, the CLI, the gateway, chaos, bench, tests) calls them by
the same constant, so a client never imports workflow code to find a name. The values are what
recorded histories (`tests/histories/`) and operators' `temporal workflow signal --name ...`
commands carry: never change one.
"""

from __future__ import annotations

from typing import Final

STATUS: Final = "status"
"""The query every long-lived workflow answers with its typed status (pool, slot, token watch)."""


class Pool:
    """`WarmPoolWorkflow` (`warmpool/<pool>`): the lease authority."""

    WORKFLOW: Final = "WarmPoolWorkflow"
    STATUS: Final = STATUS
    # updates
    LEASE: Final = "lease"
    RENEW: Final = "renew"
    RELEASE: Final = "release"
    RESIZE: Final = "resize"
    SET_ENVIRONMENT: Final = "set_environment"
    # signals
    REQUEST_LEASE: Final = "request_lease"
    LEASE_UNANSWERED: Final = "lease_unanswered"
    SLOT_EVENT: Final = "slot_event"
    EXCLUDE_MACHINE: Final = "exclude_machine"
    PREWARM: Final = "prewarm"
    DRAIN: Final = "drain"
    RESUME: Final = "resume"
    # queries
    LEASE_REQUEST: Final = "lease_request"
    LEASE_INFO: Final = "lease_info"
    EXCLUDED_MACHINES: Final = "excluded_machines"


class Slot:
    """`WarmSlotWorkflow` (`warmpool/<pool>/slot-<k>`): one rented instance's state machine."""

    WORKFLOW: Final = "WarmSlotWorkflow"
    STATUS: Final = STATUS
    # updates (sent by the pool, through the `pool.message_slot` activity)
    ASSIGN_LEASE: Final = "assign_lease"
    END_LEASE: Final = "end_lease"
    # signals
    RETIRE: Final = "retire"
    RESUME: Final = "resume"
    SSH_LOG: Final = "ssh_log"
    PARK: Final = "park"
    UNPARK: Final = "unpark"


class TokenWatch:
    """`TokenWatchWorkflow` (`warmpool/tokens`): periodic token validation."""

    WORKFLOW: Final = "TokenWatchWorkflow"
    WORKFLOW_ID: Final = "warmpool/tokens"
    STATUS: Final = STATUS
    CHECK_NOW: Final = "check_now"


class Reaper:
    """`OrphanReaperWorkflow`, run by the Schedule `warmpool/<pool>/reaper`."""

    WORKFLOW: Final = "OrphanReaperWorkflow"
