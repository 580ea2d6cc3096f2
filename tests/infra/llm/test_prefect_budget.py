"""infra.llm.prefect_budget: an endpoint's budgets on the Prefect server, shared by processes that
have nothing in common but the Prefect API (as on two machines): two worker processes against the
simulator, and the limits as the server shows them."""

from __future__ import annotations

import asyncio

import pytest

from tests.infra.llm.test_shared_budget import _arrivals, _workers
from ultrafeedback.infra.simulator import Simulator, SimulatorConfig

PREFECT = {"budget_dir": "prefect"}


@pytest.fixture
def prefect_api(prefect_harness) -> str:
    """The test harness's Prefect API URL, for processes started from the test."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url
    return url


def _limits() -> dict[str, tuple[int, float]]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {
            limit.name: (limit.limit, limit.slot_decay_per_second or 0.0)
            for limit in client.read_global_concurrency_limits(limit=200)
            if limit.name.startswith("ultrafeedback-budget-")
        }


def test_two_processes_keep_the_requests_per_minute_through_the_prefect_server(prefect_api: str) -> None:
    rpm, per_worker = 900, 90  # 15/s together: 180 requests take ~12 s (6 s if each kept its own budget)
    with Simulator(SimulatorConfig(latency_ms=5, record_bodies=True)) as sim:
        endpoint = {"requests_per_minute": rpm, "max_in_flight": 16}
        _workers(sim.url, per_worker, endpoint, PREFECT, env={"PREFECT_API_URL": prefect_api})
        came = _arrivals(sim)
    assert len(came) == 2 * per_worker
    burst = 2 * max(int(rpm / 60), 1)  # the limit's one second, and a quarter of it taken by each process
    rate = (len(came) - burst - 1) / (came[-1] - came[burst])
    assert rate <= rpm / 60 * 1.05, f"{rate * 60:.0f} requests a minute, the budget is {rpm}"
    # used, not one server round trip per request (how much of it depends on the server's latency: the
    # test harness's SQLite server on a busy 2-core box gave 450-700 a minute)
    assert rate >= rpm / 60 * 0.3, f"{rate * 60:.0f} requests a minute: the budget is not used"
    requests = [name for name in _limits() if name.endswith("-requests")]
    assert len(requests) == 1 and _limits()[requests[0]] == (15, 15.0)  # one second's worth, 15 a second


def test_two_processes_keep_the_in_flight_budget_through_the_prefect_server(prefect_api: str) -> None:
    with Simulator(SimulatorConfig(latency_ms=150)) as sim:
        _workers(sim.url, 20, {"max_in_flight": 3}, PREFECT, env={"PREFECT_API_URL": prefect_api})
        stats = sim.stats()
    assert stats["total"] == 40
    assert stats["max_in_flight"] == 3  # reached, never passed, by the two processes together


def test_the_tokens_budget_is_drawn_in_takes_no_larger_than_the_limit(prefect_api: str) -> None:
    from ultrafeedback.infra.llm.prefect_budget import PrefectRateLimiter, limit_name

    limiter = PrefectRateLimiter("tokens-test", None, 6000)  # 100 tokens a second, a limit of 100
    assert _limits()[limit_name("tokens-test", "tokens")] == (100, 100.0)

    async def spend() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await limiter.acquire(250)  # more than the limit holds: drawn in three takes
        return loop.time() - started

    assert 1.0 <= asyncio.run(spend()) <= 6.0
