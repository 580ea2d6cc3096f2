"""Shard tasks run at most ``execution.parallel_shards`` at a time, and every report comes back."""

from __future__ import annotations

import threading
import time

import pytest
from prefect import flow, task
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.build import MAX_PARALLEL_SHARDS, BuildSummary, _run_shards
from ultrafeedback.spec import validate_dict

_lock = threading.Lock()
_state: dict = {"running": 0, "peak": 0, "started": set()}


@task(task_run_name="fake-shard-{shard}")
def fake_shard(spec, shard: int, run_id: str):
    with _lock:
        _state["started"].add(shard)
        _state["running"] += 1
        _state["peak"] = max(_state["peak"], _state["running"])
    time.sleep(0.2)
    with _lock:
        _state["running"] -= 1
    if shard == 4 and run_id == "crash":
        raise RuntimeError("worker lost")
    report = {"stage": "fake", "shard": shard, "issued": 1, "failed": {}, "tokens": {}}
    return Failed(message="1 failed", data=report) if shard == 2 else report


def spec_with(parallel: int):
    return validate_dict(
        {
            "name": "t",
            "sources": [{"name": "s", "loader": "jsonl", "path": "x"}],
            "models": [{"id": "m", "backend": "embedded"}],
            "completions_per_instruction": 1,
            "execution": {"parallel_shards": parallel},
        }
    )


@pytest.mark.parametrize("parallel", [1, 3])
def test_parallel_shards_bounds_concurrency(prefect_harness, parallel):
    _state.update(running=0, peak=0)

    @flow(task_runner=ThreadPoolTaskRunner(MAX_PARALLEL_SHARDS))
    def run():
        return _run_shards(fake_shard, spec_with(parallel), list(range(6)), "run", BuildSummary())

    reports = run()
    assert sorted(r["shard"] for r in reports) == list(range(6))  # the Failed shard's report too
    assert _state["peak"] == parallel


def test_a_crashed_shard_stops_new_shards_and_keeps_the_finished_reports(prefect_harness):
    _state.update(running=0, peak=0, started=set())
    summary = BuildSummary()

    @flow(task_runner=ThreadPoolTaskRunner(MAX_PARALLEL_SHARDS))
    def run():
        return _run_shards(fake_shard, spec_with(2), list(range(8)), "crash", summary)

    with pytest.raises(RuntimeError, match="worker lost"):
        run()
    # the shards that finished before and beside the crash are counted; no shard starts after it
    started = _state["started"]
    assert {0, 1, 2, 3, 4} <= started and 7 not in started
    assert summary.issued["fake"] == len(started) - 1
