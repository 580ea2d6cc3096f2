"""The annotate stage: per shard, the judge calls still to make, planned from key columns."""

from __future__ import annotations

from collections.abc import Container

from ultrafeedback.infra.progress import progress_callback
from ultrafeedback.infra.store import ResultLog
from ultrafeedback.tasks.annotate.jobs import ANNOTATIONS, CRITIQUES, plan_shard_jobs
from ultrafeedback.tasks.annotate.judge import ParseBreaker, annotate_shard
from ultrafeedback.tasks.generate.generate import response_hashes, shard_label
from ultrafeedback.tasks.stages import Run, ShardReport, Stage

LOGS = (ANNOTATIONS, f"failures/{ANNOTATIONS}", CRITIQUES, f"failures/{CRITIQUES}")


def run_annotate(run: Run, shard: int) -> ShardReport:
    """Rate and critique the shard's completions that have no stored judge result yet."""
    requests = run.requests(shard)
    completions = run.log("completions")
    done = completions.index()
    present = response_hashes(completions, [r.request_id for r in requests if r.request_id in done])

    def texts(ids: list[str]) -> dict[str, str]:
        table = completions.read_keys(ids, ["request_id", "response"])
        return dict(zip(table.column("request_id").to_pylist(), table.column("response").to_pylist(), strict=True))

    done_annotations: Container[str] = run.log(ANNOTATIONS).index()
    done_critiques: Container[str] = run.log(CRITIQUES).index()
    if not run.spec.execution.reparse_failed:  # what stayed unparseable after every re-ask is not paid again
        label = shard_label(shard)
        done_annotations = Either(done_annotations, parse_failed(run.log(f"failures/{ANNOTATIONS}"), label))
        done_critiques = Either(done_critiques, parse_failed(run.log(f"failures/{CRITIQUES}"), label))
    aspect_jobs, critique_jobs = plan_shard_jobs(
        run.spec, requests, present, done_annotations, done_critiques, lambda: run.instructions(shard), texts
    )
    if not aspect_jobs and not critique_jobs:
        return ShardReport(stage=ANNOTATIONS, shard=shard, skipped=True)
    logs = {name: run.log(name) for name in LOGS}
    gates = run.spec.gates
    breaker = run.shared(
        "parse_breaker", lambda: ParseBreaker(gates.max_parse_failure_rate, gates.parse_failure_window)
    )
    report = annotate_shard(
        run.spec, run.store, shard, aspect_jobs, critique_jobs, progress_callback(ANNOTATIONS), logs, breaker
    )
    for log in logs.values():
        log.compact(min_parts=2, label=shard_label(shard))
    return report


class Either:
    """A key is in it when it is in either container (no copy of a large index)."""

    def __init__(self, first: Container[str], second: Container[str]) -> None:
        self.first, self.second = first, second

    def __contains__(self, key: object) -> bool:
        return key in self.first or key in self.second


def parse_failed(failures: ResultLog, label: str) -> set[str]:
    """Keys of a shard whose latest recorded failure is a parse failure: their answers stayed
    unparseable after ``judge.parse_retries`` re-asks (a parse failure is recorded only then)."""
    names = [name for name in failures.parts() if failures.label_of(name) == label]
    if not names:
        return set()
    table = failures.read_parts(names, ["key", "reason"])
    return {key for key, reason in zip(*(table.column(c).to_pylist() for c in ("key", "reason")), strict=True)
            if reason.startswith("parse_")}  # fmt: skip


def annotate_done(run: Run, shard: int) -> bool:
    from ultrafeedback.tasks.score.task import annotate_done as done

    return done(run, shard)


ANNOTATE = Stage(
    name="annotate",
    reads=("instructions", "requests", "completions", "annotations", "critiques"),
    writes=("annotations", "critiques"),
    sharded=True,
    overlap=True,
    run_shard=run_annotate,
    done=annotate_done,
)
