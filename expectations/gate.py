"""Run a stage's suite as a gate: validate, translate to GateResult, and (on demand) stop the run.

``run_gate`` never raises on failed expectations: it returns a GateResult that the flow stores,
shows as a Prefect artifact, and passes to ``enforce``, which raises ``GateFailed`` so nothing
downstream runs and nothing is published.

One ephemeral GX context serves the whole process (built on first use, reused after). GX contexts
are not thread-safe and Prefect may run tasks in threads, so validations are serialised by a lock;
a gate runs once per stage, so this never bottlenecks a run.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import pandas as pd

from ultrafeedback.expectations.models import (
    STAGES,
    CheckResult,
    GateContext,
    GateFailed,
    GateResult,
    enforce,
    jsonable,
)
from ultrafeedback.expectations.suites import DERIVED_PREFIX, pandas_checks, prepare, suite_for

if TYPE_CHECKING:
    from great_expectations.data_context import AbstractDataContext

__all__ = [
    "STAGES",
    "CheckResult",
    "GateContext",
    "GateFailed",
    "GateResult",
    "enforce",
    "get_context",
    "run_gate",
]

DATASOURCE = "ultrafeedback"
RESULT_FORMAT = "SUMMARY"
"""Counts plus up to 20 example values per check: enough to explain a failure, cheap at 250k rows."""
MAX_EXAMPLES = 3

_context: AbstractDataContext | None = None
_lock = threading.RLock()
_definitions: dict[str, tuple[str, Any]] = {}
"""stage -> (the GateContext it was built for, as JSON; its ValidationDefinition)."""


def get_context() -> AbstractDataContext:
    """The process's ephemeral GX context (analytics and progress bars off), built once."""
    global _context
    with _lock:
        if _context is None:
            # Analytics switch honoured by GX versions that ship analytics; 1.24.1 has none to send.
            os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            # GX logs an INFO line per ephemeral context ("Created temporary directory ...")
            # (that module sets its own logger to INFO, so the parent's level is not enough)
            logging.getLogger("great_expectations").setLevel(logging.WARNING)
            logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)

            # GX fingerprints each in-memory batch (a batch marker we never read) by pickling the
            # whole frame when it holds list cells, as every stage's table does: up to a third of
            # a shard's validation. It skips frames over HASH_THRESHOLD bytes; none is under 0.
            from great_expectations.execution_engine import pandas_execution_engine

            pandas_execution_engine.HASH_THRESHOLD = 0
            context = gx.get_context(mode="ephemeral")
            context.variables.progress_bars = ProgressBarsConfig(globally=False)
            _context = context
        return _context


def _validation_definition(context: AbstractDataContext, stage: str, ctx: GateContext) -> Any:
    """The stage's ValidationDefinition, rebuilt only when the GateContext changed since last time.

    Replacing a suite costs more than validating a small table (GX's ``add_or_update`` compares
    every expectation pairwise), so a definition is reused while its context is unchanged.
    """
    import great_expectations as gx
    from great_expectations.exceptions import DataContextError

    key = ctx.model_dump_json()
    cached = _definitions.get(stage)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        source = context.data_sources.get(DATASOURCE)
    except KeyError:
        source = context.data_sources.add_pandas(DATASOURCE)
    try:
        asset = source.get_asset(stage)
    except LookupError:
        asset = source.add_dataframe_asset(name=stage)
    try:
        batch_definition = asset.get_batch_definition("whole")
    except KeyError:
        batch_definition = asset.add_batch_definition_whole_dataframe("whole")
    suite = suite_for(stage, ctx)
    for factory in (context.validation_definitions, context.suites):  # the definition refers to the suite
        try:
            factory.delete(suite.name)
        except DataContextError:
            pass
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=suite.name, data=batch_definition, suite=suite)
    )
    _definitions[stage] = (key, definition)
    return definition


def run_gate(stage: str, df: pd.DataFrame, ctx: GateContext) -> GateResult:
    """Validate one stage's table against its suite plus its pandas-computed checks.

    Returns the result whether or not the data pass; raises only for programming errors (an
    unknown stage, a GateContext missing a fact the stage needs).
    """
    from ultrafeedback.expectations.checks import suite_name

    started = time.perf_counter()
    if not len(df):
        # A table with no rows (a stage where every request failed; without columns, too) has
        # nothing for the row and column checks: GX would only answer "column does not exist" once
        # per expectation. Its row counts and the stage's own checks say what went wrong.
        checks, df = _without_rows(stage, df, ctx)
    else:
        frame = prepare(stage, df, ctx)
        with _lock:
            context = get_context()
            definition = _validation_definition(context, stage, ctx)
            validation = definition.run(batch_parameters={"dataframe": frame}, result_format=RESULT_FORMAT)
            # An ephemeral context keeps every result in memory; a long-lived worker must not grow.
            _forget_results(context)
        # GX returns results grouped by metric, not in suite order; report them in suite order.
        order = {e.meta["check"]: i for i, e in enumerate(definition.suite.expectations)}
        checks = sorted((_check_from_gx(item) for item in validation.results), key=lambda c: order.get(c.name, 0))
    checks += pandas_checks(stage, df, ctx)
    return GateResult(
        stage=stage,
        suite=suite_name(stage),
        passed=all(check.passed for check in checks),
        checks=checks,
        row_count=len(df),
        duration_s=round(time.perf_counter() - started, 4),
    )


def _without_rows(stage: str, df: pd.DataFrame, ctx: GateContext) -> tuple[list[CheckResult], pd.DataFrame]:
    """The suite's row-count checks judged on a table with no rows (the others need rows), and the
    table with the suite's columns added, empty, so that the stage's own checks count zero rows
    instead of reporting a missing column."""
    from ultrafeedback.expectations.suites import suite_for
    from ultrafeedback.expectations.summary import count_check

    checks: list[CheckResult] = []
    columns: list[str] = []
    for e in suite_for(stage, ctx).expectations:
        kind = type(e).__name__
        if kind == "ExpectTableRowCountToBeBetween":
            check = count_check(e.meta["check"], 0, e.min_value, e.max_value)
            checks.append(check.model_copy(update={"expectation": "expect_table_row_count_to_be_between"}))
        elif kind == "ExpectTableColumnsToMatchSet":
            columns += [c for c in e.column_set if not c.startswith(DERIVED_PREFIX) and c not in df.columns]
    empty = pd.DataFrame({column: pd.Series([], dtype="object") for column in sorted(set(columns))})
    return checks, pd.concat([df, empty], axis=1) if len(df.columns) else empty


def check_stage(stage: str, df: pd.DataFrame, ctx: GateContext) -> GateResult:
    """``run_gate`` then ``enforce``: the one-call form for a flow that stops on failure."""
    return enforce(run_gate(stage, df, ctx))


def _forget_results(context: AbstractDataContext) -> None:
    store = context.validation_results_store
    for key in store.list_keys():
        store.remove_key(key)


# --------------------------------------------------------------------------- GX result -> CheckResult


def _exception_message(item: Any) -> str | None:
    info = item.exception_info or {}
    candidates = [info] if "raised_exception" in info else list(info.values())
    for entry in candidates:
        if isinstance(entry, dict) and entry.get("raised_exception"):
            return str(entry.get("exception_message") or "unknown error").splitlines()[0]
    return None


def _check_from_gx(item: Any) -> CheckResult:
    config = item.expectation_config
    meta = config.meta or {}
    name = meta.get("check") or config.type
    kwargs = config.kwargs
    error = _exception_message(item)
    if error is not None:
        return CheckResult(name=name, passed=False, expectation=config.type, detail=f"cannot evaluate: {error}")
    result = item.result or {}
    passed = bool(item.success)
    if config.type == "expect_table_columns_to_match_set":
        return _columns_check(name, passed, config.type, kwargs, result)
    if config.type.startswith("expect_table_row_count"):
        return _count_check(name, passed, config.type, kwargs, result)
    return _rows_check(name, passed, config.type, kwargs, result, meta.get("fails") or "rows fail")


def _columns_check(name: str, passed: bool, kind: str, kwargs: dict[str, Any], result: dict[str, Any]) -> CheckResult:
    mismatched = (result.get("details") or {}).get("mismatched") or {}
    observed = {
        "missing": [c for c in mismatched.get("missing", []) if not c.startswith(DERIVED_PREFIX)],
        "unexpected": [c for c in mismatched.get("unexpected", []) if not c.startswith(DERIVED_PREFIX)],
    }
    wanted = sorted(c for c in kwargs.get("column_set", []) if not c.startswith(DERIVED_PREFIX))
    exact = kwargs.get("exact_match", True)
    parts = [f"{label}: {', '.join(cols)}" for label, cols in observed.items() if cols]
    if not exact:
        parts = [part for part in parts if not part.startswith("unexpected")]
    detail = "; ".join(parts) or "all expected columns present"
    return CheckResult(
        name=name,
        passed=passed,
        observed=observed,
        expected=("exactly " if exact else "at least ") + ", ".join(wanted),
        detail=detail,
        expectation=kind,
    )


def _count_check(name: str, passed: bool, kind: str, kwargs: dict[str, Any], result: dict[str, Any]) -> CheckResult:
    from ultrafeedback.expectations.summary import count_check

    observed = jsonable(result.get("observed_value"))
    check = count_check(name, observed, kwargs.get("min_value"), kwargs.get("max_value"))
    return check.model_copy(update={"passed": passed, "expectation": kind})


def _rows_check(
    name: str, passed: bool, kind: str, kwargs: dict[str, Any], result: dict[str, Any], fails: str
) -> CheckResult:
    unexpected = int(result.get("unexpected_count") or 0)
    total = int(result.get("element_count") or 0)
    # GX's `mostly` compares against the non-null rows, except for the not-null check itself
    evaluated = total if "not_be_null" in kind else total - int(result.get("missing_count") or 0)
    mostly = kwargs.get("mostly", 1.0)
    mostly = 1.0 if mostly is None else float(mostly)
    if mostly >= 1.0:
        expected = "none"
    else:
        expected = f"at most {(1.0 - mostly) * 100:.4g}% of non-null rows"
    detail = f"{unexpected} of {total} {fails}"
    if unexpected and mostly < 1.0:
        detail += f" ({float(result.get('unexpected_percent') or 0.0):.4g}%)"
    detail += f" (expected {expected})"
    counts = result.get("partial_unexpected_counts") or []
    if counts and all(isinstance(entry, dict) and "value" in entry for entry in counts):
        values = [jsonable(entry["value"]) for entry in counts[:MAX_EXAMPLES]]
    else:
        values = [jsonable(v) for v in (result.get("partial_unexpected_list") or [])[:MAX_EXAMPLES]]
    if values and all(v is None for v in values):  # null checks: row positions say more
        values = [jsonable(i) for i in (result.get("partial_unexpected_index_list") or [])[:MAX_EXAMPLES]]
        if values:
            detail += ", e.g. rows " + ", ".join(str(v) for v in values)
    elif values:
        detail += ", e.g. " + ", ".join(_short(v) for v in values)
    return CheckResult(
        name=name,
        passed=passed,
        observed=unexpected,
        expected=expected,
        threshold=mostly,
        detail=detail,
        expectation=kind,
        examples=values,
        evaluated=evaluated,
    )


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
