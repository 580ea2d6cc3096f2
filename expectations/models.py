"""The gate's value types: what a gate is told (GateContext) and what it answers (GateResult).

Kept free of Great Expectations imports so the flow, the CLI and the store can build contexts,
read stored results and catch ``GateFailed`` without paying GX's import cost.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ultrafeedback.records import ASPECTS, PRINCIPLES
from ultrafeedback.spec import Gates

if TYPE_CHECKING:
    from ultrafeedback.spec import Spec

NOTHING_PRODUCED = "stage produced nothing"
"""A failed gate's check over an empty table saying which stage produced nothing and why
(``tasks.empty_stage``); ``GateResult.summary`` is then that line alone."""

STAGES: tuple[str, ...] = ("ingest", "assign", "generate", "annotate", "aggregate", "pairs", "binarized")
"""The stages that have a suite, in pipeline order."""


class GateContext(BaseModel):
    """Thresholds plus the facts about one stage that its data cannot tell by itself.

    ``GateContext.from_spec(spec, expected_rows=..., quarantined=...)`` fills everything the spec
    knows; the flow adds the counts it has at hand. A fact left as ``None`` means "not checked"
    (for ad-hoc use on a table whose context is unknown); ``from_spec`` always fills them.

    ``expected_rows`` means, per stage: assign = instructions x k (exact), generate = the
    number of requests (at least ``min_generation_success`` of them, at most all), annotate =
    the number of completions (exact). ingest, aggregate, pairs and binarized do not use it.

    ``expected_completions`` is the aggregate stage's fact: the number of scored completions
    (the rows the annotate gate passed), which the leaderboard's per-model ``completions`` must
    add up to. The aggregate suite requires it: a leaderboard cannot tell by itself that it lost
    or double-counted rows.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    gates: Gates = Field(default_factory=Gates)
    k: int | None = Field(default=None, ge=1, description="completions_per_instruction")
    expected_rows: int | None = Field(default=None, ge=0)
    expected_completions: int | None = Field(
        default=None, ge=0, description="scored completions the aggregate leaderboard must count"
    )
    quarantined: int = Field(default=0, ge=0, description="records the ingest stage quarantined")
    allowed_sources: list[str] | None = None
    allowed_models: list[str] | None = None
    principles: list[str] = Field(default_factory=lambda: list(PRINCIPLES))
    aspects: list[str] = Field(default_factory=lambda: list(ASPECTS), description="judged aspects")
    critique: bool = True
    strict_binarized: bool = Field(
        default=False,
        description="binarized chosen must score strictly higher (Argilla rule); H4 keeps ties",
    )
    failures: dict[str, int] = Field(
        default_factory=dict,
        description="the most frequent open request failures ('completions:http_500' -> count), "
        "for a gate whose stage has nothing to check because every request failed",
    )
    quarantine_examples: list[dict[str, Any]] = Field(
        default_factory=list, description="a few Quarantined records (model_dump), shown on failure"
    )
    scope: Literal["stage", "shard"] = Field(
        default="stage",
        description="'shard': the table is one shard of the stage; whole-stage checks (row counts, "
        "rates over the stage) are left to the stage summary (expectations.summary)",
    )

    @property
    def allow_ties(self) -> bool:
        """The H4 rule keeps rejected completions that tie with the chosen one; Argilla drops them."""
        return not self.strict_binarized

    @classmethod
    def from_spec(cls, spec: Spec, **facts: Any) -> GateContext:
        """Everything the spec determines, plus the stage facts given as keywords."""
        values: dict[str, Any] = {
            "gates": spec.gates,
            "k": spec.completions_per_instruction,
            "allowed_sources": [source.name for source in spec.sources],
            "allowed_models": [model.id for model in spec.models],
            "aspects": list(spec.judge.aspects),
            "critique": spec.judge.critique,
            "strict_binarized": spec.binarize.rule == "argilla",
        }
        if spec.principles is not None:
            values["principles"] = list(spec.principles)
        values.update(facts)
        return cls(**values)


class CheckResult(BaseModel):
    """One check of a gate: a GX expectation or a pandas-computed check, in one shape.

    ``observed`` is the number a user compares with ``expected``: offending rows for row checks,
    the row count for count checks, missing/unexpected names for the column check.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    passed: bool
    observed: Any = None
    expected: str = ""
    threshold: float | None = Field(default=None, description="mostly / minimum rate, when one applies")
    detail: str = ""
    expectation: str = Field(default="pandas", description="the GX expectation type, or 'pandas'")
    examples: list[Any] = Field(default_factory=list)
    evaluated: int | None = Field(
        default=None, description="rows a row check judged (its `mostly` denominator); merges shard results"
    )


class GateResult(BaseModel):
    """The outcome of one stage's gate; JSON-able for the store, release manifests and artifacts."""

    model_config = ConfigDict(frozen=True)

    stage: str
    suite: str
    passed: bool
    checks: list[CheckResult]
    row_count: int
    duration_s: float

    @property
    def failed(self) -> list[CheckResult]:
        """The checks that did not pass, in suite order."""
        return [check for check in self.checks if not check.passed]

    def check(self, name: str) -> CheckResult:
        """The check called ``name`` (KeyError when the suite has no such check)."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"gate {self.stage!r} has no check {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict (the store writes it next to the stage, releases embed it)."""
        return self.model_dump(mode="json")

    def table(self) -> list[dict[str, Any]]:
        """One flat row per check, for ``prefect.artifacts.create_table_artifact`` and the CLI."""
        return [
            {
                "check": check.name,
                "passed": check.passed,
                "observed": json.dumps(jsonable(check.observed)),
                "expected": check.expected,
                "detail": check.detail,
            }
            for check in self.checks
        ]

    def summary(self) -> str:
        """One human line; on failure it names every failed check with observed vs expected."""
        if self.passed:
            return (
                f"gate {self.stage!r} passed: {len(self.checks)} checks on {self.row_count} rows "
                f"in {self.duration_s:.2f} s"
            )
        for check in self.failed:  # an empty table: which stage produced nothing and why says it all
            if check.name == NOTHING_PRODUCED:
                return f"gate {self.stage!r} failed: {check.detail}"
        parts = [f"{check.name}: {check.detail}" for check in self.failed]
        return f"gate {self.stage!r} failed: " + "; ".join(parts)


class GateFailed(Exception):
    """Raised by ``enforce`` when a stage's data fail their suite; carries the GateResult."""

    def __init__(self, result: GateResult):
        super().__init__(result.summary())
        self.result = result

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect and Dask pickle exceptions across processes; rebuild from the result, not args.
        return (GateFailed, (self.result,))


def enforce(result: GateResult) -> GateResult:
    """Raise GateFailed unless the gate passed; returns the result so calls can be chained."""
    if not result.passed:
        raise GateFailed(result)
    return result


def bounds_text(low: float | None, high: float | None) -> str:
    """``exactly N``, ``>= N``, ``<= N`` or ``between N and M``: a count check's expectation."""
    if low is not None and low == high:
        return f"exactly {low}"
    if high is None:
        return f">= {low if low is not None else 0}"
    if low is None:
        return f"<= {high}"
    return f"between {low} and {high}"


def jsonable(value: Any) -> Any:
    """numpy scalars/arrays, NaN and tuples as plain JSON values (GX results carry all of them)."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, Sequence | set | frozenset):
        return [jsonable(item) for item in value]
    item = getattr(value, "item", None)  # numpy scalar
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return jsonable(item())
    tolist = getattr(value, "tolist", None)  # numpy array
    if callable(tolist):
        return jsonable(tolist())
    return str(value)
