"""infra.checkpoint.Checkpointer on a real Store: when parts are written, where results and
failures go, the tail on exit, concurrent writers and the counters."""

from __future__ import annotations

import threading
import types

import pytest

import ultrafeedback.infra.checkpoint as checkpoint
from ultrafeedback.infra.checkpoint import Checkpointer, failure_log
from ultrafeedback.infra.store import ResultLog, Store
from ultrafeedback.records import Completion, Failure


def completion(i: int) -> Completion:
    return Completion(request_id=f"r{i:05d}", instruction_id=f"i{i}", model="m", response=f"answer {i}")


def failure(i: int, reason: str = "http_500") -> Failure:
    return Failure(stage="completions", key=f"f{i:05d}", shard=3, reason=reason, error="boom", attempts=2, at=0.0)


def raw_keys(log: ResultLog) -> list[str]:
    """Every key of every part, repeats included (``ResultLog.read`` would hide a row written twice)."""
    keys: list[str] = []
    for part in log.parts():
        keys += log.store.read_table(f"{log.stage}/{part}", [log.key]).column(log.key).to_pylist()
    return keys


class Clock:
    """A stand-in for the ``time`` module of infra.checkpoint: ``monotonic`` moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(str(tmp_path / "store"), "ds")


@pytest.fixture
def logs(store) -> tuple[ResultLog, ResultLog]:
    return store.log("completions"), store.log("failures/completions")


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(checkpoint, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


def test_failure_log_is_the_registered_failures_output(store):
    log = failure_log(store, "completions")
    assert (log.stage, log.model, log.key) == ("failures/completions", Failure, "key")


def test_a_part_is_written_every_n_results(logs, clock):
    results, failures = logs
    cp = Checkpointer(results, failures, every=3, max_seconds=60)
    sizes = []
    for i in range(7):
        cp.add(completion(i))
        sizes.append(len(results.parts()))
    assert sizes == [0, 0, 1, 1, 1, 2, 2]
    assert sorted(raw_keys(results)) == [f"r{i:05d}" for i in range(6)]  # the 7th waits in the buffer


def test_failures_count_towards_every(logs, clock):
    results, failures = logs
    cp = Checkpointer(results, failures, every=3, max_seconds=60)
    cp.add(completion(0))
    cp.fail(failure(0))
    assert results.parts() == [] and failures.parts() == []
    cp.fail(failure(1))
    assert raw_keys(results) == ["r00000"]
    assert sorted(raw_keys(failures)) == ["f00000", "f00001"]


def test_a_part_is_written_once_max_seconds_have_passed(logs, clock):
    results, failures = logs
    cp = Checkpointer(results, failures, every=100, max_seconds=10)
    cp.add(completion(0))
    clock.now += 9.9
    cp.add(completion(1))
    assert results.parts() == []
    clock.now += 0.1
    cp.add(completion(2))
    assert sorted(raw_keys(results)) == ["r00000", "r00001", "r00002"]
    clock.now += 5  # the clock restarts at each write
    cp.add(completion(3))
    assert len(results.parts()) == 1


def test_results_and_failures_go_to_their_own_logs_labelled_with_the_shard(logs, clock):
    results, failures = logs
    with Checkpointer(results, failures, every=100, label="s00003") as cp:
        cp.add(completion(0))
        cp.fail(failure(0))
    assert len(results.parts()) == 1 and len(failures.parts()) == 1
    assert [ResultLog.label_of(p) for p in results.parts() + failures.parts()] == ["s00003", "s00003"]
    assert [r["request_id"] for r in results.rows()] == ["r00000"]
    assert [(f["key"], f["reason"]) for f in failures.rows()] == [("f00000", "http_500")]


def test_leaving_the_block_writes_the_tail(logs, clock):
    results, failures = logs
    with Checkpointer(results, failures, every=100) as cp:
        for i in range(5):
            cp.add(completion(i))
        cp.fail(failure(0))
        assert results.parts() == [] and failures.parts() == []
    assert sorted(raw_keys(results)) == [f"r{i:05d}" for i in range(5)]
    assert raw_keys(failures) == ["f00000"]


def test_the_tail_is_written_when_the_block_raises(logs, clock):
    results, failures = logs
    with pytest.raises(RuntimeError, match="worker killed"):
        with Checkpointer(results, failures, every=100) as cp:
            cp.add(completion(0))
            raise RuntimeError("worker killed")
    assert raw_keys(results) == ["r00000"]


def test_flushing_an_empty_buffer_writes_no_part(logs, clock):
    results, failures = logs
    cp = Checkpointer(results, failures, every=2)
    cp.add(completion(0))
    cp.add(completion(1))  # written here
    cp.flush()
    cp.flush()
    assert len(results.parts()) == 1 and failures.parts() == []


def test_concurrent_writers_store_every_row_once(logs):
    results, failures = logs
    threads_n, per_thread = 8, 150
    cp = Checkpointer(results, failures, every=7, max_seconds=60)
    start = threading.Barrier(threads_n)

    def writer(t: int) -> None:
        start.wait()
        for j in range(per_thread):
            n = t * per_thread + j
            if j % 10 == 0:
                cp.fail(failure(n, reason=f"r{t % 2}"))
            else:
                cp.add(completion(n))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cp.flush()
    stored, failed = raw_keys(results), raw_keys(failures)
    expected_failed = {f"f{t * per_thread + j:05d}" for t in range(threads_n) for j in range(0, per_thread, 10)}
    expected_ok = {f"r{n:05d}" for n in range(threads_n * per_thread)} - {k.replace("f", "r") for k in expected_failed}
    assert len(stored) == len(set(stored)) and set(stored) == expected_ok
    assert len(failed) == len(set(failed)) and set(failed) == expected_failed
    assert cp.ok == len(expected_ok) and sum(cp.failed_by_reason.values()) == len(expected_failed)


def test_counts_ok_and_failures_by_reason(logs, clock):
    results, failures = logs
    cp = Checkpointer(results, failures, every=2)
    for i in range(3):
        cp.add(completion(i))
    cp.fail(failure(0, "http_500"))
    cp.fail(failure(1, "timeout"))
    cp.fail(failure(2, "http_500"))
    assert cp.ok == 3
    assert cp.failed_by_reason == {"http_500": 2, "timeout": 1}
