"""The generate gate: one completion per request, pool models, enough non-empty responses."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pandas as pd

from ultrafeedback.expectations.checks import (
    Suite,
    columns_match,
    fields_of,
    in_pool,
    missing_columns,
    non_empty,
    not_null,
    row_count,
    unique,
)
from ultrafeedback.expectations.models import CheckResult, GateContext
from ultrafeedback.expectations.summary import rate_check
from ultrafeedback.records import Completion

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

GENERATED = "requests gave a non-empty response"


def build_generate(ctx: GateContext) -> list[Expectation]:
    """Completions: one per request, pool models, and enough non-empty responses."""
    rate = ctx.gates.min_generation_success
    rows = row_count(1, None, "row count")
    if ctx.expected_rows is not None:
        rows = row_count(math.ceil(ctx.expected_rows * rate), ctx.expected_rows, "row count")
    return [
        columns_match("Completion", fields_of(Completion)),
        not_null("request_id"),
        unique("request_id"),
        not_null("instruction_id"),
        not_null("response", mostly=rate),
        non_empty("response", mostly=rate),
        not_null("model"),
        *in_pool("model", ctx),
        rows,
    ]


def _generation_success(df: pd.DataFrame, ctx: GateContext) -> CheckResult:
    # The contract's rate: usable responses over requests issued. The GX checks measure the rows
    # present, and the row count the rows missing; each can pass while their product does not.
    name = "generation success rate"
    missing = missing_columns(df, name, "response")
    if missing:
        return missing
    assert ctx.expected_rows is not None
    good = int(df["response"].astype("string").str.contains(r"\S", regex=True).fillna(False).sum())
    return rate_check(name, good, ctx.expected_rows, ctx.gates.min_generation_success, GENERATED, "pandas")


def _checks(df: pd.DataFrame, ctx: GateContext) -> list[CheckResult]:
    if ctx.scope == "shard" or ctx.expected_rows is None:  # a rate over the stage: its summary's
        return []
    return [_generation_success(df, ctx)]


SUITE = Suite("generate", build_generate, checks=_checks)
