"""Each stage's suite: a valid table passes, and each failure reason fails exactly its check.

Tables are built from the record models (``model_copy(update=...)`` injects what validation
would refuse, as a broken Parquet file could); GX runs for real on one cached ephemeral context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pytest

from ultrafeedback.expectations.checks import suite_name
from ultrafeedback.expectations.gate import GateContext, run_gate
from ultrafeedback.expectations.models import STAGES
from ultrafeedback.expectations.stages.binarized import CHAT_OK, chat_problem
from ultrafeedback.expectations.suites import suite_for
from ultrafeedback.records import (
    ASPECTS,
    PRINCIPLES,
    Completion,
    CompletionRequest,
    Instruction,
    Pair,
    Quarantined,
    ScoredCompletion,
)
from ultrafeedback.spec import Gates

K = 4
N_INSTRUCTIONS = 5
POOL = ["m0", "m1", "m2", "m3", "m4", "m5"]
SOURCES = ["evol_instruct", "flan"]


# --------------------------------------------------------------------------- record builders


def _ingest_rows() -> list[Instruction]:
    return [
        Instruction(
            id=f"ins{i}",
            source=SOURCES[i % 2],
            instruction=f"Explain topic number {i}.",
            origin=f"file.jsonl:{i}",
        )
        for i in range(10)
    ]


def _assign_rows() -> list[CompletionRequest]:
    return [
        CompletionRequest(
            request_id=f"req{i}-{slot}",
            instruction_id=f"ins{i}",
            source=SOURCES[i % 2],
            position=slot,
            model=POOL[(i + slot) % len(POOL)],
            principle=PRINCIPLES[slot % len(PRINCIPLES)],
            system_prompt="You are a helpful assistant.",
            prompt_format="chat",
            sampling_json='{"temperature": 1.0}',
            shard=0,
        )
        for i in range(N_INSTRUCTIONS)
        for slot in range(K)
    ]


def _generate_rows() -> list[Completion]:
    return [
        Completion(
            request_id=r.request_id,
            instruction_id=r.instruction_id,
            model=r.model,
            response=f"An answer from {r.model}.",
            finish_reason="stop",
            backend="embedded",
        )
        for r in _assign_rows()
    ]


def _annotate_rows() -> list[ScoredCompletion]:
    rows = []
    for n, r in enumerate(_assign_rows()):
        ratings = {aspect: str(1 + (n + j) % 5) for j, aspect in enumerate(ASPECTS)}
        if n == 0:
            ratings["honesty"] = "N/A"  # allowed for honesty only
        numeric = [float(v) for v in ratings.values() if v != "N/A"]
        fields = {}
        for aspect, rating in ratings.items():
            fields[f"{aspect}_rating"] = rating
            fields[f"{aspect}_rationale"] = f"Rated {rating} because of reasons."
        rows.append(
            ScoredCompletion(
                completion_id=r.request_id,
                instruction_id=r.instruction_id,
                source=r.source,
                instruction="Explain something.",
                correct_answers=["None"],
                incorrect_answers=["None"],
                models=POOL[:K],
                position=r.position,
                model=r.model,
                principle=r.principle,
                system_prompt=r.system_prompt,
                response="An answer.",
                truthfulness_type=["0"],
                helpfulness_type=["1", "2"],
                critique="Good, but could be clearer.",
                overall_score=float(1 + n % 10),
                fine_grained_score=sum(numeric) / len(numeric),
                judge_model="gpt-4",
                judge_kind="model",
                **fields,
            )
        )
    return rows


LEADERBOARD_COUNTS = {"m0": 3, "m1": 3, "m2": 3, "m3": 4, "m4": 4, "m5": 3}
"""Completions per model in ``_assign_rows`` (model = POOL[(i + slot) % 6]): 20 in all."""


def _aggregate_rows() -> list[dict[str, Any]]:
    """``AggregateResult.to_dict()["leaderboard"]``: one row per model, best mean first, nulls as None."""
    rows = []
    for n, (model, count) in enumerate(LEADERBOARD_COUNTS.items()):
        rows.append(
            {
                "model": model,
                "completions": count,
                "mean_fine_grained": round(4.5 - n * 0.5, 4),
                "mean_overall": None if n == 5 else 9.0 - n,  # a model whose critiques all failed
                "mean_instruction_following": 1.0 + n * 0.8,
                "mean_honesty": None if n == 0 else 3.0,  # every honesty rating "N/A"
                "mean_truthfulness": 4.0,
                "mean_helpfulness": 2.5,
                "mean_response_tokens": 120.5,
            }
        )
    return rows


def _pairs_rows() -> list[Pair]:
    rows = []
    for i in range(N_INSTRUCTIONS):
        for a, b in ((0, 1), (2, 3)):
            rows.append(
                Pair(
                    pair_id=f"pair{i}-{a}{b}",
                    instruction_id=f"ins{i}",
                    source=SOURCES[i % 2],
                    prompt="Explain something.",
                    chosen_id=f"req{i}-{a}",
                    rejected_id=f"req{i}-{b}",
                    chosen_model=POOL[a],
                    rejected_model=POOL[b],
                    chosen="A better answer.",
                    rejected="A worse answer.",
                    score_chosen=4.5,
                    score_rejected=2.0,
                    margin=2.5,
                )
            )
    return rows


def _chat(prompt: str, reply: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]


def _binarized_rows() -> list[dict[str, Any]]:
    rows = []
    for i in range(6):
        prompt = f"Question {i}?"
        rows.append(
            {
                "source": SOURCES[i % 2],
                "prompt": prompt,
                "prompt_id": f"sha{i}",
                "chosen": _chat(prompt, "Good answer."),
                "rejected": _chat(prompt, "Weak answer."),
                "messages": _chat(prompt, "Good answer."),
                "score_chosen": 8.0,
                "score_rejected": 8.0 if i == 0 else 3.0,  # one tie: kept by the H4 rule
            }
        )
    return rows


BUILDERS: dict[str, Callable[[], list[Any]]] = {
    "ingest": _ingest_rows,
    "assign": _assign_rows,
    "generate": _generate_rows,
    "annotate": _annotate_rows,
    "aggregate": _aggregate_rows,
    "pairs": _pairs_rows,
    "binarized": _binarized_rows,
}

CONTEXTS: dict[str, GateContext] = {
    "ingest": GateContext(gates=Gates(min_instructions=5, max_quarantined=1), allowed_sources=SOURCES, quarantined=1),
    "assign": GateContext(k=K, expected_rows=N_INSTRUCTIONS * K, allowed_models=POOL, allowed_sources=SOURCES),
    "generate": GateContext(
        gates=Gates(min_generation_success=0.9), expected_rows=N_INSTRUCTIONS * K, allowed_models=POOL
    ),
    "annotate": GateContext(
        gates=Gates(min_rating_rate=0.9, min_annotation_success=0.9),
        expected_rows=N_INSTRUCTIONS * K,
        allowed_models=POOL,
    ),
    "aggregate": GateContext(expected_completions=N_INSTRUCTIONS * K, allowed_models=POOL),
    "pairs": GateContext(gates=Gates(min_pairs=5)),
    "binarized": GateContext(strict_binarized=False),  # the H4 rule
}


def _frame(rows: list[Any]) -> pd.DataFrame:
    return pd.DataFrame([r.model_dump() if hasattr(r, "model_dump") else r for r in rows])


def _edit(changes: dict[int, dict[str, Any]]) -> Callable[[list[Any]], pd.DataFrame]:
    """A table with some rows changed (model_copy skips validation, as a corrupt file would)."""

    def make(rows: list[Any]) -> pd.DataFrame:
        rows = list(rows)
        for i, update in changes.items():
            row = rows[i]
            rows[i] = row.model_copy(update=update) if hasattr(row, "model_copy") else {**row, **update}
        return _frame(rows)

    return make


def _set(index: int | list[int], **changes: Any) -> Callable[[list[Any]], pd.DataFrame]:
    """A table with the same change on rows ``index``."""
    return _edit(dict.fromkeys([index] if isinstance(index, int) else index, changes))


def _drop_column(column: str) -> Callable[[list[Any]], pd.DataFrame]:
    return lambda rows: _frame(rows).drop(columns=[column])


def _head(n: int) -> Callable[[list[Any]], pd.DataFrame]:
    return lambda rows: _frame(rows).head(n)


@dataclass
class Case:
    stage: str
    check: str
    make: Callable[[list[Any]], pd.DataFrame]
    observed: Any
    ctx: dict[str, Any] = field(default_factory=dict)
    also: tuple[str, ...] = ()
    """Checks that cannot help failing with this one (they depend on the same column or fact)."""
    label: str = ""

    @property
    def id(self) -> str:
        return f"{self.stage}: {self.check}" + (f" ({self.label})" if self.label else "")


CASES: list[Case] = [
    # ---- ingest
    Case(
        "ingest",
        "columns match Instruction",
        _drop_column("origin"),
        {"missing": ["origin"], "unexpected": []},
    ),
    Case("ingest", "id not null", _set(3, id=None), 1),
    Case("ingest", "id unique", _set(3, id="ins0"), 2),
    Case("ingest", "instruction not null", _set(3, instruction=None), 1),
    Case("ingest", "instruction not empty", _set([3, 4], instruction=" \n "), 2),
    Case("ingest", "source not null", _set(3, source=None), 1),
    Case("ingest", "source in allowed set", _set(3, source="sharegpt"), 1),
    Case("ingest", "enough instructions", _head(4), 4),
    Case("ingest", "quarantined within limit", _frame, 2, ctx={"quarantined": 2}),
    # ---- assign
    Case(
        "assign",
        "columns match CompletionRequest",
        lambda rows: _frame(rows).assign(extra=1),
        {"missing": [], "unexpected": ["extra"]},
    ),
    Case("assign", "request_id not null", _set(5, request_id=None), 1),
    Case("assign", "request_id unique", _set(5, request_id="req0-0"), 2),
    Case("assign", "instruction_id not null", _set([0, 1, 2, 3], instruction_id=None), 4),
    Case("assign", "models distinct per instruction", _set(1, model="m0"), 2),
    Case("assign", "positions distinct per instruction", _set(1, position=0), 2),
    Case("assign", "k rows per instruction", lambda rows: _frame(rows[1:]), 1, ctx={"expected_rows": None}),
    Case("assign", "model not null", _set(1, model=None), 1),
    Case("assign", "model in pool", _set(1, model="gpt-9"), 1),
    Case("assign", "principle not null", _set(1, principle=None), 1),
    Case("assign", "principle known", _set(1, principle="kindness"), 1),
    Case("assign", "system_prompt not null", _set(1, system_prompt=None), 1),
    Case("assign", "position not null", _set(1, position=None), 1),
    Case("assign", "position in [0, 4)", _set(3, position=4), 1),
    Case("assign", "source in allowed set", _set(3, source="sharegpt"), 1),
    Case("assign", "row count", _frame, 20, ctx={"expected_rows": 24}),
    # ---- generate (90% success required: 2 of 20 bad responses pass, 3 fail)
    Case(
        "generate",
        "columns match Completion",
        _drop_column("backend"),
        {"missing": ["backend"], "unexpected": []},
    ),
    Case("generate", "request_id not null", _set(2, request_id=None), 1),
    Case("generate", "request_id unique", _set(2, request_id="req0-0"), 2),
    Case("generate", "instruction_id not null", _set(2, instruction_id=None), 1),
    Case("generate", "response not null", _set([1, 2, 3], response=None), 3, also=("generation success rate",)),
    Case("generate", "response not empty", _set([1, 2, 3], response="  "), 3, also=("generation success rate",)),
    # 18 of 20 rows (row count ok), 1 of 18 empty (94% ok), but only 17 of 20 requests succeeded
    Case("generate", "generation success rate", lambda rows: _set(1, response="")(rows).head(18), 0.85),
    Case("generate", "model not null", _set(2, model=None), 1),
    Case("generate", "model in pool", _set(2, model="gpt-9"), 1),
    Case("generate", "row count", _head(17), 17, also=("generation success rate",), label="too few"),
    Case(
        "generate",
        "row count",
        lambda rows: _frame([*rows, rows[0].model_copy(update={"request_id": "req-extra"})]),
        21,
        label="more than requested",
    ),
    # ---- annotate (90% rating and critique rates required)
    Case(
        "annotate",
        "columns match ScoredCompletion",
        _drop_column("judge_kind"),
        {"missing": ["judge_kind"], "unexpected": []},
    ),
    Case("annotate", "completion_id not null", _set(2, completion_id=None), 1),
    Case("annotate", "completion_id unique", _set(2, completion_id="req0-0"), 2),
    Case("annotate", "instruction_id not null", _set(2, instruction_id=None), 1),
    Case("annotate", "model not null", _set(2, model=None), 1),
    Case("annotate", "model in pool", _set(2, model="gpt-9"), 1),
    Case("annotate", "helpfulness rating valid", _set(2, helpfulness_rating="N/A"), 1),
    Case("annotate", "instruction_following rating valid", _set(2, instruction_following_rating="6"), 1),
    Case(
        "annotate",
        "truthfulness rated",
        _set([1, 2, 3], truthfulness_rating=None, truthfulness_rationale=None),
        3,
        also=("all aspects rated",),
    ),
    Case("annotate", "honesty rationale present", _set(2, honesty_rationale=None), 1),
    Case("annotate", "honesty rationale not empty", _set(2, honesty_rationale=" "), 1),
    # each aspect misses 1 of 20 (95% >= 90%), but only 17 of 20 rows have all four (85%)
    Case(
        "annotate",
        "all aspects rated",
        _edit({1: {"truthfulness_rating": None}, 2: {"helpfulness_rating": None}, 3: {"honesty_rating": None}}),
        3,
    ),
    Case("annotate", "overall_score present", _set([1, 2, 3], overall_score=None), 3),
    Case("annotate", "overall_score in [1, 10]", _set(2, overall_score=11.0), 1),
    Case("annotate", "fine_grained_score in [1, 5]", _set(2, fine_grained_score=0.5), 1),
    Case("annotate", "row count", _frame, 20, ctx={"expected_rows": 21}),
    # ---- aggregate (the leaderboard of 20 completions over the 6 pool models)
    Case(
        "aggregate",
        "columns present",
        _drop_column("mean_helpfulness"),
        {"missing": ["mean_helpfulness"], "unexpected": []},
        also=("mean_helpfulness in [1, 5]",),
    ),
    Case("aggregate", "model not null", _set(2, model=None), 1),
    Case("aggregate", "model unique", _set(2, model="m0"), 2),
    Case("aggregate", "model in pool", _set(2, model="gpt-9"), 1),
    Case("aggregate", "completions not null", _set(2, completions=None), 1, also=("completions sum to expected",)),
    # m5 has no completion but the total still adds up: only the per-model minimum fails
    Case("aggregate", "completions >= 1", _edit({4: {"completions": 7}, 5: {"completions": 0}}), 1),
    Case("aggregate", "completions sum to expected", _frame, 20, ctx={"expected_completions": 21}),
    Case(
        "aggregate",
        "completions sum to expected",
        lambda rows: _frame(rows).assign(completions=lambda df: df["completions"] * 2),
        40,
        label="read twice",
    ),
    Case("aggregate", "mean_fine_grained in [1, 5]", _set(1, mean_fine_grained=5.5), 1),
    Case("aggregate", "mean_overall in [1, 10]", _set([1, 2], mean_overall=0.5), 2),
    *[Case("aggregate", f"mean_{aspect} in [1, 5]", _set(3, **{f"mean_{aspect}": 0.0}), 1) for aspect in ASPECTS],
    # ---- pairs
    Case(
        "pairs",
        "columns match Pair",
        _drop_column("chosen_model"),
        {"missing": ["chosen_model"], "unexpected": []},
    ),
    Case("pairs", "pair_id not null", _set(2, pair_id=None), 1),
    Case("pairs", "pair_id unique", _set(2, pair_id="pair0-01"), 2),
    Case("pairs", "score_chosen > score_rejected", _set(2, score_rejected=5.0), 1),
    Case("pairs", "chosen_id != rejected_id", _set(2, rejected_id="req1-0"), 1),
    Case("pairs", "chosen/rejected unique", _set(3, chosen_id="req1-0", rejected_id="req1-1"), 2),
    Case("pairs", "margin not null", _set(2, margin=None), 1),
    Case("pairs", "margin > 0", _set(2, margin=0.0), 1),
    Case("pairs", "enough pairs", _head(4), 4),
    # ---- binarized (H4 rule: ties allowed)
    Case(
        "binarized",
        "columns present",
        _drop_column("prompt_id"),
        {"missing": ["prompt_id"], "unexpected": ["messages", "source"]},  # extras are allowed here
        also=("prompt_id not null",),
    ),
    Case("binarized", "prompt_id not null", _set(2, prompt_id=None), 1),
    Case("binarized", "prompt not null", _set(2, prompt=None), 1),
    Case(
        "binarized",
        "prompt not empty",
        _set(2, prompt=" ", chosen=_chat(" ", "a"), rejected=_chat(" ", "b")),
        1,
    ),
    Case("binarized", "chosen is a chat", _set(2, chosen=[{"role": "user", "content": "Question 2?"}]), 1),
    Case("binarized", "rejected is a chat", _set(2, rejected=_chat("Another question?", "b")), 1),
    Case("binarized", "score_chosen >= score_rejected", _set(2, score_rejected=9.0), 1),
    Case("binarized", "score_chosen > score_rejected", _frame, 1, ctx={"strict_binarized": True}),
    Case("binarized", "not empty", _head(0), 0),
]


def _gate(stage: str, df: pd.DataFrame, **ctx_changes: Any):
    ctx = CONTEXTS[stage].model_copy(update=ctx_changes)
    return run_gate(stage, df, ctx)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("stage", STAGES)
def test_valid_table_passes(stage: str) -> None:
    result = _gate(stage, _frame(BUILDERS[stage]()))
    assert result.failed == [], result.summary()
    assert result.passed
    assert result.row_count == len(BUILDERS[stage]())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_failure_reason_fails_its_check(case: Case) -> None:
    df = case.make(BUILDERS[case.stage]())
    result = _gate(case.stage, df, **case.ctx)
    assert not result.passed
    assert {c.name for c in result.failed} == {case.check, *case.also}, result.summary()
    assert result.check(case.check).observed == case.observed
    assert case.check in result.summary()


@pytest.mark.parametrize("stage", STAGES)
def test_suite_for_names_the_suite_and_its_checks(stage: str) -> None:
    suite = suite_for(stage, CONTEXTS[stage])
    names = [e.meta["check"] for e in suite.expectations]
    assert suite.name == suite_name(stage) == f"ultrafeedback.{stage}"
    assert len(names) == len(set(names)), "check names identify results, so they must be unique"


def test_generate_tolerates_failures_within_the_success_rate() -> None:
    # one empty response and one failed (missing) request: 18 of 20 requests succeeded
    df = _set(1, response="")(_generate_rows()).head(19)
    assert _gate("generate", df).passed


def test_quarantine_failure_names_the_quarantined_records() -> None:
    quarantined = Quarantined(source="flan", origin="flan.jsonl:7", reason="empty", detail="no text")
    result = _gate("ingest", _frame(_ingest_rows()), quarantined=2, quarantine_examples=[quarantined.model_dump()])
    assert "quarantined within limit: 2 input records quarantined (expected <= 1)" in result.summary()
    assert "e.g. flan.jsonl:7: empty" in result.summary()


def test_annotate_skips_aspects_that_are_not_judged() -> None:
    df = _set(list(range(20)), honesty_rating=None, honesty_rationale=None)(_annotate_rows())
    assert _gate("annotate", df, aspects=["instruction_following", "truthfulness", "helpfulness"]).passed


def test_annotate_without_critique_ignores_overall_score() -> None:
    df = _set(list(range(20)), overall_score=None, critique=None)(_annotate_rows())
    result = _gate("annotate", df, critique=False)
    assert result.passed, result.summary()
    assert "overall_score present" not in {c.name for c in result.checks}


def test_aggregate_means_may_be_null_where_nothing_was_rated() -> None:
    # A column of nulls only: pandas keeps None in an object column, which GX must still skip.
    df = _set(list(range(6)), mean_overall=None, mean_honesty=None, mean_fine_grained=None)(_aggregate_rows())
    assert df["mean_overall"].dtype == object
    result = _gate("aggregate", df)
    assert result.passed, result.summary()


def test_aggregate_without_critique_ignores_mean_overall() -> None:
    df = _set(0, mean_overall=42.0)(_aggregate_rows())
    result = _gate("aggregate", df, critique=False)
    assert result.passed, result.summary()
    assert "mean_overall in [1, 10]" not in {c.name for c in result.checks}


def test_aggregate_checks_only_the_judged_aspects() -> None:
    df = _set(0, mean_honesty=0.0)(_aggregate_rows()).drop(columns=["mean_truthfulness"])
    result = _gate("aggregate", df, aspects=["instruction_following", "helpfulness"])
    assert result.passed, result.summary()
    assert {"mean_honesty in [1, 5]", "mean_truthfulness in [1, 5]"}.isdisjoint(c.name for c in result.checks)


def test_aggregate_total_explains_the_difference() -> None:
    result = _gate("aggregate", _frame(_aggregate_rows()), expected_completions=24)
    check = result.check("completions sum to expected")
    assert (check.passed, check.observed, check.expected) == (False, 20, "== 24")
    assert check.detail == "the leaderboard counts 20 completions over 6 models (expected 24, the scored completions)"


def test_aggregate_of_an_empty_leaderboard_fails_without_raising() -> None:
    """Nothing was scored: one failed check says so, not one "column missing" per column."""
    result = _gate("aggregate", pd.DataFrame([]), expected_completions=0)
    assert not result.passed
    assert [check.name for check in result.failed] == ["models scored"]
    assert result.check("models scored").detail == "no completion was scored"
    assert result.check("completions sum to expected").passed  # the leaderboard counts 0 of 0


def test_aggregate_needs_expected_completions() -> None:
    with pytest.raises(ValueError, match="GateContext.expected_completions"):
        suite_for("aggregate", GateContext(allowed_models=POOL))


def test_binarized_reports_why_a_chat_is_malformed() -> None:
    df = _set(2, chosen=_chat("Question 2?", "fine")[::-1])(_binarized_rows())
    result = _gate("binarized", df)
    assert result.check("chosen is a chat").examples == ["last message is not from the assistant"]


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ("just text", "not a list of messages"),
        ([{"role": "user", "content": "Q?"}], "fewer than 2 messages"),
        ([{"role": "user", "content": "Q?"}, "A"], "message 1 is not a mapping"),
        (
            [{"role": "human", "content": "Q?"}, {"role": "assistant", "content": "A"}],
            "message 0 has role 'human'",
        ),
        (
            [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": None}],
            "message 1 has no text content",
        ),
        (
            [{"role": "assistant", "content": "A"}, {"role": "user", "content": "Q?"}],
            "last message is not from the assistant",
        ),
        (_chat("Other?", "A"), "no user message equals the prompt"),
        (_chat("Q?", "A"), CHAT_OK),
    ],
)
def test_chat_problem(messages: Any, problem: str) -> None:
    assert chat_problem(messages, "Q?") == problem


def test_unknown_stage_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown stage"):
        suite_for("publish", GateContext())


def test_assign_needs_k() -> None:
    with pytest.raises(ValueError, match="GateContext.k"):
        suite_for("assign", GateContext())
