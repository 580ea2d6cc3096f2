"""Why a stage produced nothing: one line for a failed gate over an empty table.

A gate whose table has no rows fails its row counts and little else, which says *that* nothing
came out, not *why*. ``why_empty`` reads what the stage left besides its output (quarantined and
dropped records, open request failures, binarize's drop counts, the scores pairs rank by) and says
it in one line, which the flow puts first in the gate's result; the gate's summary line is then
that line alone (``GateResult.summary``), the other checks stay in the stored result.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from ultrafeedback.outputs import OUTPUTS

if TYPE_CHECKING:
    from ultrafeedback.infra.store import Store
    from ultrafeedback.tasks.stages import Run


def with_reason_if_empty(run: Run, suite: str, result: Any) -> Any:
    """A failed gate's result over an empty table, with the ``why_empty`` line as its first check."""
    from ultrafeedback.expectations.models import NOTHING_PRODUCED, CheckResult

    if result.passed or result.row_count:
        return result
    why = why_empty(run, suite)
    if why is None:
        return result
    check = CheckResult(name=NOTHING_PRODUCED, passed=False, observed=0, expected=">= 1 row", detail=why)
    return result.model_copy(update={"checks": [check, *result.checks]})


def why_empty(run: Run, suite: str) -> str | None:
    """``"<stage> produced no <rows>: <why>"`` for a gate over an empty table, or None when the
    suite explains it itself (aggregate) or the stage is not one this knows."""
    explain = _EXPLAIN.get(suite)
    return None if explain is None else explain(run)


def _reasons(counts: Counter[str] | dict[str, int], top: int = 3) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in Counter(counts).most_common(top))


def _log_reasons(store: Store, name: str) -> Counter[str]:
    if not store.log(name).parts():
        return Counter()
    return Counter(store.log(name).read(["reason"]).column("reason").to_pylist())


def _ingest(run: Run) -> str:
    quarantined, dropped = _log_reasons(run.store, "quarantine"), _log_reasons(run.store, "dropped")
    if not quarantined and not dropped:
        return "ingest produced no instruction: the sources hold no record"
    parts = [
        f"{sum(counts.values())} {what} ({_reasons(counts)})"
        for what, counts in (("quarantined", quarantined), ("dropped", dropped))
        if counts
    ]
    return (
        "ingest produced no instruction: every record read was quarantined or dropped: "
        + ", ".join(parts)
        + " (`ultrafeedback status SPEC` lists them)"
    )


def _failed(run: Run, stage: str, outputs: tuple[str, ...], what: str, calls: str) -> str:
    from ultrafeedback.tasks.aggregate.task import top_failures

    reasons = top_failures(run.store, outputs=outputs)
    if not reasons:
        return f"{stage} produced no {what}: no {calls} was made"
    return f"{stage} produced no {what}: every {calls} failed ({_reasons(reasons)})"


def _generate(run: Run) -> str:
    return _failed(run, "generate", ("completions",), "completion", "request")


def _annotate(run: Run) -> str:
    if not run.log("completions").index():
        return "annotate had no completion to judge: generate stored none"
    return _failed(run, "annotate", ("annotations", "critiques"), "rating", "judge call")


def _scores(run: Run, column: str) -> tuple[int, int, Counter[str]]:
    """(completions scored, of them with a ``column`` score, per instruction the number with one)."""
    scored = OUTPUTS["scored"]
    total = 0
    per_instruction: Counter[str] = Counter()
    for shard in run.shards():
        path = scored.shard_path(shard)
        if not run.store.exists(path):
            continue
        table = run.store.read_table(path, ["instruction_id", column])
        total += table.num_rows
        for instruction, score in zip(*(table.column(c).to_pylist() for c in ("instruction_id", column)), strict=True):
            if score is not None and score == score:  # not NaN
                per_instruction[instruction] += 1
    return total, sum(per_instruction.values()), per_instruction


def _pairs(run: Run) -> str:
    kind = run.spec.pairs.score
    column = {"fine_grained": "fine_grained_score", "overall": "overall_score"}[kind]
    total, with_score, per_instruction = _scores(run, column)
    if not total:
        return "pairs produced no pair: no completion was scored"
    if not any(n >= 2 for n in per_instruction.values()):
        return (
            f"pairs produced no pair: no instruction has two completions with a {kind} score "
            f"({with_score} of {total} scored completions have one)"
        )
    return f"pairs produced no pair: every instruction's completions tie on the {kind} score"


def _binarized(run: Run) -> str:
    dropped = (run.facts.get("pairs") or {}).get("binarize_dropped") or {}
    if not dropped:
        return "binarize produced no row: no completion was scored"
    rule = run.spec.binarize.rule
    return f"binarize ({rule} rule) produced no row: every instruction was left out ({_reasons(dropped)})"


_EXPLAIN = {
    "ingest": _ingest,
    "generate": _generate,
    "annotate": _annotate,
    "pairs": _pairs,
    "binarized": _binarized,
}
