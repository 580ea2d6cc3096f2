"""What every stage's suite is built from: the ``Suite`` shape, the expectation constructors the
suites share, and the suite naming.

Every expectation carries ``meta={"check": <name>, "fails": <what a failing row is>}``: the name
is the check's stable identifier in GateResult, the phrase makes the failure message readable.
Great Expectations is imported inside the constructors only (its import costs seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from ultrafeedback.expectations.models import CheckResult, GateContext

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

SUITE_PREFIX = "ultrafeedback"

DERIVED_PREFIX = "__gx_"
"""Columns ``prepare`` adds for the suites; never part of a stage's own table."""


@dataclass(frozen=True)
class Suite:
    """One stage's gate: its GX expectations, the derived columns they read, and the checks no GX
    expectation expresses (computed in pandas; ``ctx.scope`` says whether the table is a shard)."""

    stage: str
    build: Callable[[GateContext], list[Expectation]]
    prepare: Callable[[pd.DataFrame, GateContext], pd.DataFrame] | None = None
    checks: Callable[[pd.DataFrame, GateContext], list[CheckResult]] | None = None


def suite_name(stage: str) -> str:
    """The GX suite name of a stage: ``ultrafeedback.<stage>``."""
    return f"{SUITE_PREFIX}.{stage}"


def gx_expectations() -> Any:
    import great_expectations.expectations as gxe

    return gxe


def meta(check: str, fails: str = "") -> dict[str, Any]:
    return {"meta": {"check": check, "fails": fails}, "description": check}


def columns_match(record: str, columns: Sequence[str], exact: bool = True) -> Expectation:
    name = f"columns match {record}" if exact else "columns present"
    return gx_expectations().ExpectTableColumnsToMatchSet(column_set=list(columns), exact_match=exact, **meta(name))


def not_null(column: str, mostly: float = 1.0, check: str | None = None) -> Expectation:
    return gx_expectations().ExpectColumnValuesToNotBeNull(
        column=column, mostly=mostly, **meta(check or f"{column} not null", "rows are null")
    )


def unique(column: str) -> Expectation:
    return gx_expectations().ExpectColumnValuesToBeUnique(
        column=column, **meta(f"{column} unique", "rows share their value with another row")
    )


def compound_unique(columns: list[str], check: str, fails: str) -> Expectation:
    return gx_expectations().ExpectCompoundColumnsToBeUnique(column_list=columns, **meta(check, fails))


def non_empty(column: str, mostly: float = 1.0, **kwargs: Any) -> Expectation:
    # A length check counts "  " as content; a regex for any non-space character does not.
    kwargs.setdefault("meta", {"check": f"{column} not empty", "fails": "rows are empty"})
    kwargs.setdefault("description", kwargs["meta"]["check"])
    return gx_expectations().ExpectColumnValuesToMatchRegex(column=column, regex=r"\S", mostly=mostly, **kwargs)


def in_set(column: str, values: Sequence[Any], check: str, fails: str) -> Expectation:
    return gx_expectations().ExpectColumnValuesToBeInSet(
        column=column, value_set=sorted(set(values)), **meta(check, fails)
    )


def between(column: str, low: float | None, high: float | None, check: str, **kwargs: Any) -> Expectation:
    return gx_expectations().ExpectColumnValuesToBeBetween(
        column=column, min_value=low, max_value=high, **kwargs, **meta(check, "rows are out of range")
    )


def row_count(low: int | None, high: int | None, check: str) -> Expectation:
    return gx_expectations().ExpectTableRowCountToBeBetween(min_value=low, max_value=high, **meta(check))


def fields_of(record: type) -> list[str]:
    return list(record.model_fields)


def in_pool(column: str, ctx: GateContext) -> list[Expectation]:
    if ctx.allowed_models is None:
        return []
    return [in_set(column, ctx.allowed_models, f"{column} in pool", "rows name a model outside the pool")]


def in_sources(ctx: GateContext) -> list[Expectation]:
    if ctx.allowed_sources is None:
        return []
    return [in_set("source", ctx.allowed_sources, "source in allowed set", "rows have an unknown source")]


def require(ctx: GateContext, stage: str, *facts: str) -> None:
    missing = [fact for fact in facts if getattr(ctx, fact) is None]
    if missing:
        raise ValueError(f"gate {stage!r} needs GateContext.{', '.join(missing)}")


def missing_columns(df: pd.DataFrame, name: str, *columns: str) -> CheckResult | None:
    absent = [column for column in columns if column not in df.columns]
    if not absent:
        return None
    return CheckResult(name=name, passed=False, detail=f"cannot evaluate: column {', '.join(absent)} missing")
