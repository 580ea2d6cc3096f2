"""The annotate gate (on the scored table): valid ratings with rationales for the judged aspects, valid scores."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ultrafeedback.expectations.checks import (
    DERIVED_PREFIX,
    Suite,
    between,
    columns_match,
    fields_of,
    gx_expectations,
    in_pool,
    in_set,
    meta,
    non_empty,
    not_null,
    row_count,
    unique,
)
from ultrafeedback.expectations.models import GateContext
from ultrafeedback.records import ScoredCompletion

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

ALL_RATED = f"{DERIVED_PREFIX}all_aspects_rated"

RATINGS: tuple[str, ...] = ("1", "2", "3", "4", "5")

NA_RATING_ASPECTS: frozenset[str] = frozenset({"honesty"})
"""Aspects whose rating may be "N/A" (the honesty rubric allows it)."""


def build_annotate(ctx: GateContext) -> list[Expectation]:
    """Scored completions: valid ratings with rationales for the judged aspects, valid scores."""
    from great_expectations.expectations.row_conditions import Column

    gates = ctx.gates
    checks: list[Expectation] = [
        columns_match("ScoredCompletion", [*fields_of(ScoredCompletion), ALL_RATED]),
        not_null("completion_id"),
        unique("completion_id"),
        not_null("instruction_id"),
        not_null("model"),
        *in_pool("model", ctx),
    ]
    for aspect in ctx.aspects:
        rating, rationale = f"{aspect}_rating", f"{aspect}_rationale"
        valid = [*RATINGS, "N/A"] if aspect in NA_RATING_ASPECTS else list(RATINGS)
        rated = Column(rating).is_not_null()
        checks += [
            in_set(rating, valid, f"{aspect} rating valid", "rows have a rating outside " + "/".join(valid)),
            not_null(rating, mostly=gates.min_rating_rate, check=f"{aspect} rated"),
            gx_expectations().ExpectColumnValuesToNotBeNull(
                column=rationale,
                row_condition=rated,
                **meta(f"{aspect} rationale present", "rated rows have no rationale"),
            ),
            non_empty(
                rationale,
                row_condition=rated,
                **meta(f"{aspect} rationale not empty", "rated rows have an empty rationale"),
            ),
        ]
    checks.append(
        gx_expectations().ExpectColumnValuesToBeInSet(
            column=ALL_RATED,
            value_set=[True],
            mostly=gates.min_rating_rate,
            **meta("all aspects rated", "rows miss at least one aspect rating"),
        )
    )
    if ctx.critique:
        checks += [
            not_null("overall_score", mostly=gates.min_annotation_success, check="overall_score present"),
            between("overall_score", 1, 10, "overall_score in [1, 10]"),
        ]
    checks.append(between("fine_grained_score", 1, 5, "fine_grained_score in [1, 5]"))
    if ctx.expected_rows is not None:
        checks.append(row_count(ctx.expected_rows, ctx.expected_rows, "row count"))
    else:
        checks.append(row_count(1, None, "row count"))
    return checks


def _prepare(df: pd.DataFrame, ctx: GateContext) -> pd.DataFrame:
    columns = [f"{aspect}_rating" for aspect in ctx.aspects]
    if all(column in df.columns for column in columns):
        return df.assign(**{ALL_RATED: df[columns].notna().all(axis=1)})
    return df


SUITE = Suite("annotate", build_annotate, prepare=_prepare)
