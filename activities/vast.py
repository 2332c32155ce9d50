"""Which Vast.ai side effects can a slot ask for? Search, rent once, observe, stop and start
(park and resume), confirmed destroy.

These activities run on the provider task queue, whose start rate the Temporal server caps
across all workers (`max_task_queue_activities_per_second`), so the pool's call rate stays
under Vast.ai's limits by design. Secrets (API key, instance token secret, HF/Civitai tokens)
are read from the secret store here, never passed in.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.errors import vast_errors
from activities.slots import MachineExclusion, exclude_machine
from warmpool.environment import (
    DEFAULT_ONSTART,
    Environment,
    EnvironmentTooLarge,
    instance_setup,
    secret_env_names,
)
from warmpool.errors import (
    ErrorType,
    VastAuthError,
    VastCreateFailed,
    VastMalformedResponse,
    VastNotFound,
    VastRateLimited,
    VastRequestRejected,
    VastServerError,
    VastTransportError,
)
from warmpool.instance_token import derive_instance_token
from warmpool.listing import SharedListing
from warmpool.models import (
    FailureReason,
    InstanceView,
    Model,
    Observation,
    OfferConstraints,
    OfferSummary,
)
from warmpool.secrets import SecretName, SecretStore
from warmpool.vast import CreateRequest, VastClient, port_env, to_summary, to_view

CREATE_SENT = "create-sent"
"""Heartbeat detail recorded just before a create: a retry that sees it waits for the label to
appear in the listing before it may create again (a create can succeed before it is visible)."""


CREATE_REFUSED = "create-refused"
_TOKEN_SECRETS: dict[str, SecretName] = {
    "HF_TOKEN": SecretName.HF,
    "CIVITAI_TOKEN": SecretName.CIVITAI,
}
"""The instance env var of each token the rent may add, and the secret it is read from."""
LOOK_ERRORS = (VastServerError, VastTransportError, VastRateLimited, VastMalformedResponse)
"""Failures of a label look-up that say nothing about whether the instance exists."""


class SearchInput(Model):
    constraints: OfferConstraints
    exclude_machines: list[int] = []
    pool_workflow_id: str | None = None
    """The slot's pool, asked for the machines it excludes for every slot (`excluded_machines`)."""


class RentInput(Model):
    offer_id: int
    label: str
    image: str
    disk_gb: float
    runtype: str | None
    onstart: str | None
    ports: list[int]
    machine_id: int | None = None
    pool_workflow_id: str | None = None
    """Asked again just before the create: a machine another slot saw fail meanwhile is left;
    told at once when the create fails on that machine."""
    slot: int = 0
    environment: Environment | None = None
    """The pool's environment: its env vars (version, manifest, script) and `onstart` bootstrap
    go into the create request; the tokens it declares in `secrets` are added by the activity.
    None: no environment, and both tokens are sent when the worker has them."""


class RentResult(Model):
    instance_id: int
    adopted: bool


class DestroyResult(Model):
    instance_id: int
    confirmed: bool
    already_gone: bool


class StateResult(Model):
    """A stop or start the provider accepted (or found already asked for); `gone`: the instance
    no longer exists, so there is nothing to stop or resume (rent fresh)."""

    instance_id: int
    state: str
    """What was asked: "stopped" or "running"."""
    gone: bool = False


def instance_secret(store: SecretStore) -> bytes:
    secret = store.get(SecretName.INSTANCE)
    if not secret:
        raise ApplicationError(
            "no instance token secret configured (WARMPOOL_INSTANCE_SECRET)",
            type=ErrorType.CONFIGURATION,
            non_retryable=True,
        )
    return secret.encode()


async def pool_exclusions(pool_workflow_id: str | None) -> set[int]:
    """The machines the pool excludes for every slot, asked now (inside an activity)."""
    if pool_workflow_id is None:
        return set()
    pool = activity.client().get_workflow_handle(pool_workflow_id)
    try:
        return set(await pool.query("excluded_machines", result_type=list[int]))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:  # no pool: a standalone slot
            return set()
        raise


async def machines_to_exclude(input: SearchInput) -> list[int]:
    """The slot's own exclusions and its pool's."""
    return sorted(set(input.exclude_machines) | await pool_exclusions(input.pool_workflow_id))


async def refuse_excluded(input: RentInput) -> None:
    """Refuse to create on a machine the pool excluded since the search (another slot's
    failure): the slot searches again, as for an offer that vanished."""
    if input.machine_id is not None and input.machine_id in await pool_exclusions(
        input.pool_workflow_id
    ):
        raise ApplicationError(
            f"machine {input.machine_id} was excluded by the pool since the search",
            type=ErrorType.VAST_OFFER_UNAVAILABLE,
            non_retryable=True,
        )


async def exclude_failed_host(input: RentInput) -> None:
    """The create failed on this machine: tell the pool now, so that no other slot's rent
    (asking `refuse_excluded` a moment later) tries it too. Best effort: the slot tells the
    pool as well once this activity has failed."""
    if input.pool_workflow_id is None or input.machine_id is None:
        return
    exclusion = MachineExclusion(
        pool_workflow_id=input.pool_workflow_id,
        machine_id=input.machine_id,
        reason=FailureReason.RENT_FAILED.value,
        slot=input.slot,
    )
    try:
        await exclude_machine(exclusion)  # the activity's body, run inside this one
    except RPCError as exc:
        activity.logger.warning("could not tell the pool to exclude: %s", exc.message)


class VastActivities:
    """One instance per worker; the client and listing are shared by every slot it runs."""

    def __init__(
        self,
        client: VastClient,
        listing: SharedListing,
        secrets: SecretStore,
        *,
        adopt_wait: timedelta = timedelta(seconds=30),
        adopt_poll: timedelta = timedelta(seconds=3),
    ) -> None:
        self._client = client
        self._listing = listing
        self._secrets = secrets
        self._adopt_wait = adopt_wait
        self._adopt_poll = adopt_poll

    @activity.defn(name="vast.search_offers")
    async def search_offers(self, input: SearchInput) -> list[OfferSummary]:
        """Offers on machines neither the slot nor its pool excludes.

        The pool's list is read at search time, so a machine another slot just saw fail is
        left out; a pool that cannot be asked fails the attempt (retried), rather than risk
        renting a known-bad host again.
        """
        excluded = await machines_to_exclude(input)
        with vast_errors(activity.info().attempt):
            offers = await self._client.search_offers(input.constraints, exclude_machines=excluded)
        return [to_summary(o) for o in offers]

    async def _find_by_label(self, label: str) -> int | None:
        found = await self._client.list_instances(label=label)
        ids = sorted(i.id for i in found if i.id is not None and i.label == label)
        return ids[0] if ids else None

    async def _wait_for_label(self, label: str) -> int | None:
        """After a create that may have landed, give the listing time to show it.

        A look that fails (5xx, timeout, 429) is no answer, so it does not end the wait: the
        wait ends with "not there" only on a look that succeeded after the deadline. Failed
        looks are tolerated for twice the window, then the attempt fails and is retried.
        """
        loop = asyncio.get_running_loop()
        window = self._adopt_wait.total_seconds()
        deadline = loop.time() + window
        while True:
            try:
                found = await self._find_by_label(label)
            except LOOK_ERRORS:
                if loop.time() >= deadline + window:
                    raise
            else:
                if found is not None or loop.time() >= deadline:
                    return found
            activity.heartbeat(CREATE_SENT)
            await asyncio.sleep(self._adopt_poll.total_seconds())

    def _env(self, input: RentInput) -> tuple[dict[str, str], str | None]:
        """The create request's env and onstart.

        With an environment: its env vars and onstart (`instance_setup`), and only the tokens
        it declares in `secrets`; without one, both tokens when the worker has them. The port
        flags and the portal token come last, so nothing an environment says overrides them.
        """
        env: dict[str, str] = {}
        onstart = input.onstart
        token_vars = list(_TOKEN_SECRETS)
        if input.environment is not None:
            try:
                setup = instance_setup(input.environment, onstart=input.onstart or DEFAULT_ONSTART)
            except EnvironmentTooLarge as exc:
                raise ApplicationError(
                    f"environment {input.environment.version} does not fit a rent request: {exc}",
                    type=ErrorType.CONFIGURATION,
                    non_retryable=True,
                ) from None
            env.update(setup.env_vars)
            onstart = setup.onstart
            token_vars = secret_env_names(input.environment)
        for var in token_vars:
            value = self._secrets.get(_TOKEN_SECRETS[var])
            if value:
                env[var] = value
        env.update(port_env(input.ports))
        env["OPEN_BUTTON_PORT"] = str(input.ports[0])
        env["OPEN_BUTTON_TOKEN"] = derive_instance_token(
            instance_secret(self._secrets), input.label
        )
        return env, onstart

    @activity.defn(name="vast.rent")
    async def rent(self, input: RentInput) -> RentResult:
        """Rent exactly once per label: adopt an instance that already carries the label."""
        info = activity.info()
        with vast_errors(info.attempt):
            existing = await self._find_by_label(input.label)
            if existing is None and info.attempt > 1 and CREATE_SENT in info.heartbeat_details:
                existing = await self._wait_for_label(input.label)
            if existing is not None:
                activity.logger.info("adopted instance %s for %s", existing, input.label)
                return RentResult(instance_id=existing, adopted=True)
            await refuse_excluded(input)
            env, onstart = self._env(input)
            request = CreateRequest(
                image=input.image,
                disk=input.disk_gb,
                label=input.label,
                env=env,
                onstart=onstart,
                runtype=input.runtype,
            )
            activity.heartbeat(CREATE_SENT)
            try:
                instance_id = await self._client.create_instance(input.offer_id, request)
            except VastCreateFailed as exc:
                await exclude_failed_host(input)
                if exc.new_contract is not None:
                    activity.logger.warning(
                        "failed create left instance %s: destroying", exc.new_contract
                    )
                    await self._client.destroy_instance(exc.new_contract)
                raise
            except (VastRateLimited, VastRequestRejected, VastAuthError):
                # A definite refusal: nothing was created, so a retry need not wait to adopt.
                activity.heartbeat(CREATE_REFUSED)
                raise
        return RentResult(instance_id=instance_id, adopted=False)

    @activity.defn(name="vast.observe")
    async def observe(self, instance_id: int) -> Observation:
        with vast_errors(activity.info().attempt):
            return await self._listing.observe(instance_id)

    @activity.defn(name="vast.list_labelled")
    async def list_labelled(self, prefix: str) -> list[InstanceView]:
        with vast_errors(activity.info().attempt):
            return await self._listing.with_prefix(prefix)

    @activity.defn(name="vast.destroy")
    async def destroy(self, instance_id: int) -> DestroyResult:
        """Destroy and confirm: done only when show answers gone or the contract is unloaded."""
        with vast_errors(activity.info().attempt):
            accepted = await self._client.destroy_instance(instance_id)
            shown = await self._client.show_instance(instance_id)
        if shown is None or shown.cur_state == "unloaded":
            return DestroyResult(instance_id=instance_id, confirmed=True, already_gone=not accepted)
        raise ApplicationError(
            f"destroy of instance {instance_id} not confirmed yet "
            f"(cur_state {shown.cur_state}, next_state {shown.next_state})",
            type=ErrorType.DESTROY_NOT_CONFIRMED,
        )

    async def _set_state(self, instance_id: int, state: str) -> StateResult:
        """Send one state change; idempotent. Vast.ai answers a repeated stop or start with
        success; should it refuse one (a 4xx) for an instance whose `intended_status` is
        already `state`, that is success too. Gone is a result, not a failure: the slot rents
        fresh at once instead of retrying."""
        call = self._client.stop_instance if state == "stopped" else self._client.start_instance
        with vast_errors(activity.info().attempt):
            try:
                await call(instance_id)
            except VastNotFound:
                return StateResult(instance_id=instance_id, state=state, gone=True)
            except VastRequestRejected:
                shown = await self._client.show_instance(instance_id)
                if shown is None:
                    return StateResult(instance_id=instance_id, state=state, gone=True)
                if shown.intended_status != state:
                    raise
                activity.logger.info(
                    "instance %s: %s refused but already intended", instance_id, state
                )
        return StateResult(instance_id=instance_id, state=state)

    @activity.defn(name="vast.stop")
    async def stop(self, instance_id: int) -> StateResult:
        """Park: stop the instance (disk kept and billed, GPU freed). Only sends the call; the
        slot watches `vast.observe` for `actual_status` "stopped". Already stopped: success.

        On the shared provider queue (`options.stop`), not a paced queue of its own: stop and
        start share `PUT /instances/{id}/` (threshold 1.0, like the v1 list that also stays
        there), they are rare (a park or resume per slot and idle period), the client paces
        its `state` calls at 1.1 s, and a 429 is retried harmlessly since both are idempotent.
        """
        return await self._set_state(instance_id, "stopped")

    @activity.defn(name="vast.start")
    async def start(self, instance_id: int) -> StateResult:
        """Resume: ask a stopped instance to run again. Only sends the call; the slot watches
        `vast.observe` under its resume timeout (the host's GPU may have been rented meanwhile,
        then it stays `stopped` with `intended_status` "running"). Already running: success.
        The instance comes back with new host ports. Same queue as `vast.stop`."""
        return await self._set_state(instance_id, "running")

    @activity.defn(name="vast.show")
    async def show(self, instance_id: int) -> InstanceView | None:
        with vast_errors(activity.info().attempt):
            found = await self._client.show_instance(instance_id)
        return to_view(found) if found is not None else None
