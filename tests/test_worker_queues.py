"""Which provider task queues does a worker serve, at which server-side rates, with what on them?

Search, create and destroy each get a queue started at most once per Vast.ai interval across
every worker; every other provider call stays on `<queue>-vast`.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from activities import build_activities
from tests.helpers import new_queue
from warmpool import queues
from warmpool.queues import CREATE_QUEUE, DESTROY_QUEUE, PACED_QUEUES, SEARCH_QUEUE
from warmpool.secrets import EnvSecretStore
from warmpool.settings import Settings
from worker import STICKY_SCHEDULE_TO_START, create_workers, paced_rate
from workflows import options


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings from their defaults: no `.env`, no variables another test left behind."""
    monkeypatch.chdir(tmp_path)
    prefixes = ("WARMPOOL_", "WARM_POOL_", "COMFYUI_", "TOKEN_", "SSH_", "VASTAI_", "TEMPORAL_")
    for name in list(os.environ):
        if name.startswith(prefixes):
            monkeypatch.delenv(name)


def test_activity_options_name_their_queues() -> None:
    assert options.search("q")["task_queue"] == "q-vast-search"
    assert options.rent("q")["task_queue"] == "q-vast-create"
    assert options.destroy("q")["task_queue"] == "q-vast-destroy"
    assert options.vast("q")["task_queue"] == "q-vast"
    assert options.observe("q")["task_queue"] == "q-vast"
    assert queues.provider_queues("q") == [
        "q-vast",
        "q-vast-search",
        "q-vast-create",
        "q-vast-destroy",
    ]


def test_observe_gives_control_back_quickly() -> None:
    policy = options.observe("q")["retry_policy"]
    assert policy.maximum_attempts == 3
    assert policy.maximum_interval is not None and policy.maximum_interval <= timedelta(seconds=5)
    assert options.vast("q")["retry_policy"] is options.VAST_RETRY


def test_paced_rates_follow_the_intervals() -> None:
    settings = Settings()
    assert paced_rate(settings, SEARCH_QUEUE) == pytest.approx(1 / 6.5)
    assert paced_rate(settings, CREATE_QUEUE) == pytest.approx(1 / 5.0)
    assert paced_rate(settings, DESTROY_QUEUE) == pytest.approx(1 / 3.3)
    fast = Settings(vast_pacing_scale=0.1)
    assert paced_rate(fast, SEARCH_QUEUE) == pytest.approx(1 / 0.65)
    assert paced_rate(Settings(vast_pacing_scale=0), SEARCH_QUEUE) is None


async def test_workers_per_queue(dev_env: WorkflowEnvironment) -> None:
    settings = Settings(vast_calls_per_second=3.0)
    acts = build_activities(settings, EnvSecretStore({}), vast_base_url="http://x.test/api/v0")
    try:
        assert acts.client._min_intervals["bundles"] == 6.5  # paced by default
        queue = new_queue()
        workers = create_workers(dev_env.client, settings, acts, task_queue=queue)
        configs = {w.task_queue: w.config() for w in workers}
        assert list(configs) == [queue, *queues.provider_queues(queue)]
        main = configs[queue]
        assert main["sticky_queue_schedule_to_start_timeout"] == STICKY_SCHEDULE_TO_START
        assert STICKY_SCHEDULE_TO_START < timedelta(seconds=10)
        assert configs[queues.vast_queue(queue)]["max_task_queue_activities_per_second"] == 3.0
        assert len(configs[queues.vast_queue(queue)]["activities"]) == len(acts.vast)
        for paced in PACED_QUEUES:
            config = configs[paced.name(queue)]
            rate = config["max_task_queue_activities_per_second"]
            assert rate == pytest.approx(paced_rate(settings, paced))
            names = [fn.__temporal_activity_definition.name for fn in config["activities"]]  # type: ignore[attr-defined]
            assert names == [paced.activity]
    finally:
        await acts.aclose()
