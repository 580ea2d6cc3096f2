"""One Great Expectations suite per pipeline stage, kept as code: the registry of the stage gates.

Each stage's gate (``expectations.stages.<stage>``) has a builder that returns its GX
expectations (named ``ultrafeedback.<stage>``), an optional ``prepare`` step that adds the derived
scalar columns GX needs for what it cannot read directly (lists of chat messages, "every aspect
rated"), and the checks computed in pandas for what no GX expectation expresses (exactly k rows
per instruction, the quarantine count, the leaderboard's completions total). ``run_gate`` in
``expectations.gate`` runs all three and reports them as one list of checks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ultrafeedback.expectations.checks import DERIVED_PREFIX, Suite, suite_name
from ultrafeedback.expectations.models import STAGES, CheckResult, GateContext
from ultrafeedback.expectations.stages import aggregate, annotate, assign, binarized, generate, ingest, pairs

if TYPE_CHECKING:
    import great_expectations as gx

__all__ = ["DERIVED_PREFIX", "SUITES", "pandas_checks", "prepare", "suite_for", "suite_name"]

SUITES: dict[str, Suite] = {
    module.SUITE.stage: module.SUITE for module in (ingest, assign, generate, annotate, aggregate, pairs, binarized)
}
"""Stage -> its gate, in pipeline order (``expectations.models.STAGES``)."""


def _suite(stage: str) -> Suite:
    if stage not in SUITES:
        raise ValueError(f"unknown stage {stage!r}; stages with a suite: {', '.join(STAGES)}")
    return SUITES[stage]


def suite_for(stage: str, ctx: GateContext) -> gx.ExpectationSuite:
    """The stage's suite as a (not yet saved) ``gx.ExpectationSuite`` named ``ultrafeedback.<stage>``.

    Expectations on columns named ``__gx_*`` read the derived columns that ``prepare`` adds. A
    shard's suite (``ctx.scope == "shard"``) leaves out row counts: the stage summary checks them.
    """
    import great_expectations as gx

    expectations = _suite(stage).build(ctx)
    if ctx.scope == "shard":
        expectations = [e for e in expectations if not type(e).__name__.startswith("ExpectTableRowCount")]
    return gx.ExpectationSuite(name=suite_name(stage), expectations=expectations)


def prepare(stage: str, df: pd.DataFrame, ctx: GateContext) -> pd.DataFrame:
    """The table GX validates: ``df`` plus the derived ``__gx_*`` columns its suite reads.

    GX's pandas metrics cannot read list cells (its value-length metric measures ``str(list)``),
    so list-valued facts are flattened here into scalar columns. ``df`` itself is not modified.
    """
    suite = _suite(stage)
    return suite.prepare(df, ctx) if suite.prepare else df


def pandas_checks(stage: str, df: pd.DataFrame, ctx: GateContext) -> list[CheckResult]:
    """The stage's checks that no GX expectation expresses, computed directly."""
    suite = _suite(stage)
    return suite.checks(df, ctx) if suite.checks else []
