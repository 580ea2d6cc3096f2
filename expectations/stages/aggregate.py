"""The aggregate gate: one leaderboard row per pool model, counts that add up, means on their scales."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ultrafeedback.expectations.checks import (
    Suite,
    between,
    columns_match,
    in_pool,
    missing_columns,
    not_null,
    require,
    unique,
)
from ultrafeedback.expectations.models import CheckResult, GateContext

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

LEADERBOARD_COLUMNS: tuple[str, ...] = (
    "model",
    "completions",
    "mean_fine_grained",
    "mean_overall",
    "mean_response_tokens",
)
"""Columns of ``AggregateResult.leaderboard`` besides ``mean_<aspect>``, one per judged aspect."""

COMPLETIONS_TOTAL = "completions sum to expected"
SCORED = "models scored"


def build_aggregate(ctx: GateContext) -> list[Expectation]:
    """The per-model leaderboard: one row per pool model, counts that add up, means on their scales.

    The table is ``pd.DataFrame(AggregateResult.to_dict()["leaderboard"])``. A mean is null where
    a model has nothing to average (no critique, an aspect never rated); GX skips nulls in range
    checks, so "in range" means "in range where present". Aspects not judged are not checked.
    That the counts add up to ``ctx.expected_completions`` is a pandas check (``pandas_checks``).
    """
    require(ctx, "aggregate", "expected_completions")
    aspects = [f"mean_{aspect}" for aspect in ctx.aspects]
    checks: list[Expectation] = [
        columns_match("leaderboard", [*LEADERBOARD_COLUMNS, *aspects], exact=False),
        not_null("model"),
        unique("model"),
        *in_pool("model", ctx),
        not_null("completions"),
        between("completions", 1, None, "completions >= 1"),
        between("mean_fine_grained", 1, 5, "mean_fine_grained in [1, 5]"),
    ]
    if ctx.critique:
        checks.append(between("mean_overall", 1, 10, "mean_overall in [1, 10]"))
    checks += [between(column, 1, 5, f"{column} in [1, 5]") for column in aspects]
    return checks


def _completions_total(df: pd.DataFrame, ctx: GateContext) -> CheckResult:
    # Every scored completion is counted once, under its model: rows lost or read twice (a stray
    # part file, a shard written by two runs) change the sum while each row still looks valid.
    require(ctx, "aggregate", "expected_completions")
    assert ctx.expected_completions is not None
    missing = missing_columns(df, COMPLETIONS_TOTAL, "completions")
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


def _scored(df: pd.DataFrame, ctx: GateContext) -> CheckResult:
    """A leaderboard without rows: nothing was scored, so say why in one line (the requests' most
    frequent failures, ``ctx.failures``) rather than fail every column check."""
    if len(df):
        return CheckResult(name=SCORED, passed=True, observed=len(df), expected=">= 1", detail=f"{len(df)} models")
    reasons = ", ".join(f"{reason} {count}" for reason, count in ctx.failures.items())
    detail = "no completion was scored" + (f"; failed requests: {reasons}" if reasons else "")
    return CheckResult(name=SCORED, passed=False, observed=0, expected=">= 1", detail=detail)


def _checks(df: pd.DataFrame, ctx: GateContext) -> list[CheckResult]:
    return [_scored(df, ctx), _completions_total(df, ctx)]


SUITE = Suite("aggregate", build_aggregate, checks=_checks)
