"""infra.llm.replicas: least in flight first, set aside after failures, probed with a doubling
back-off; and the OpenAI client over two simulator replicas, one stopped midway."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from ultrafeedback.infra.llm.base import LLMRequest, LLMResult
from ultrafeedback.infra.llm.openai_compat import OpenAICompatBackend
from ultrafeedback.infra.llm.replicas import ReplicaSet, is_replica_failure
from ultrafeedback.infra.simulator import Simulator, SimulatorConfig


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def replicas(count: int = 2, **kwargs) -> tuple[ReplicaSet, Clock]:
    clock = Clock()
    return ReplicaSet([f"http://r{i}/v1" for i in range(count)], clock=clock, **kwargs), clock


def test_requests_go_to_the_replica_with_fewest_in_flight_ties_in_turn() -> None:
    pool, _ = replicas(3)
    first = [pool.pick().url for _ in range(3)]
    assert sorted(first) == ["http://r0/v1", "http://r1/v1", "http://r2/v1"]  # each gets one
    busy = pool.replicas[0]
    pool.done(pool.replicas[1], None)  # r1 frees a slot: it has the fewest now
    assert pool.pick().url == "http://r1/v1"
    assert busy.in_flight == 1


@pytest.mark.parametrize("reason", ["connection", "timeout", "http_500", "http_503"])
def test_consecutive_replica_failures_set_it_aside(reason: str) -> None:
    assert is_replica_failure(reason)
    pool, clock = replicas(2, max_failures=3, backoff_s=5.0)
    bad = pool.replicas[0]
    for _ in range(3):
        bad.in_flight += 1
        pool.done(bad, reason)
    assert bad.aside_until == clock.now + 5.0
    assert [pool.pick().url for _ in range(4)] == ["http://r1/v1"] * 4


@pytest.mark.parametrize("reason", ["http_429", "http_400", "malformed_response", ""])
def test_failures_of_the_request_not_the_replica_do_not_count(reason: str) -> None:
    pool, _ = replicas(2, max_failures=1)
    bad = pool.replicas[0]
    bad.in_flight += 1
    pool.done(bad, reason)
    assert bad.aside_until == 0.0 and bad.failures == 0


def test_a_success_clears_the_failure_count() -> None:
    pool, _ = replicas(2, max_failures=2)
    r0 = pool.replicas[0]
    for reason in ("connection", None, "connection"):
        r0.in_flight += 1
        pool.done(r0, reason)
    assert r0.aside_until == 0.0 and r0.failures == 1


def test_a_set_aside_replica_is_probed_by_one_request_and_its_back_off_doubles() -> None:
    pool, clock = replicas(2, max_failures=1, backoff_s=2.0)
    r0, r1 = pool.replicas
    r0.in_flight += 1
    pool.done(r0, "connection")
    clock.now += 2.0  # due: the next request probes it, the others keep to r1
    probe = pool.pick()
    assert probe is r0 and r0.probing
    assert [pool.pick() for _ in range(3)] == [r1, r1, r1]
    pool.done(r0, "connection")  # the probe failed: 4 s now
    assert r0.aside_until == clock.now + 4.0 and not r0.probing
    clock.now += 4.0
    assert pool.pick() is r0
    pool.done(r0, None)  # the probe answered: back in service, the back-off starts over
    assert r0.aside_until == 0.0 and r0.doublings == -1
    assert pool.pick() is r0  # fewest in flight again (r1 holds 3)


def test_a_failed_attempt_goes_to_another_replica_and_to_the_due_one_when_all_are_aside() -> None:
    pool, clock = replicas(2, max_failures=1, backoff_s=1.0)
    r0, r1 = pool.replicas
    assert pool.pick(avoid=r0) is r1 and pool.pick(avoid=r0) is r1  # r0 idle, yet avoided
    assert pool.available(r0)
    pool.done(r0, "connection") if r0.in_flight else None
    r0.in_flight += 1
    pool.done(r0, "connection")
    clock.now += 0.5
    r1.aside_until = clock.now + 10.0  # both aside now: r0 is due first
    assert not pool.available(None)
    assert pool.pick() is r0


# --------------------------------------------------------------------------- the client, two real replicas


def _requests(count: int) -> list[LLMRequest]:
    return [
        LLMRequest(key=f"k{i}", model="sim-model", messages=[{"role": "user", "content": f"question {i}"}])
        for i in range(count)
    ]


def _answered(sim: Simulator) -> Counter[str]:
    """Per request body, how many times the replica answered it with 200 (what ``GET /stats/bodies``
    serves; read from the simulator's record, as a stopped one serves nothing)."""
    state = sim._state
    assert state is not None
    with state.lock:
        return Counter(
            {digest: sum(1 for *_, status in entries if status == 200) for digest, entries in state.bodies.items()}
        )


def test_a_replica_stopped_midway_loses_nothing_and_nothing_answered_is_sent_again() -> None:
    config = SimulatorConfig(latency_ms=20, record_bodies=True)
    total, stop_after = 240, 60
    with Simulator(config) as a, Simulator(config) as b:
        backend = OpenAICompatBackend(
            "replicated", [a.url, b.url], max_in_flight=16, timeout_s=5, max_retries=3,
            backoff_base_s=0.05, backoff_max_s=0.2, replica_max_failures=2, replica_backoff_s=30,
        )  # fmt: skip
        results: list[LLMResult] = []
        stopped = threading.Event()

        def on_result(result: LLMResult) -> None:
            results.append(result)
            if len(results) == stop_after:
                assert a.stats()["statuses"].get("200", 0) > 0  # A served its share before it went away
                stopped.set()
                a.stop()  # its requests on the wire finish or are cut; new connections are refused

        try:
            backend.run(_requests(total), on_result)
        finally:
            backend.close()
        assert stopped.is_set()
        a_answered, b_answered = _answered(a), _answered(b)
    # nothing lost: every request answered once, to the caller
    assert sorted(r.key for r in results) == sorted(f"k{i}" for i in range(total))
    assert all(r.ok for r in results), Counter(r.reason for r in results)
    # nothing that had an answer was sent again: each body answered by exactly one replica, once
    answered = a_answered + b_answered
    assert len(answered) == total and set(answered.values()) == {1}
    assert sum(a_answered.values()) >= 1 and sum(b_answered.values()) > total - stop_after
    stats = backend.stats()
    assert stats["requests"] == total and stats.get("failed", 0) == 0
    assert stats["attempts"] > total  # some were cut on A and sent again to B


def test_setting_a_replica_aside_and_its_return_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    pool, clock = replicas(2, max_failures=1, backoff_s=2.0)
    r0 = pool.replicas[0]
    r0.in_flight += 1
    with caplog.at_level("WARNING", logger="ultrafeedback.infra.llm.replicas"):
        pool.done(r0, "http_502")
        clock.now += 2.0
        pool.done(pool.pick(), None)
    assert [r.getMessage() for r in caplog.records] == [
        "replica http://r0/v1 set aside after 1 failures in a row (last: http_502); probed again in 2 s",
        "replica http://r0/v1 answers again: back in service",
    ]
