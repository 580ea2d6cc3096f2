"""The annotate and score stages: per shard, the judge calls still to make, then the scored table."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

from infra.progress import progress_callback
from tasks.annotate.annotate import (
    ANNOTATIONS,
    CRITIQUES,
    _available,
    annotate_shard,
    aspect_keys,
    build_scored,
    critique_key_for,
    judge_kind,
    judge_model_id,
    plan_shard_jobs,
)
from tasks.generate.generate import shard_label
from tasks.stages import Gate, Run, ShardReport, Stage, fingerprint, shard_file_rows
from ultrafeedback.outputs import OUTPUTS
from ultrafeedback.records import AspectAnnotation, Completion, Critique, ScoredCompletion

LOGS = (ANNOTATIONS, f"failures/{ANNOTATIONS}", CRITIQUES, f"failures/{CRITIQUES}")


def run_annotate(run: Run, shard: int) -> ShardReport:
    """Rate and critique the shard's completions that have no stored judge result yet."""
    requests = run.requests(shard)
    completions = run.log("completions")
    present = completions.index()

    def texts(ids: list[str]) -> dict[str, str]:
        table = completions.read_keys(ids, ["request_id", "response"])
        return dict(zip(table.column("request_id").to_pylist(), table.column("response").to_pylist(), strict=True))

    aspect_jobs, critique_jobs = plan_shard_jobs(
        run.spec,
        requests,
        present,
        run.log(ANNOTATIONS).index(),
        run.log(CRITIQUES).index(),
        lambda: run.instructions(shard),
        texts,
    )
    if not aspect_jobs and not critique_jobs:
        return ShardReport(stage=ANNOTATIONS, shard=shard, skipped=True)
    logs = {name: run.log(name) for name in LOGS}
    report = annotate_shard(
        run.spec, run.store, shard, aspect_jobs, critique_jobs, progress_callback(ANNOTATIONS), logs=logs
    )
    for log in logs.values():
        log.compact(min_parts=2, label=shard_label(shard))
    return report


# --------------------------------------------------------------------------- score


@cache
def _scoring_code_version() -> str:
    """Scored rows are parsed from stored judge text: a change to the parser or to the join
    re-scores every shard (no call is made again)."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in ("parse.py", "annotate.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


def _score_inputs(run: Run, shard: int) -> tuple[str, list[str], list[str], list[str]]:
    """(fingerprint, completion ids, annotation keys, critique keys) of one shard's scored file:
    the stored results it joins, found from key columns alone."""
    spec = run.spec
    requests = run.requests(shard)
    completions = run.log("completions").index()
    present = [r.request_id for r in requests if r.request_id in completions]
    annotations = run.log(ANNOTATIONS).index()
    annotation_keys = [
        key
        for instruction_id, available in _available(requests, set(present)).items()
        for key, _ in aspect_keys(spec, instruction_id, available).values()
        if key in annotations
    ]
    critique_keys: list[str] = []
    if spec.judge.critique:
        critiques = run.log(CRITIQUES).index()
        critique_keys = [k for k in (critique_key_for(spec, i) for i in present) if k in critiques]
    digest = fingerprint(
        "scored",
        run.store.fingerprint(OUTPUTS["instructions"].shard_path(shard)),
        run.store.fingerprint(OUTPUTS["requests"].shard_path(shard)),
        present,
        annotation_keys,
        critique_keys,
        judge_model_id(spec),
        judge_kind(spec),
        list(spec.judge.aspects),
        spec.judge.critique,
        _scoring_code_version(),
    )
    return digest, present, annotation_keys, critique_keys


def run_score(run: Run, shard: int) -> ShardReport:
    """Join the shard's instructions, requests, completions, ratings and critiques into
    ``scored/shard-NNNNN.parquet`` (skipped when its inputs are unchanged)."""
    from infra.store import rows_table

    report = ShardReport(stage="score", shard=shard)
    path = OUTPUTS["scored"].shard_path(shard)
    digest, present, annotation_keys, critique_keys = _score_inputs(run, shard)
    if run.store.fingerprint(path) == digest:
        report.skipped = True
        return report

    def rows(name: str, model: type, keys: list[str], key: str) -> dict[str, Any]:
        table = run.log(name).read_keys(keys)
        return {row[key]: model(**row) for row in table.to_pylist()}

    scored = build_scored(
        run.spec,
        run.instructions(shard),
        run.requests(shard),
        rows("completions", Completion, present, "request_id"),
        rows(ANNOTATIONS, AspectAnnotation, annotation_keys, "annotation_key"),
        rows(CRITIQUES, Critique, critique_keys, "critique_key"),
    )
    run.store.write_shard(path, rows_table(scored, ScoredCompletion), digest)
    report.succeeded = len(scored)
    return report


def _summary(run: Run) -> list[Any]:
    from expectations.summary import count_check, unique_keys_check

    completions = run.log("completions").index()
    expected = sum(1 for s in run.shards() for r in run.requests(s) if r.request_id in completions)
    ids = run.column("scored", "completion_id")
    return [count_check("row count", len(ids), low=expected, high=expected), unique_keys_check("completion_id", ids)]


ANNOTATE = Stage(
    name="annotate",
    reads=("instructions", "requests", "completions", "annotations", "critiques"),
    writes=("annotations", "critiques"),
    sharded=True,
    overlap=True,
    run_shard=run_annotate,
)

SCORE = Stage(
    name="score",
    reads=("instructions", "requests", "completions", "annotations", "critiques"),
    writes=("scored",),
    sharded=True,
    overlap=True,
    run_shard=run_score,
    gates=(Gate("annotate", shard_file_rows("scored"), summary=_summary),),
)
