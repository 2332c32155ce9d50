"""Which ComfyUI side effects can a slot ask for? Readiness, port validation, the environment
check, warm-up, keepalive.

The per-instance portal token is derived here from the instance label and the pool's secret
(`OPEN_BUTTON_TOKEN` at rent time), so it is sent on every probe without entering history.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.vast import instance_secret
from warmpool.comfy import (
    ComfyBadResponse,
    ComfyClient,
    ComfyError,
    ComfyNotReady,
    ComfyPromptFailed,
    ComfyUnauthorized,
    ComfyUnreachable,
)
from warmpool.environment import EnvironmentCheckInput, EnvironmentReport, missing
from warmpool.errors import ErrorType, VastError
from warmpool.instance_token import derive_instance_token
from warmpool.lifecycle import StatusVerdict, assess, backoff_delay
from warmpool.listing import SharedListing
from warmpool.models import (
    FailureReason,
    InstanceView,
    KeepaliveConfig,
    Model,
    PortReport,
    ProbeConfig,
    ProvisioningConfig,
)
from warmpool.probes import candidates_for, validate_ports
from warmpool.secrets import SecretStore

PORTAL_UNAUTHORIZED_MESSAGE = (
    "ComfyUI portal refused our instance token (401/403): check "
    "WARMPOOL_INSTANCE_SECRET and the image's OPEN_BUTTON_TOKEN handling"
)

KEEPALIVE_PINGS = "warmpool_keepalive_pings"
"""Counter on the worker's Prometheus endpoint (`_total` suffix there); the gateway's
`/metrics` derives the keepalive success ratio from it."""


class ProbeInput(Model):
    label: str
    instance: InstanceView
    probe: ProbeConfig
    """The slot's `SlotConfig.probe`: ports, portal, timeouts and the readiness backoff."""
    firewall_after_attempts: int = 3


class WarmupInput(Model):
    label: str
    url: str
    workflow_path: str
    timeout: timedelta


class CleanInput(Model):
    label: str
    url: str


class WatchInput(Model):
    label: str
    url: str
    instance_id: int
    poll_interval: timedelta
    """How often the provider's status is read (the slot's active or idle polling)."""
    keepalive: KeepaliveConfig
    provisioning: ProvisioningConfig
    """How the provider's status is judged (fatal grace and patterns)."""
    probe: ProbeConfig
    """Where ComfyUI is mapped; with `portal` only the mapped portal port can be watched."""


class WatchResult(Model):
    """Why a watch ended: keepalive lost, a fatal provider status, the instance gone, or the
    provider mapping ComfyUI's port elsewhere (PORTS_CHANGED: the slot validates it again)."""

    reason: FailureReason
    detail: str
    instance: InstanceView | None = None


def _category(exc: ComfyError) -> ApplicationErrorCategory:
    """ComfyUI restarting behind the portal (new nodes imported) is routine; anything else is
    worth a line in the worker's log."""
    if isinstance(exc, ComfyNotReady):
        return ApplicationErrorCategory.BENIGN
    return ApplicationErrorCategory.UNSPECIFIED


def moved_from(input: WatchInput, instance: InstanceView) -> str | None:
    """Why the watched URL is no longer where the provider maps ComfyUI, or None if it still is.

    Only a mapping that exists and differs counts (a new host port or public IP); a listing
    without the mapping for a moment is left to keepalive and `assess`.
    """
    probe = input.probe
    candidates = candidates_for(instance, probe.comfy_port, probe.internal_port)
    if probe.portal:
        candidates = [c for c in candidates if c.name == f"mapped-{probe.comfy_port}"]
    if not candidates or any(c.url == input.url for c in candidates):
        return None
    return f"provider now maps ComfyUI to {candidates[0].url}, watched {input.url}"


class ComfyActivities:
    """One instance per worker; every client it makes uses the worker's one `tls` context."""

    def __init__(self, listing: SharedListing, secrets: SecretStore, tls: ssl.SSLContext) -> None:
        self._listing = listing
        self._secrets = secrets
        self._tls = tls

    def _comfy(self, url: str, label: str) -> ComfyClient:
        return ComfyClient(url, self._token(label), tls=self._tls)

    def _token(self, label: str) -> str:
        return derive_instance_token(instance_secret(self._secrets), label)

    @activity.defn(name="comfy.await_ready")
    async def await_ready(self, input: ProbeInput) -> PortReport:
        """One readiness attempt; the retry policy (schedule-to-close = readiness timeout) loops.

        Not ready is a benign failure with a jittered exponential `next_retry_delay`; a wrong
        token (401/403) is a configuration error and fails at once; every candidate timing out
        for several attempts in a row is a firewall.
        """
        attempt = activity.info().attempt
        report = await self._check(input)
        if report.url is not None:
            return report
        if report.unauthorized:
            raise ApplicationError(
                PORTAL_UNAUTHORIZED_MESSAGE,
                report.model_dump(mode="json"),
                type=ErrorType.PORTAL_UNAUTHORIZED,
                non_retryable=True,
            )
        if report.firewall and attempt >= input.firewall_after_attempts:
            raise ApplicationError(
                f"every port candidate timed out on {attempt} attempts: firewalled",
                report.model_dump(mode="json"),
                type=ErrorType.FIREWALL,
                non_retryable=True,
            )
        summary = ", ".join(f"{c.name}={c.outcome}" for c in report.candidates) or "no candidate"
        raise ApplicationError(
            f"ComfyUI not ready ({summary})",
            type=ErrorType.NOT_READY,
            category=ApplicationErrorCategory.BENIGN,
            next_retry_delay=backoff_delay(
                attempt,
                input.probe.readiness_initial_interval,
                input.probe.readiness_max_interval,
                random.random(),
            ),
        )

    @activity.defn(name="comfy.validate_ports")
    async def validate_ports(self, input: ProbeInput) -> PortReport:
        """Check every candidate (TCP, then HTTP /system_stats) and pick the preferred URL."""
        return await self._check(input)

    async def _check(self, input: ProbeInput) -> PortReport:
        probe = input.probe
        return await validate_ports(
            candidates_for(input.instance, probe.comfy_port, probe.internal_port),
            self._token(input.label),
            portal=probe.portal,
            tcp_timeout=probe.tcp_timeout.total_seconds(),
            http_timeout=probe.http_timeout.total_seconds(),
            tls=self._tls,
        )

    @activity.defn(name="comfy.check_environment")
    async def check_environment(self, input: EnvironmentCheckInput) -> EnvironmentReport:
        """One check of the environment on the validated endpoint: the required node classes in
        `/object_info`, the required models in `/models/<folder>`; `missing` names the gaps.

        One check per call: the slot loops with its own timer, so its status shows what is
        still missing between checks. Only `input.url` is asked (the URL the slot validated),
        with the instance token, as the probes do. No answer, a 5xx or ComfyUI restarting
        behind the portal is a retryable failure (the activity's retry policy); 401/403 is the
        probes' configuration error (PORTAL_UNAUTHORIZED, not retried).
        """
        checks = input.checks
        notes: list[str] = []
        classes: set[str] = set()
        listings: dict[str, set[str]] = {}
        async with self._comfy(input.url, input.label) as comfy:
            try:
                if checks.node_classes:
                    classes = await comfy.node_classes()
                for folder in checks.folders:
                    files = await comfy.model_files(folder)
                    if files is None:
                        notes.append(
                            f"ComfyUI has no models folder {folder!r} (/models/{folder} answered "
                            "404): its models count as missing"
                        )
                    listings[folder] = files or set()
            except ComfyUnauthorized:
                raise ApplicationError(
                    PORTAL_UNAUTHORIZED_MESSAGE,
                    type=ErrorType.PORTAL_UNAUTHORIZED,
                    non_retryable=True,
                ) from None
            except (ComfyUnreachable, ComfyNotReady, ComfyBadResponse) as exc:
                raise ApplicationError(
                    f"environment check: {exc}",
                    type=ErrorType.NOT_READY,
                    category=_category(exc),
                ) from None
        return EnvironmentReport(
            missing=missing(checks, classes, listings),
            classes_found=len(classes),
            models_found={folder: len(files) for folder, files in listings.items()},
            notes=notes,
        )

    @activity.defn(name="comfy.warmup")
    async def warmup(self, input: WarmupInput) -> float:
        """Run the configured warm-up prompt once, so the first user does not load models."""
        try:
            text = await asyncio.to_thread(Path(input.workflow_path).read_text)
            graph: dict[str, Any] = json.loads(text)
        except (OSError, ValueError) as exc:
            raise ApplicationError(
                f"warm-up workflow {input.workflow_path} unreadable: {exc}",
                type=ErrorType.CONFIGURATION,
                non_retryable=True,
            ) from None
        graph = graph.get("prompt", graph)
        async with self._comfy(input.url, input.label) as comfy:
            try:
                return await comfy.run_prompt(graph, timeout=input.timeout.total_seconds())
            except ComfyPromptFailed as exc:
                raise ApplicationError(
                    str(exc), type=ErrorType.WARMUP_FAILED, non_retryable=True
                ) from None

    @activity.defn(name="comfy.clean")
    async def clean(self, input: CleanInput) -> None:
        """After a lease: clear the queue, interrupt, free memory, then prove it still answers."""
        async with self._comfy(input.url, input.label) as comfy:
            await comfy.clean()
            await comfy.system_stats()

    @activity.defn(name="comfy.watch")
    async def watch(self, input: WatchInput) -> WatchResult:
        """Keepalive and provider status while READY or LEASED; returns only when the slot is lost.

        Long-running with heartbeats: a dead worker's watch is retried elsewhere after the
        heartbeat timeout. Healthy watching writes nothing to history.
        """
        failures = 0
        bad_since: datetime | None = None
        loop = asyncio.get_running_loop()
        next_poll = loop.time()
        pings = activity.metric_meter().create_counter(
            KEEPALIVE_PINGS, "keepalive pings to ComfyUI by outcome (ok, failed)"
        )
        async with self._comfy(input.url, input.label) as comfy:
            while True:
                activity.heartbeat(failures)
                ok = await comfy.ping(input.keepalive.timeout.total_seconds())
                pings.add(1, {"outcome": "ok" if ok else "failed"})
                failures = 0 if ok else failures + 1
                lost = failures >= input.keepalive.max_failures
                if lost or loop.time() >= next_poll:
                    next_poll = loop.time() + input.poll_interval.total_seconds()
                    try:
                        obs = await self._listing.observe(input.instance_id)
                    except VastError as exc:
                        activity.logger.warning("status check failed: %s", exc)
                    else:
                        verdict = assess(
                            obs.instance,
                            gone=obs.gone,
                            now=datetime.now().astimezone(),
                            bad_since=bad_since,
                            grace=input.provisioning.fatal_grace,
                            fatal_patterns=input.provisioning.fatal_patterns,
                            comfy_port=input.probe.comfy_port,
                            internal_port=input.probe.internal_port,
                        )
                        bad_since = verdict.bad_since
                        if verdict.verdict in (StatusVerdict.DESTROY, StatusVerdict.GONE):
                            assert verdict.reason is not None
                            return WatchResult(
                                reason=verdict.reason, detail=verdict.detail, instance=obs.instance
                            )
                        moved = None if obs.instance is None else moved_from(input, obs.instance)
                        if moved is not None:
                            return WatchResult(
                                reason=FailureReason.PORTS_CHANGED,
                                detail=moved,
                                instance=obs.instance,
                            )
                        if lost:
                            return WatchResult(
                                reason=FailureReason.KEEPALIVE_LOST,
                                detail=f"{failures} keepalive pings failed in a row; "
                                f"provider says {verdict.detail}",
                                instance=obs.instance,
                            )
                    if lost:
                        return WatchResult(
                            reason=FailureReason.KEEPALIVE_LOST,
                            detail=f"{failures} keepalive pings failed in a row",
                        )
                await asyncio.sleep(input.keepalive.interval.total_seconds())
