"""The aggregate stage's gate facts: why nothing was scored, from the store's failure logs."""

from __future__ import annotations

from pathlib import Path

from ultrafeedback.infra.checkpoint import failure_log
from ultrafeedback.infra.store import Store
from ultrafeedback.records import Completion, Failure
from ultrafeedback.tasks.aggregate.task import top_failures


def failure(stage: str, key: str, reason: str) -> Failure:
    return Failure(stage=stage, key=key, shard=0, reason=reason, error="...", attempts=3, at=0.0)


def test_top_failures_counts_open_failures_by_output_and_reason(tmp_path: Path) -> None:
    store = Store(str(tmp_path), "ds")
    failure_log(store, "completions").append(
        [failure("generate", f"r{i}", "http_500") for i in range(3)] + [failure("generate", "r9", "timeout")]
    )
    failure_log(store, "annotations").append([failure("annotate", "a1", "parse_block_count")])
    # r0 failed once but was answered since: no longer a failure
    store.log("completions").append([Completion(request_id="r0", instruction_id="i", model="m", response="ok")])
    assert top_failures(store) == {
        "completions:http_500": 2,
        "completions:timeout": 1,
        "annotations:parse_block_count": 1,
    }
    assert top_failures(store, top=1) == {"completions:http_500": 2}
    assert top_failures(Store(str(tmp_path), "empty")) == {}
