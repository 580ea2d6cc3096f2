"""A stage's gate over shards: shard results merged (row checks judged on all rows together) plus
whole-stage summary checks."""

from __future__ import annotations

import pandas as pd
import pytest

from ultrafeedback.expectations.gate import run_gate
from ultrafeedback.expectations.models import CheckResult, GateContext, GateResult
from ultrafeedback.expectations.summary import count_check, merge, rate_check, unique_keys_check
from ultrafeedback.keys import text_hash
from ultrafeedback.spec import Gates


def completions(n: int, empty: int, model: str = "m1") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": [f"{model}-r{i}" for i in range(n)],
            "instruction_id": [f"i{i}" for i in range(n)],
            "model": [model] * n,
            "response": ["" if i < empty else f"text {i}" for i in range(n)],
            "response_hash": [text_hash("" if i < empty else f"text {i}") for i in range(n)],
            "finish_reason": ["stop"] * n,
            "input_tokens": [1] * n,
            "output_tokens": [1] * n,
            "latency_s": [0.1] * n,
            "backend": ["openai"] * n,
            "prompt_template": ["server"] * n,
        }
    )


def shard_context(rate: float = 0.9) -> GateContext:
    return GateContext(gates=Gates(min_generation_success=rate), k=4, allowed_models=["m1", "m2"], scope="shard")


def test_shard_scope_leaves_out_row_counts_and_stage_rates():
    result = run_gate("generate", completions(3, 0), shard_context())
    names = {check.name for check in result.checks}
    assert "row count" not in names and "generation success rate" not in names
    assert "response not empty" in names


def test_a_shard_below_a_mostly_threshold_passes_when_the_stage_is_above_it():
    # 2 of 10 empty in one shard (80%) and 0 of 30 in the other: 38/40 = 95% >= 90%
    low = run_gate("generate", completions(10, 2), shard_context())
    high = run_gate("generate", completions(30, 0, "m2"), shard_context())
    assert not low.check("response not empty").passed
    merged = merge("generate", "ultrafeedback.generate", [low, high], [])
    check = merged.check("response not empty")
    assert check.passed and check.observed == 2 and check.evaluated == 40
    assert "2 of 40" in check.detail
    assert merged.passed and merged.row_count == 40


def test_the_merged_threshold_fails_when_all_shards_together_are_below_it():
    shards = [run_gate("generate", completions(10, 2), shard_context()) for _ in range(3)]
    merged = merge("generate", "ultrafeedback.generate", shards, [])
    assert not merged.passed
    assert merged.check("response not empty").observed == 6


def test_a_check_without_a_threshold_fails_when_any_shard_failed():
    good = run_gate("generate", completions(3, 0), shard_context())
    bad = run_gate("generate", completions(3, 0, "m9"), shard_context())  # not in the pool
    merged = merge("generate", "ultrafeedback.generate", [good, bad], [])
    failed = [check.name for check in merged.failed]
    assert failed == ["model in pool"]


def test_summary_checks_are_added_after_the_shards_checks():
    shard = run_gate("generate", completions(3, 0), shard_context())
    summary = [count_check("row count", 3, low=4, high=4), rate_check("generation success rate", 3, 4, 0.9, "ok")]
    merged = merge("generate", "ultrafeedback.generate", [shard], summary)
    assert [c.name for c in merged.checks][-2:] == ["row count", "generation success rate"]
    assert [c.name for c in merged.failed] == ["row count", "generation success rate"]
    assert merged.check("row count").detail == "3 rows (expected exactly 4)"


def test_a_stage_that_produced_nothing_fails_its_summary():
    merged = merge("ingest", "ultrafeedback.ingest", [], [count_check("enough instructions", 0, low=1)])
    assert not merged.passed and merged.row_count == 0


@pytest.mark.parametrize(
    ("keys", "passed", "examples"),
    [(["a", "b", "c"], True, []), (["a", "b", "a", "c", "b"], False, ["a", "b"])],
)
def test_unique_keys_across_shards(keys, passed, examples):
    check = unique_keys_check("request_id", keys)
    assert check.passed is passed and check.examples == examples


def test_rate_check_of_an_empty_stage_passes():
    assert rate_check("rate", 0, 0, 0.9, "units").passed


def test_merge_keeps_a_shard_that_could_not_be_evaluated_failed():
    broken = GateResult(
        stage="generate",
        suite="s",
        passed=False,
        checks=[
            CheckResult(
                name="x",
                passed=False,
                threshold=0.5,
                expectation="gx",
                evaluated=0,
                observed=0,
                detail="cannot evaluate: column response missing",
            )
        ],
        row_count=1,
        duration_s=0.0,
    )
    fine = broken.model_copy(
        update={
            "passed": True,
            "checks": [broken.checks[0].model_copy(update={"passed": True, "detail": "0 of 5 rows x"})],
        }
    )
    merged = merge("generate", "s", [fine, broken], [])
    assert not merged.passed and merged.check("x").detail.startswith("cannot evaluate")
