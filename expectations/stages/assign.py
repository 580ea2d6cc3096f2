"""The assign gate: k distinct pool models per instruction, known principles, slots 0..k-1."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ultrafeedback.expectations.checks import (
    Suite,
    between,
    columns_match,
    compound_unique,
    fields_of,
    in_pool,
    in_set,
    in_sources,
    missing_columns,
    not_null,
    require,
    row_count,
    unique,
)
from ultrafeedback.expectations.models import CheckResult, GateContext
from ultrafeedback.records import CompletionRequest

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation


def build_assign(ctx: GateContext) -> list[Expectation]:
    """Requests: k distinct pool models per instruction, known principles, slots 0..k-1."""
    require(ctx, "assign", "k")
    assert ctx.k is not None
    rows = row_count(1, None, "row count")
    if ctx.expected_rows is not None:
        rows = row_count(ctx.expected_rows, ctx.expected_rows, "row count")
    return [
        columns_match("CompletionRequest", fields_of(CompletionRequest)),
        not_null("request_id"),
        unique("request_id"),
        not_null("instruction_id"),
        compound_unique(
            ["instruction_id", "model"],
            "models distinct per instruction",
            "rows repeat a model for their instruction",
        ),
        compound_unique(
            ["instruction_id", "position"],
            "positions distinct per instruction",
            "rows repeat a position for their instruction",
        ),
        not_null("model"),
        *in_pool("model", ctx),
        not_null("principle"),
        in_set("principle", ctx.principles, "principle known", "rows have an unknown principle"),
        not_null("system_prompt"),
        not_null("position"),
        between("position", 0, ctx.k - 1, f"position in [0, {ctx.k})"),
        *in_sources(ctx),
        rows,
    ]


def _k_rows_per_instruction(df: pd.DataFrame, ctx: GateContext) -> CheckResult:
    name = "k rows per instruction"
    assert ctx.k is not None
    missing = missing_columns(df, name, "instruction_id")
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


def _checks(df: pd.DataFrame, ctx: GateContext) -> list[CheckResult]:
    return [_k_rows_per_instruction(df, ctx)]  # an instruction's requests are in one shard


SUITE = Suite("assign", build_assign, checks=_checks)
