"""One Great Expectations suite per pipeline stage, kept as code.

Each stage has a builder that returns its GX expectations (named ``ultrafeedback.<stage>``), a
``prepare`` step that adds the derived scalar columns GX needs for what it cannot read directly
(lists of chat messages, "every aspect rated"), and a few checks computed in pandas for what no
GX expectation expresses (exactly k rows per instruction, the quarantine count, the leaderboard's
completions total). ``run_gate`` in ``expectations.gate`` runs all three and reports them as one
list of checks.

Every expectation carries ``meta={"check": <name>, "fails": <what a failing row is>}``: the name
is the check's stable identifier in GateResult, the phrase makes the failure message readable.

Great Expectations is imported inside the builders only (its import costs seconds).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from expectations.models import STAGES, CheckResult, GateContext
from expectations.summary import rate_check
from ultrafeedback.records import (
    Completion,
    CompletionRequest,
    Instruction,
    Pair,
    ScoredCompletion,
)

if TYPE_CHECKING:
    import great_expectations as gx
    from great_expectations.expectations import Expectation

SUITE_PREFIX = "ultrafeedback"
DERIVED_PREFIX = "__gx_"
"""Columns ``prepare`` adds for the suites; never part of a stage's own table."""

ALL_RATED = f"{DERIVED_PREFIX}all_aspects_rated"
RATINGS: tuple[str, ...] = ("1", "2", "3", "4", "5")
NA_RATING_ASPECTS: frozenset[str] = frozenset({"honesty"})
"""Aspects whose rating may be "N/A" (the honesty rubric allows it)."""
CHAT_ROLES: frozenset[str] = frozenset({"system", "user", "assistant"})
CHAT_OK = "ok"
BINARIZED_COLUMNS: tuple[str, ...] = (
    "prompt",
    "prompt_id",
    "chosen",
    "rejected",
    "score_chosen",
    "score_rejected",
)
"""Columns every binarized split has (H4 and Argilla rules); others (messages, source) may exist."""
LEADERBOARD_COLUMNS: tuple[str, ...] = (
    "model",
    "completions",
    "mean_fine_grained",
    "mean_overall",
    "mean_response_tokens",
)
"""Columns of ``AggregateResult.leaderboard`` besides ``mean_<aspect>``, one per judged aspect."""
COMPLETIONS_TOTAL = "completions sum to expected"
GENERATED = "requests gave a non-empty response"


def suite_name(stage: str) -> str:
    """The GX suite name of a stage: ``ultrafeedback.<stage>``."""
    return f"{SUITE_PREFIX}.{stage}"


# --------------------------------------------------------------------------- expectation helpers


def _gxe() -> Any:
    import great_expectations.expectations as gxe

    return gxe


def _meta(check: str, fails: str = "") -> dict[str, Any]:
    return {"meta": {"check": check, "fails": fails}, "description": check}


def _columns(record: str, columns: Sequence[str], exact: bool = True) -> Expectation:
    name = f"columns match {record}" if exact else "columns present"
    return _gxe().ExpectTableColumnsToMatchSet(column_set=list(columns), exact_match=exact, **_meta(name))


def _not_null(column: str, mostly: float = 1.0, check: str | None = None) -> Expectation:
    return _gxe().ExpectColumnValuesToNotBeNull(
        column=column, mostly=mostly, **_meta(check or f"{column} not null", "rows are null")
    )


def _unique(column: str) -> Expectation:
    return _gxe().ExpectColumnValuesToBeUnique(
        column=column, **_meta(f"{column} unique", "rows share their value with another row")
    )


def _compound_unique(columns: list[str], check: str, fails: str) -> Expectation:
    return _gxe().ExpectCompoundColumnsToBeUnique(column_list=columns, **_meta(check, fails))


def _non_empty(column: str, mostly: float = 1.0, **kwargs: Any) -> Expectation:
    # A length check counts "  " as content; a regex for any non-space character does not.
    kwargs.setdefault("meta", {"check": f"{column} not empty", "fails": "rows are empty"})
    kwargs.setdefault("description", kwargs["meta"]["check"])
    return _gxe().ExpectColumnValuesToMatchRegex(column=column, regex=r"\S", mostly=mostly, **kwargs)


def _in_set(column: str, values: Sequence[Any], check: str, fails: str) -> Expectation:
    return _gxe().ExpectColumnValuesToBeInSet(
        column=column, value_set=sorted(set(values)), **_meta(check, fails)
    )


def _between(column: str, low: float | None, high: float | None, check: str, **kwargs: Any) -> Expectation:
    return _gxe().ExpectColumnValuesToBeBetween(
        column=column, min_value=low, max_value=high, **kwargs, **_meta(check, "rows are out of range")
    )


def _row_count(low: int | None, high: int | None, check: str) -> Expectation:
    return _gxe().ExpectTableRowCountToBeBetween(min_value=low, max_value=high, **_meta(check))


def _fields(record: type) -> list[str]:
    return list(record.model_fields)


def _in_pool(column: str, ctx: GateContext) -> list[Expectation]:
    if ctx.allowed_models is None:
        return []
    return [_in_set(column, ctx.allowed_models, f"{column} in pool", "rows name a model outside the pool")]


def _in_sources(ctx: GateContext) -> list[Expectation]:
    if ctx.allowed_sources is None:
        return []
    return [_in_set("source", ctx.allowed_sources, "source in allowed set", "rows have an unknown source")]


def _require(ctx: GateContext, stage: str, *facts: str) -> None:
    missing = [fact for fact in facts if getattr(ctx, fact) is None]
    if missing:
        raise ValueError(f"gate {stage!r} needs GateContext.{', '.join(missing)}")


# --------------------------------------------------------------------------- suites per stage


def build_ingest(ctx: GateContext) -> list[Expectation]:
    """Instructions: unique ids, real text, known sources, and enough of them."""
    return [
        _columns("Instruction", _fields(Instruction)),
        _not_null("id"),
        _unique("id"),
        _not_null("instruction"),
        _non_empty("instruction"),
        _not_null("source"),
        *_in_sources(ctx),
        _row_count(ctx.gates.min_instructions, None, "enough instructions"),
    ]


def build_assign(ctx: GateContext) -> list[Expectation]:
    """Requests: k distinct pool models per instruction, known principles, slots 0..k-1."""
    _require(ctx, "assign", "k")
    assert ctx.k is not None
    rows = _row_count(1, None, "row count")
    if ctx.expected_rows is not None:
        rows = _row_count(ctx.expected_rows, ctx.expected_rows, "row count")
    return [
        _columns("CompletionRequest", _fields(CompletionRequest)),
        _not_null("request_id"),
        _unique("request_id"),
        _not_null("instruction_id"),
        _compound_unique(
            ["instruction_id", "model"],
            "models distinct per instruction",
            "rows repeat a model for their instruction",
        ),
        _compound_unique(
            ["instruction_id", "position"],
            "positions distinct per instruction",
            "rows repeat a position for their instruction",
        ),
        _not_null("model"),
        *_in_pool("model", ctx),
        _not_null("principle"),
        _in_set("principle", ctx.principles, "principle known", "rows have an unknown principle"),
        _not_null("system_prompt"),
        _not_null("position"),
        _between("position", 0, ctx.k - 1, f"position in [0, {ctx.k})"),
        *_in_sources(ctx),
        rows,
    ]


def build_generate(ctx: GateContext) -> list[Expectation]:
    """Completions: one per request, pool models, and enough non-empty responses."""
    rate = ctx.gates.min_generation_success
    rows = _row_count(1, None, "row count")
    if ctx.expected_rows is not None:
        rows = _row_count(math.ceil(ctx.expected_rows * rate), ctx.expected_rows, "row count")
    return [
        _columns("Completion", _fields(Completion)),
        _not_null("request_id"),
        _unique("request_id"),
        _not_null("instruction_id"),
        _not_null("response", mostly=rate),
        _non_empty("response", mostly=rate),
        _not_null("model"),
        *_in_pool("model", ctx),
        rows,
    ]


def build_annotate(ctx: GateContext) -> list[Expectation]:
    """Scored completions: valid ratings with rationales for the judged aspects, valid scores."""
    from great_expectations.expectations.row_conditions import Column

    gates = ctx.gates
    checks: list[Expectation] = [
        _columns("ScoredCompletion", [*_fields(ScoredCompletion), ALL_RATED]),
        _not_null("completion_id"),
        _unique("completion_id"),
        _not_null("instruction_id"),
        _not_null("model"),
        *_in_pool("model", ctx),
    ]
    for aspect in ctx.aspects:
        rating, rationale = f"{aspect}_rating", f"{aspect}_rationale"
        valid = [*RATINGS, "N/A"] if aspect in NA_RATING_ASPECTS else list(RATINGS)
        rated = Column(rating).is_not_null()
        checks += [
            _in_set(rating, valid, f"{aspect} rating valid", "rows have a rating outside " + "/".join(valid)),
            _not_null(rating, mostly=gates.min_rating_rate, check=f"{aspect} rated"),
            _gxe().ExpectColumnValuesToNotBeNull(
                column=rationale,
                row_condition=rated,
                **_meta(f"{aspect} rationale present", "rated rows have no rationale"),
            ),
            _non_empty(
                rationale,
                row_condition=rated,
                **_meta(f"{aspect} rationale not empty", "rated rows have an empty rationale"),
            ),
        ]
    checks.append(
        _gxe().ExpectColumnValuesToBeInSet(
            column=ALL_RATED,
            value_set=[True],
            mostly=gates.min_rating_rate,
            **_meta("all aspects rated", "rows miss at least one aspect rating"),
        )
    )
    if ctx.critique:
        checks += [
            _not_null("overall_score", mostly=gates.min_annotation_success, check="overall_score present"),
            _between("overall_score", 1, 10, "overall_score in [1, 10]"),
        ]
    checks.append(_between("fine_grained_score", 1, 5, "fine_grained_score in [1, 5]"))
    if ctx.expected_rows is not None:
        checks.append(_row_count(ctx.expected_rows, ctx.expected_rows, "row count"))
    else:
        checks.append(_row_count(1, None, "row count"))
    return checks


def build_aggregate(ctx: GateContext) -> list[Expectation]:
    """The per-model leaderboard: one row per pool model, counts that add up, means on their scales.

    The table is ``pd.DataFrame(AggregateResult.to_dict()["leaderboard"])``. A mean is null where
    a model has nothing to average (no critique, an aspect never rated); GX skips nulls in range
    checks, so "in range" means "in range where present". Aspects not judged are not checked.
    That the counts add up to ``ctx.expected_completions`` is a pandas check (``pandas_checks``).
    """
    _require(ctx, "aggregate", "expected_completions")
    aspects = [f"mean_{aspect}" for aspect in ctx.aspects]
    checks: list[Expectation] = [
        _columns("leaderboard", [*LEADERBOARD_COLUMNS, *aspects], exact=False),
        _not_null("model"),
        _unique("model"),
        *_in_pool("model", ctx),
        _not_null("completions"),
        _between("completions", 1, None, "completions >= 1"),
        _between("mean_fine_grained", 1, 5, "mean_fine_grained in [1, 5]"),
    ]
    if ctx.critique:
        checks.append(_between("mean_overall", 1, 10, "mean_overall in [1, 10]"))
    checks += [_between(column, 1, 5, f"{column} in [1, 5]") for column in aspects]
    return checks


def build_pairs(ctx: GateContext) -> list[Expectation]:
    """Pairs: strictly better chosen, two different completions, positive margin, enough pairs."""
    gxe = _gxe()
    return [
        _columns("Pair", _fields(Pair)),
        _not_null("pair_id"),
        _unique("pair_id"),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="score_chosen",
            column_B="score_rejected",
            or_equal=False,
            ignore_row_if="neither",
            **_meta("score_chosen > score_rejected", "rows do not prefer the higher score"),
        ),
        gxe.ExpectSelectColumnValuesToBeUniqueWithinRecord(
            column_list=["chosen_id", "rejected_id"],
            ignore_row_if="never",
            **_meta("chosen_id != rejected_id", "rows pair a completion with itself"),
        ),
        _compound_unique(
            ["chosen_id", "rejected_id"], "chosen/rejected unique", "rows repeat a chosen/rejected pair"
        ),
        _not_null("margin"),
        _between("margin", 0, None, "margin > 0", strict_min=True),
        _row_count(ctx.gates.min_pairs, None, "enough pairs"),
    ]


def build_binarized(ctx: GateContext) -> list[Expectation]:
    """Binarized rows: chat-format chosen/rejected for the prompt, scores ordered per the rule."""
    gxe = _gxe()
    relation = ">=" if ctx.allow_ties else ">"
    return [
        _columns("binarized", BINARIZED_COLUMNS, exact=False),
        _not_null("prompt_id"),
        _not_null("prompt"),
        _non_empty("prompt"),
        gxe.ExpectColumnValuesToBeInSet(
            column=_chat_column("chosen"),
            value_set=[CHAT_OK],
            **_meta("chosen is a chat", "rows have a malformed chosen conversation"),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column=_chat_column("rejected"),
            value_set=[CHAT_OK],
            **_meta("rejected is a chat", "rows have a malformed rejected conversation"),
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="score_chosen",
            column_B="score_rejected",
            or_equal=ctx.allow_ties,
            ignore_row_if="neither",
            **_meta(f"score_chosen {relation} score_rejected", "rows break the score order"),
        ),
        _row_count(1, None, "not empty"),
    ]


BUILDERS: dict[str, Callable[[GateContext], list[Expectation]]] = {
    "ingest": build_ingest,
    "assign": build_assign,
    "generate": build_generate,
    "annotate": build_annotate,
    "aggregate": build_aggregate,
    "pairs": build_pairs,
    "binarized": build_binarized,
}


def _check_stage(stage: str) -> None:
    if stage not in BUILDERS:
        raise ValueError(f"unknown stage {stage!r}; stages with a suite: {', '.join(STAGES)}")


def suite_for(stage: str, ctx: GateContext) -> gx.ExpectationSuite:
    """The stage's suite as a (not yet saved) ``gx.ExpectationSuite`` named ``ultrafeedback.<stage>``.

    Expectations on columns named ``__gx_*`` read the derived columns that ``prepare`` adds.
    """
    import great_expectations as gx

    _check_stage(stage)
    expectations = BUILDERS[stage](ctx)
    if ctx.scope == "shard":  # row counts are whole-stage facts: the stage summary checks them
        expectations = [e for e in expectations if not type(e).__name__.startswith("ExpectTableRowCount")]
    return gx.ExpectationSuite(name=suite_name(stage), expectations=expectations)


# --------------------------------------------------------------------------- derived columns


def _chat_column(column: str) -> str:
    return f"{DERIVED_PREFIX}{column}_chat"


def chat_problem(messages: Any, prompt: Any) -> str:
    """Why ``messages`` is not a usable [user prompt ..., assistant reply] chat, or ``"ok"``.

    Accepts lists, tuples and numpy arrays (what Parquet gives back for a list column).
    """
    if isinstance(messages, str | bytes | Mapping) or not hasattr(messages, "__len__"):
        return "not a list of messages"
    messages = list(messages)
    if len(messages) < 2:
        return "fewer than 2 messages"
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            return f"message {index} is not a mapping"
        if message.get("role") not in CHAT_ROLES:
            return f"message {index} has role {message.get('role')!r}"
        if not isinstance(message.get("content"), str):
            return f"message {index} has no text content"
    if messages[-1]["role"] != "assistant":
        return "last message is not from the assistant"
    # A null prompt is the prompt checks' failure; do not report it a second time here.
    if isinstance(prompt, str) and not any(
        m["role"] == "user" and m["content"] == prompt for m in messages[:-1]
    ):
        return "no user message equals the prompt"
    return CHAT_OK


def prepare(stage: str, df: pd.DataFrame, ctx: GateContext) -> pd.DataFrame:
    """The table GX validates: ``df`` plus the derived ``__gx_*`` columns its suite reads.

    GX's pandas metrics cannot read list cells (its value-length metric measures ``str(list)``),
    so list-valued facts are flattened here into scalar columns. ``df`` itself is not modified.
    """
    _check_stage(stage)
    if stage == "annotate":
        columns = [f"{aspect}_rating" for aspect in ctx.aspects]
        if all(column in df.columns for column in columns):
            return df.assign(**{ALL_RATED: df[columns].notna().all(axis=1)})
    if stage == "binarized" and "prompt" in df.columns:
        derived = {}
        for column in ("chosen", "rejected"):
            if column in df.columns:
                derived[_chat_column(column)] = [
                    chat_problem(messages, prompt)
                    for messages, prompt in zip(df[column], df["prompt"], strict=True)
                ]
        return df.assign(**derived)
    return df


# --------------------------------------------------------------------------- checks GX cannot express


def _missing(df: pd.DataFrame, name: str, *columns: str) -> CheckResult | None:
    absent = [column for column in columns if column not in df.columns]
    if not absent:
        return None
    return CheckResult(name=name, passed=False, detail=f"cannot evaluate: column {', '.join(absent)} missing")


def _k_rows_per_instruction(df: pd.DataFrame, ctx: GateContext) -> CheckResult:
    name = "k rows per instruction"
    assert ctx.k is not None
    missing = _missing(df, name, "instruction_id")
    if missing:
        return missing
    counts = df.groupby("instruction_id", dropna=False).size()
    bad = counts[counts != ctx.k]
    examples = [{"instruction_id": str(key), "rows": int(n)} for key, n in bad.head(3).items()]
    detail = f"{len(bad)} of {len(counts)} instructions do not have exactly {ctx.k} rows (expected none)"
    if examples:
        detail += ", e.g. " + ", ".join(f"{e['instruction_id']!r}: {e['rows']}" for e in examples)
    return CheckResult(
        name=name,
        passed=bad.empty,
        observed=len(bad),
        expected=f"every instruction has {ctx.k} rows",
        detail=detail,
        examples=examples,
    )


def quarantine_check(ctx: GateContext) -> CheckResult:
    limit = ctx.gates.max_quarantined
    examples = [
        {key: str(item.get(key, ""))[:200] for key in ("source", "origin", "reason", "detail")}
        for item in ctx.quarantine_examples[:3]
    ]
    detail = f"{ctx.quarantined} input records quarantined (expected <= {limit})"
    if examples and ctx.quarantined > limit:
        detail += ", e.g. " + "; ".join(f"{e['origin']}: {e['reason']}" for e in examples)
    return CheckResult(
        name="quarantined within limit",
        passed=ctx.quarantined <= limit,
        observed=ctx.quarantined,
        expected=f"<= {limit}",
        threshold=limit,
        detail=detail,
        examples=examples,
    )


def _generation_success(df: pd.DataFrame, ctx: GateContext) -> CheckResult:
    # The contract's rate: usable responses over requests issued. The GX checks measure the rows
    # present, and the row count the rows missing; each can pass while their product does not.
    name = "generation success rate"
    missing = _missing(df, name, "response")
    if missing:
        return missing
    assert ctx.expected_rows is not None
    good = int(df["response"].astype("string").str.contains(r"\S", regex=True).fillna(False).sum())
    return rate_check(name, good, ctx.expected_rows, ctx.gates.min_generation_success, GENERATED, "pandas")


def _completions_total(df: pd.DataFrame, ctx: GateContext) -> CheckResult:
    # Every scored completion is counted once, under its model: rows lost or read twice (a stray
    # part file, a shard written by two runs) change the sum while each row still looks valid.
    _require(ctx, "aggregate", "expected_completions")
    assert ctx.expected_completions is not None
    missing = _missing(df, COMPLETIONS_TOTAL, "completions")
    if missing:
        return missing
    counts = pd.to_numeric(df["completions"], errors="coerce")
    total = float(counts.sum())  # nulls and non-numbers count 0: their own checks report them
    observed: int | float = int(total) if total.is_integer() else total
    expected = ctx.expected_completions
    return CheckResult(
        name=COMPLETIONS_TOTAL,
        passed=total == expected,
        observed=observed,
        expected=f"== {expected}",
        detail=(
            f"the leaderboard counts {observed} completions over {len(df)} models "
            f"(expected {expected}, the scored completions)"
        ),
    )


def pandas_checks(stage: str, df: pd.DataFrame, ctx: GateContext) -> list[CheckResult]:
    """The stage's checks that no GX expectation expresses, computed directly."""
    _check_stage(stage)
    if ctx.scope == "shard":  # whole-stage checks: the stage summary computes them
        return [_k_rows_per_instruction(df, ctx)] if stage == "assign" else []
    if stage == "ingest":
        return [quarantine_check(ctx)]
    if stage == "assign":
        return [_k_rows_per_instruction(df, ctx)]
    if stage == "generate" and ctx.expected_rows is not None:
        return [_generation_success(df, ctx)]
    if stage == "aggregate":
        return [_completions_total(df, ctx)]
    return []
