"""A failed gate over an empty table says in one line which stage produced nothing and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from ultrafeedback.expectations.models import NOTHING_PRODUCED, CheckResult, GateFailed, GateResult, enforce
from ultrafeedback.infra.checkpoint import failure_log
from ultrafeedback.infra.store import Store
from ultrafeedback.records import Failure, Quarantined
from ultrafeedback.spec import validate_dict
from ultrafeedback.tasks.empty_stage import why_empty, with_reason_if_empty
from ultrafeedback.tasks.stages import Run


def make_run(tmp_path: Path, **changes: Any) -> Run:
    spec = validate_dict(
        {
            "name": "e",
            "store": str(tmp_path / "store"),
            "sources": [{"name": "s", "loader": "jsonl", "path": "x"}],
            "models": [{"id": f"m{i}", "backend": "embedded"} for i in range(2)],
            "completions_per_instruction": 2,
            **changes,
        }
    )
    return Run(spec, Store(str(tmp_path / "store"), "e"), "run")


def empty_gate(stage: str) -> GateResult:
    count = CheckResult(name="row count", passed=False, observed=0, expected=">= 1", detail="0 rows (expected >= 1)")
    return GateResult(stage=stage, suite=stage, passed=False, checks=[count], row_count=0, duration_s=0.0)


def test_ingest_names_what_was_quarantined_and_dropped(tmp_path: Path):
    run = make_run(tmp_path)
    assert why_empty(run, "ingest") == "ingest produced no instruction: the sources hold no record"
    bad = [Quarantined(source="s", origin=f"x:{i}", reason=r, detail="") for i, r in enumerate("aab")]
    run.store.log("quarantine").replace(bad)
    run.store.log("dropped").replace([Quarantined(source="s", origin="x:9", reason="duplicate", detail="")])
    assert why_empty(run, "ingest") == (
        "ingest produced no instruction: every record read was quarantined or dropped: 3 quarantined (a 2, b 1), "
        "1 dropped (duplicate 1) (`ultrafeedback status SPEC` lists them)"
    )


def test_generate_names_the_failures_of_its_requests(tmp_path: Path):
    run = make_run(tmp_path)
    assert why_empty(run, "generate") == "generate produced no completion: no request was made"
    failures = [Failure(stage="completions", key="r0", shard=0, reason="http_500", error="", attempts=1, at=0.0)]
    failure_log(run.store, "completions").append(failures, label="s00000")
    assert (
        why_empty(run, "generate") == "generate produced no completion: every request failed (completions:http_500 1)"
    )


def write_scored(run: Run, scores: list[tuple[str, float | None]]) -> None:
    run.store.write_bytes("instructions/shard-00000.parquet", b"")
    table = pa.table({"instruction_id": [i for i, _ in scores], "fine_grained_score": [s for _, s in scores]})
    run.store.write_shard("scored/shard-00000.parquet", table, "fp")


@pytest.mark.parametrize(
    ("scores", "why"),
    [
        ([], "no completion was scored"),
        (
            [("a", 4.0), ("a", None), ("b", None)],
            "no instruction has two completions with a fine_grained score (1 of 3 scored completions have one)",
        ),
        ([("a", 4.0), ("a", 4.0)], "every instruction's completions tie on the fine_grained score"),
    ],
)
def test_pairs_says_why_no_two_completions_could_be_paired(tmp_path: Path, scores: list[Any], why: str):
    run = make_run(tmp_path)
    if scores:
        write_scored(run, scores)
    assert why_empty(run, "pairs") == f"pairs produced no pair: {why}"


def test_binarize_names_why_it_left_every_instruction_out(tmp_path: Path):
    run = make_run(tmp_path)
    run.facts["pairs"] = {"binarize_dropped": {"fewer_than_2_scored": 5, "identical_completions": 1}}
    assert why_empty(run, "binarized") == (
        "binarize (h4 rule) produced no row: every instruction was left out (fewer_than_2_scored 5, "
        "identical_completions 1)"
    )


def test_the_gates_line_is_the_reason_alone(tmp_path: Path):
    run = make_run(tmp_path)
    result = with_reason_if_empty(run, "pairs", empty_gate("pairs"))
    assert result.checks[0].name == NOTHING_PRODUCED and len(result.checks) == 2
    with pytest.raises(GateFailed) as stopped:
        enforce(result)
    assert str(stopped.value) == "gate 'pairs' failed: pairs produced no pair: no completion was scored"


def test_a_gate_with_rows_or_one_that_passed_is_left_as_it_is(tmp_path: Path):
    run = make_run(tmp_path)
    with_rows = empty_gate("pairs").model_copy(update={"row_count": 3})
    assert with_reason_if_empty(run, "pairs", with_rows) is with_rows
    passed = empty_gate("pairs").model_copy(update={"passed": True})
    assert with_reason_if_empty(run, "pairs", passed) is passed
    aggregate = empty_gate("aggregate")  # its suite says why itself ("models scored")
    assert with_reason_if_empty(run, "aggregate", aggregate) is aggregate
