"""Shard tasks run at most ``execution.parallel_shards`` at a time, and every report comes back."""

from __future__ import annotations

import threading
import time

import pytest
from prefect import flow, task
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.build import MAX_PARALLEL_SHARDS, _run_shards
from ultrafeedback.spec import validate_dict

_lock = threading.Lock()
_state = {"running": 0, "peak": 0}


@task(task_run_name="fake-shard-{shard}")
def fake_shard(spec, shard: int):
    with _lock:
        _state["running"] += 1
        _state["peak"] = max(_state["peak"], _state["running"])
    time.sleep(0.2)
    with _lock:
        _state["running"] -= 1
    report = {"shard": shard}
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
        return _run_shards(fake_shard, spec_with(parallel), list(range(6)))

    reports = run()
    assert sorted(r["shard"] for r in reports) == list(range(6))  # the Failed shard's report too
    assert _state["peak"] == parallel
