"""The aggregate gate on what ``tasks.aggregate.aggregate`` really produces, called as the flow does.

``test_suites.py`` covers every check on a hand-built leaderboard; here the leaderboard comes from
Dask over scored Parquet, so a renamed column in ``aggregate`` fails these tests, not a build.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from ultrafeedback.expectations.gate import GateContext, GateResult, run_gate
from ultrafeedback.infra.store import rows_table
from ultrafeedback.records import ASPECTS, ScoredCompletion
from ultrafeedback.spec import Spec, validate_dict
from ultrafeedback.tasks.aggregate.aggregate import aggregate

POOL = ["alpha", "beta", "gamma"]


def _spec(**judge: Any) -> Spec:
    return validate_dict(
        {
            "name": "demo",
            "sources": [{"name": "flan", "loader": "jsonl", "path": "x.jsonl"}],
            "models": [{"id": model, "backend": "embedded"} for model in POOL],
            "completions_per_instruction": len(POOL),
            "judge": judge,
            # without critiques there is no overall score for the H4 rule to rank by
            "binarize": {"rule": "h4" if judge.get("critique", True) else "argilla"},
        }
    )


def _scored(n_instructions: int = 4, critique: bool = True) -> list[ScoredCompletion]:
    rows = []
    for i in range(n_instructions):
        for position, model in enumerate(POOL):
            ratings = {aspect: str(1 + (i + position + j) % 5) for j, aspect in enumerate(ASPECTS)}
            if (i, position) == (0, 0):
                ratings["honesty"] = "N/A"
            numeric = [float(v) for v in ratings.values() if v != "N/A"]
            rows.append(
                ScoredCompletion(
                    completion_id=f"ins{i}-{position}",
                    instruction_id=f"ins{i}",
                    source="flan",
                    instruction="Explain something.",
                    correct_answers=["None"],
                    incorrect_answers=["None"],
                    models=POOL,
                    position=position,
                    model=model,
                    principle="helpfulness",
                    system_prompt="",
                    response="An answer.",
                    critique="Fine." if critique else None,
                    overall_score=float(1 + (i + position) % 10) if critique else None,
                    fine_grained_score=sum(numeric) / len(numeric),
                    judge_model="heuristic-v1",
                    judge_kind="heuristic",
                    **{f"{aspect}_rating": rating for aspect, rating in ratings.items()},
                    **{f"{aspect}_rationale": "Because." for aspect in ratings},
                )
            )
    return rows


def _leaderboard(folder: Path, rows: list[ScoredCompletion], parts: int = 1) -> pd.DataFrame:
    """Write ``rows`` as ``parts`` copies of one Parquet part, aggregate, and return the leaderboard
    as the flow has it: ``aggregate_task`` returns ``AggregateResult.to_dict()`` (JSON-able)."""
    folder.mkdir(exist_ok=True)
    table = rows_table(rows, ScoredCompletion)
    for part in range(parts):
        pq.write_table(table, folder / f"part-{part}.parquet")
    aggregated = json.loads(json.dumps(aggregate(str(folder), {}, None).to_dict()))
    return pd.DataFrame(aggregated["leaderboard"])


def _gate(spec: Spec, leaderboard: pd.DataFrame, scored: int) -> GateResult:
    return run_gate("aggregate", leaderboard, GateContext.from_spec(spec, expected_completions=scored))


def test_a_real_leaderboard_passes(tmp_path: Path) -> None:
    rows = _scored()
    result = _gate(_spec(), _leaderboard(tmp_path / "scored", rows), len(rows))
    assert result.passed, result.summary()
    assert result.row_count == len(POOL)
    names = {check.name for check in result.checks}
    assert {"columns present", "mean_overall in [1, 10]", "completions sum to expected"} <= names
    assert {f"mean_{aspect} in [1, 5]" for aspect in ASPECTS} <= names


def test_a_real_leaderboard_without_critiques_passes(tmp_path: Path) -> None:
    # mean_overall is all null: a JSON column of None, which the gate does not range-check.
    rows = _scored(critique=False)
    leaderboard = _leaderboard(tmp_path / "scored", rows)
    assert leaderboard["mean_overall"].isna().all()
    result = _gate(_spec(critique=False, aspects=["honesty", "helpfulness"]), leaderboard, len(rows))
    assert result.passed, result.summary()


def test_rows_read_twice_fail_the_total(tmp_path: Path) -> None:
    # Two copies of one part (a stray file next to the shards): every row looks valid, the sum does not.
    rows = _scored()
    result = _gate(_spec(), _leaderboard(tmp_path / "scored", rows, parts=2), len(rows))
    assert [check.name for check in result.failed] == ["completions sum to expected"]
    assert result.check("completions sum to expected").observed == 2 * len(rows)


def test_a_model_outside_the_pool_fails(tmp_path: Path) -> None:
    rows = _scored()
    rows[0] = rows[0].model_copy(update={"model": "gpt-9"})
    result = _gate(_spec(), _leaderboard(tmp_path / "scored", rows), len(rows))
    assert [check.name for check in result.failed] == ["model in pool"]
    assert result.check("model in pool").examples == ["gpt-9"]


def test_an_empty_leaderboard_fails_in_one_line_with_the_failure_reasons() -> None:
    failures = {"completions:http_500": 12, "completions:timeout": 2}
    ctx = GateContext.from_spec(_spec(), expected_completions=0, failures=failures)
    result = run_gate("aggregate", pd.DataFrame([]), ctx)
    assert not result.passed
    assert result.summary() == (
        "gate 'aggregate' failed: models scored: no completion was scored; "
        "failed requests: completions:http_500 12, completions:timeout 2"
    )
