"""Running a suite as a gate: the result's shape, messages, enforcement, and GX plumbing."""

from __future__ import annotations

import json
import pickle
import threading
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from ultrafeedback.expectations.gate import (
    GateContext,
    GateFailed,
    GateResult,
    enforce,
    get_context,
    run_gate,
)
from ultrafeedback.infra.store import rows_table
from ultrafeedback.records import ASPECTS, Completion, ScoredCompletion
from ultrafeedback.spec import Gates, validate_dict

POOL = ["m0", "m1", "m2", "m3"]


def _completions(n: int = 20) -> list[Completion]:
    return [
        Completion(
            request_id=f"req{i}",
            instruction_id=f"ins{i // 4}",
            model=POOL[i % 4],
            response=f"Answer {i}.",
        )
        for i in range(n)
    ]


@pytest.fixture
def completions() -> pd.DataFrame:
    return pd.DataFrame([c.model_dump() for c in _completions()])


@pytest.fixture
def generate_ctx() -> GateContext:
    return GateContext(expected_rows=20, allowed_models=POOL)


@pytest.fixture
def failing(completions: pd.DataFrame, generate_ctx: GateContext) -> GateResult:
    """A generate table with two problems: 3 empty responses and one model outside the pool."""
    completions.loc[[1, 2, 3], "response"] = ""
    completions.loc[5, "model"] = "gpt-9"
    return run_gate("generate", completions, generate_ctx)


def test_summary_names_every_failed_check_with_observed_and_expected(failing: GateResult) -> None:
    summary = failing.summary()
    assert summary.startswith("gate 'generate' failed: ")
    assert "response not empty: 3 of 20 rows are empty (expected none)" in summary
    assert "model in pool: 1 of 20 rows name a model outside the pool (expected none), e.g. 'gpt-9'" in summary
    assert "generation success rate: 17 of 20 requests gave a non-empty response" in summary
    assert "request_id unique" not in summary


def test_summary_of_a_passing_gate(completions: pd.DataFrame, generate_ctx: GateContext) -> None:
    result = run_gate("generate", completions, generate_ctx)
    assert result.passed
    assert result.summary().startswith(f"gate 'generate' passed: {len(result.checks)} checks on 20 rows")


def test_result_carries_counts_and_timing(failing: GateResult) -> None:
    assert failing.stage == "generate"
    assert failing.suite == "ultrafeedback.generate"
    assert failing.row_count == 20
    assert failing.duration_s > 0
    check = failing.check("response not empty")
    assert (check.observed, check.expected, check.threshold) == (3, "none", 1.0)
    assert check.expectation == "expect_column_values_to_match_regex"


def test_to_dict_is_json_and_round_trips(failing: GateResult) -> None:
    data = json.loads(json.dumps(failing.to_dict()))
    assert data["passed"] is False
    assert GateResult.model_validate(data) == failing


def test_table_has_one_flat_row_per_check(failing: GateResult) -> None:
    rows = {row["check"]: row for row in failing.table()}
    assert len(rows) == len(failing.checks)
    assert rows["response not empty"]["passed"] is False
    assert rows["response not empty"]["observed"] == "3"
    assert rows["columns match Completion"]["observed"] == '{"missing": [], "unexpected": []}'


def test_enforce_raises_gate_failed_carrying_the_result(failing: GateResult) -> None:
    with pytest.raises(GateFailed, match="response not empty") as caught:
        enforce(failing)
    assert caught.value.result is failing


def test_enforce_returns_a_passing_result(completions: pd.DataFrame, generate_ctx: GateContext) -> None:
    result = run_gate("generate", completions, generate_ctx)
    assert enforce(result) is result


def test_gate_failed_survives_pickling(failing: GateResult) -> None:
    # Prefect and Dask move exceptions between processes by pickling them.
    copy = pickle.loads(pickle.dumps(GateFailed(failing)))
    assert copy.result == failing
    assert str(copy) == failing.summary()


def test_missing_column_is_a_failed_check_not_an_exception(
    completions: pd.DataFrame, generate_ctx: GateContext
) -> None:
    result = run_gate("generate", completions.drop(columns=["response"]), generate_ctx)
    assert result.check("columns match Completion").observed == {"missing": ["response"], "unexpected": []}
    assert result.check("response not empty").detail.startswith("cannot evaluate: ")
    assert result.check("generation success rate").detail == "cannot evaluate: column response missing"


def test_new_thresholds_take_effect_on_the_next_run(completions: pd.DataFrame) -> None:
    completions.loc[[0, 1], "response"] = " "
    strict = GateContext(gates=Gates(min_generation_success=1.0), allowed_models=POOL)
    lenient = GateContext(gates=Gates(min_generation_success=0.8), allowed_models=POOL)
    assert not run_gate("generate", completions, strict).passed
    assert run_gate("generate", completions, lenient).passed
    assert not run_gate("generate", completions, strict).passed


def test_one_context_per_process_and_no_result_pile_up(completions: pd.DataFrame, generate_ctx: GateContext) -> None:
    context = get_context()
    run_gate("generate", completions, generate_ctx)
    assert get_context() is context
    assert context.validation_results_store.list_keys() == []


def test_gates_from_several_threads(completions: pd.DataFrame, generate_ctx: GateContext) -> None:
    bad = completions.assign(model="gpt-9")
    outcomes: dict[str, bool] = {}

    def run(label: str, df: pd.DataFrame) -> None:
        outcomes[label] = run_gate("generate", df, generate_ctx).passed

    threads = [threading.Thread(target=run, args=item) for item in (("good", completions), ("bad", bad))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == {"good": True, "bad": False}


def _scored(n: int = 8) -> list[ScoredCompletion]:
    ratings = {f"{aspect}_rating": "4" for aspect in ASPECTS}
    rationales = {f"{aspect}_rationale": "Because." for aspect in ASPECTS}
    return [
        ScoredCompletion(
            completion_id=f"c{i}",
            instruction_id=f"ins{i // 4}",
            source="flan",
            instruction="Explain.",
            correct_answers=["None"],
            incorrect_answers=["a", "b"],
            models=POOL,
            position=i % 4,
            model=POOL[i % 4],
            principle="helpfulness",
            system_prompt="Be helpful.",
            response="Answer.",
            truthfulness_type=["0"] if i % 2 else None,
            helpfulness_type=["1", "2"],
            overall_score=7.0,
            fine_grained_score=4.0,
            judge_model="gpt-4",
            judge_kind="model",
            **ratings,
            **rationales,
        )
        for i in range(n)
    ]


def test_list_columns_read_back_from_arrow_pass(generate_ctx: GateContext) -> None:
    # The flow reads stage Parquet: list cells arrive as numpy arrays, strings as pandas' str dtype.
    df = rows_table(_scored(), ScoredCompletion).to_pandas()
    result = run_gate("annotate", df, GateContext(expected_rows=8, allowed_models=POOL))
    assert result.passed, result.summary()


def _binarized() -> list[dict[str, Any]]:
    def chat(prompt: str, reply: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]

    return [
        {
            "prompt": f"Q{i}?",
            "prompt_id": f"id{i}",
            "chosen": chat(f"Q{i}?", "good"),
            "rejected": chat(f"Q{i}?", "bad"),
            "score_chosen": 9.0,
            "score_rejected": 2.0,
        }
        for i in range(4)
    ]


def test_chat_columns_read_back_from_arrow_pass() -> None:
    df = pa.Table.from_pylist(_binarized()).to_pandas()
    assert not isinstance(df["chosen"].iloc[0], list)  # what the chat check must cope with
    result = run_gate("binarized", df, GateContext(strict_binarized=True))
    assert result.passed, result.summary()


def test_chat_columns_read_back_from_arrow_still_fail() -> None:
    rows = _binarized()
    rows[1]["rejected"] = rows[1]["rejected"][:1]
    df = pa.Table.from_pylist(rows).to_pandas()
    result = run_gate("binarized", df, GateContext())
    assert [c.name for c in result.failed] == ["rejected is a chat"]
    assert result.check("rejected is a chat").examples == ["fewer than 2 messages"]


def test_context_from_spec_takes_everything_the_spec_knows() -> None:
    spec = validate_dict(
        {
            "name": "demo",
            "sources": [{"name": "evol", "loader": "jsonl", "path": "x.jsonl"}],
            "models": [{"id": "a", "backend": "embedded"}, {"id": "b", "backend": "embedded"}],
            "completions_per_instruction": 2,
            "judge": {"aspects": ["honesty"], "critique": False},
            "binarize": {"rule": "argilla"},
            "gates": {"min_pairs": 7},
        }
    )
    ctx = GateContext.from_spec(spec, expected_rows=10, quarantined=3)
    assert (ctx.k, ctx.expected_rows, ctx.quarantined) == (2, 10, 3)
    assert (ctx.allowed_sources, ctx.allowed_models, ctx.aspects) == (["evol"], ["a", "b"], ["honesty"])
    assert (ctx.critique, ctx.allow_ties, ctx.gates.min_pairs) == (False, False, 7)


# --------------------------------------------------------------------------- a table with no rows


@pytest.mark.parametrize("stage", ["ingest", "assign", "generate", "annotate", "aggregate", "pairs", "binarized"])
def test_a_table_without_rows_or_columns_gives_no_column_errors(stage: str) -> None:
    """Every request of a stage failed: its table has no rows, often no columns either. The suite's
    row and column checks have nothing to say; only row counts and the stage's own checks run."""
    ctx = GateContext(expected_rows=20, expected_completions=0, allowed_models=POOL, allowed_sources=["s"], k=4)
    result = run_gate(stage, pd.DataFrame(), ctx)
    assert "does not exist" not in result.summary() and "cannot evaluate" not in result.summary()
    assert all(check.expectation != "expect_table_columns_to_match_set" for check in result.checks)
    assert result.row_count == 0


def test_row_counts_still_judge_a_table_without_rows() -> None:
    ctx = GateContext(gates=Gates(min_instructions=1))
    (check,) = [c for c in run_gate("ingest", pd.DataFrame(), ctx).checks if c.name == "enough instructions"]
    assert not check.passed and check.detail == "0 rows (expected >= 1)"
    lenient = run_gate("ingest", pd.DataFrame(), GateContext(gates=Gates(min_instructions=0)))
    assert lenient.passed


def test_an_empty_shard_leaves_the_verdict_to_the_stage_summary() -> None:
    result = run_gate("generate", pd.DataFrame(), GateContext(expected_rows=20, allowed_models=POOL, scope="shard"))
    assert result.passed and result.checks == []


def test_a_validation_does_not_fingerprint_the_frame(
    completions: pd.DataFrame, generate_ctx: GateContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GX's batch fingerprint pickles a frame with list cells whole (a marker no gate reads): skipped."""
    from great_expectations.execution_engine import pandas_execution_engine

    get_context()

    def fingerprint(df: Any) -> str:
        raise AssertionError("the frame was fingerprinted")

    monkeypatch.setattr(pandas_execution_engine, "hash_pandas_dataframe", fingerprint)
    assert run_gate("generate", completions, generate_ctx).passed
