"""The ingest gate: instructions with unique ids and real text, from known sources; the quarantine within its limit."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ultrafeedback.expectations.checks import (
    Suite,
    columns_match,
    fields_of,
    in_sources,
    non_empty,
    not_null,
    row_count,
    unique,
)
from ultrafeedback.expectations.models import CheckResult, GateContext
from ultrafeedback.records import Instruction

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation


def build_ingest(ctx: GateContext) -> list[Expectation]:
    """Instructions: unique ids, real text, known sources, and enough of them."""
    return [
        columns_match("Instruction", fields_of(Instruction)),
        not_null("id"),
        unique("id"),
        not_null("instruction"),
        non_empty("instruction"),
        not_null("source"),
        *in_sources(ctx),
        row_count(ctx.gates.min_instructions, None, "enough instructions"),
    ]


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


def _checks(df: pd.DataFrame, ctx: GateContext) -> list[CheckResult]:
    return [] if ctx.scope == "shard" else [quarantine_check(ctx)]  # a shard's stage summary has it


SUITE = Suite("ingest", build_ingest, checks=_checks)
