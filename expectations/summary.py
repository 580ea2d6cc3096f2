"""A stage's gate over shards: each shard's suite result, merged, plus whole-stage summary checks.

A stage streams shard by shard, so its suite runs on each shard's rows (``GateContext(scope=
"shard")``, which leaves out row counts and stage-wide rates) and the stage adds a few checks
computed from key columns and counts: rows in total, key uniqueness across shards, success rates.
``merge`` turns both into the one ``GateResult`` the flow stores and enforces: a row check with a
``mostly`` threshold is judged again on the rows of every shard together (a shard may fall below
the threshold while the stage does not), any other check passes when it passed in every shard.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from ultrafeedback.expectations.models import CheckResult, GateResult, bounds_text

MAX_EXAMPLES = 3
_PHRASE = re.compile(r"^\d+ of \d+ (.+?) \(")
"""What a failing row is, in a row check's detail ("3 of 40 rows are null (expected none)")."""


def count_check(
    name: str, observed: int, low: int | None = None, high: int | None = None, what: str = "rows"
) -> CheckResult:
    """``low <= observed <= high`` (either bound may be None)."""
    expected = bounds_text(low, high)
    passed = observed is not None and (low is None or observed >= low) and (high is None or observed <= high)
    return CheckResult(
        name=name,
        passed=passed,
        observed=observed,
        expected=expected,
        threshold=low,
        detail=f"{observed} {what} (expected {expected})",
        expectation="summary",
    )


def unique_keys_check(column: str, keys: Iterable[Any]) -> CheckResult:
    """Every value of ``column`` appears once over all shards."""
    counts = Counter(keys)
    repeated = [key for key, n in counts.items() if n > 1]
    return CheckResult(
        name=f"{column} unique across shards",
        passed=not repeated,
        observed=len(repeated),
        expected="none",
        detail=f"{len(repeated)} of {len(counts)} {column} values appear in more than one row (expected none)",
        expectation="summary",
        examples=sorted(repeated)[:MAX_EXAMPLES],
    )


def rate_check(
    name: str, good: int, total: int, threshold: float, what: str, expectation: str = "summary"
) -> CheckResult:
    """``good / total >= threshold`` (a stage with nothing to do passes)."""
    observed = good / total if total else 1.0
    return CheckResult(
        name=name,
        passed=observed >= threshold,
        observed=round(observed, 6),
        expected=f">= {threshold:.4g}",
        threshold=threshold,
        detail=f"{good} of {total} {what} ({observed:.1%}; expected >= {threshold:.1%})",
        expectation=expectation,
    )


def _merge_check(checks: Sequence[CheckResult]) -> CheckResult:
    first = checks[0]
    failing = [c for c in checks if not c.passed]
    examples = [e for c in failing or checks for e in c.examples][:MAX_EXAMPLES]
    evaluated = [c.evaluated for c in checks]
    if first.threshold is not None and first.expectation != "pandas" and None not in evaluated:
        # a row check: judge `mostly` on all the shards' rows together, as one table would be
        unexpected = sum(int(c.observed or 0) for c in checks)
        total = sum(int(n or 0) for n in evaluated)
        mostly = float(first.threshold)
        passed = total == 0 or (total - unexpected) / total >= mostly
        errors = [c for c in failing if c.detail.startswith("cannot evaluate")]
        if errors:
            passed = False
        phrase = _PHRASE.match(first.detail)
        fails = phrase.group(1) if phrase else "rows fail"
        detail = errors[0].detail if errors else f"{unexpected} of {total} {fails} (expected {first.expected})"
        if examples and not errors:
            detail += ", e.g. " + ", ".join(repr(e)[:60] for e in examples)
        return first.model_copy(
            update={
                "passed": passed,
                "observed": unexpected,
                "detail": detail,
                "examples": examples,
                "evaluated": total,
            }
        )
    if failing:
        shown = failing[0]
        detail = shown.detail if len(failing) == 1 else f"{shown.detail} (and {len(failing) - 1} more shards)"
        return shown.model_copy(update={"detail": detail, "examples": examples})
    return first


def merge(stage: str, suite: str, shards: Sequence[GateResult], summary: Sequence[CheckResult]) -> GateResult:
    """One stage-wide GateResult from the shards' results (in suite order) and the summary checks."""
    order: list[str] = []
    by_name: dict[str, list[CheckResult]] = {}
    for result in shards:
        for check in result.checks:
            if check.name not in by_name:
                order.append(check.name)
                by_name[check.name] = []
            by_name[check.name].append(check)
    checks = [_merge_check(by_name[name]) for name in order]
    checks += list(summary)
    return GateResult(
        stage=stage,
        suite=suite,
        passed=all(check.passed for check in checks),
        checks=checks,
        row_count=sum(result.row_count for result in shards),
        duration_s=round(sum(result.duration_s for result in shards), 4),
    )
