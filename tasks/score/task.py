"""The score stage: per shard, instructions, requests, completions, ratings and critiques joined
into ``scored/shard-NNNNN.parquet``, recomputed only when the stored results it joins changed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ultrafeedback.outputs import OUTPUTS
from ultrafeedback.records import (
    AspectAnnotation,
    Completion,
    CompletionRequest,
    Critique,
    Instruction,
    ScoredCompletion,
)
from ultrafeedback.spec import Spec
from ultrafeedback.tasks.annotate.jobs import (
    ANNOTATIONS,
    CRITIQUES,
    aspect_keys,
    available_by_instruction,
    critique_key_for,
    judge_kind,
    judge_model_id,
)
from ultrafeedback.tasks.generate.generate import response_hashes
from ultrafeedback.tasks.score.score import build_scored
from ultrafeedback.tasks.stages import Gate, Run, ShardReport, Stage, fingerprint, shard_file_rows


@cache
def _scoring_code_version() -> str:
    """Scored rows are parsed from stored judge text: a change to the parser or to the join
    re-scores every shard (no call is made again)."""
    tasks = Path(__file__).parent.parent
    digest = hashlib.sha256()
    for path in (tasks / "annotate" / "parse.py", tasks / "score" / "score.py"):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ShardKeys:
    """One shard's state from key columns alone: which completions and judge results it has, which
    judge results the current spec asks for, and the fingerprint its scored file must carry."""

    requests: int
    present: list[str]
    annotation_keys: list[str]
    critique_keys: list[str]
    missing_judge_results: int
    digest: str


def shard_keys(run: Run, shard: int) -> ShardKeys:
    spec = run.spec
    requests = run.request_keys(shard)
    completions = run.log("completions").index()
    present = [r.request_id for r in requests if r.request_id in completions]
    hashes = response_hashes(run.log("completions"), present) if present else {}
    annotations = run.log(ANNOTATIONS).index()
    wanted = [
        key
        for instruction_id, available in available_by_instruction(requests, hashes).items()
        for key, _ in aspect_keys(spec, instruction_id, available, hashes).values()
    ]
    annotation_keys = [key for key in wanted if key in annotations]
    critique_keys: list[str] = []
    missing = len(wanted) - len(annotation_keys)
    if spec.judge.critique:
        critiques = run.log(CRITIQUES).index()
        wanted = [critique_key_for(spec, i, hashes[i]) for i in present]
        critique_keys = [key for key in wanted if key in critiques]
        missing += len(wanted) - len(critique_keys)
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
    return ShardKeys(len(requests), present, annotation_keys, critique_keys, missing, digest)


def cached_shard_keys(run: Run, shard: int) -> ShardKeys:
    """``shard_keys``, shared by the stages the flow asks whether a shard is done."""
    return run.cached(("shard_keys", shard), lambda: shard_keys(run, shard))


def generate_done(run: Run, shard: int) -> bool:
    keys = cached_shard_keys(run, shard)
    return len(keys.present) == keys.requests


def annotate_done(run: Run, shard: int) -> bool:
    return cached_shard_keys(run, shard).missing_judge_results == 0


def score_done(run: Run, shard: int) -> bool:
    return run.store.fingerprint(OUTPUTS["scored"].shard_path(shard)) == cached_shard_keys(run, shard).digest


def run_score(run: Run, shard: int) -> ShardReport:
    """Join the shard's instructions, requests, completions, ratings and critiques into
    ``scored/shard-NNNNN.parquet`` (skipped when its inputs are unchanged)."""
    report = ShardReport(stage="score", shard=shard)
    path = OUTPUTS["scored"].shard_path(shard)
    keys = shard_keys(run, shard)
    if run.store.fingerprint(path) == keys.digest:
        report.skipped = True
        return report

    def located() -> dict[str, dict[str, list[str]]]:
        return {
            name: run.log(name).locate(wanted)
            for name, wanted in (
                ("completions", keys.present),
                (ANNOTATIONS, keys.annotation_keys),
                (CRITIQUES, keys.critique_keys),
            )
        }

    try:  # the join is seconds of Python: off the process whose event loop drives the API calls
        report.succeeded = run.offload(score_shard, run.spec, shard, keys.digest, located())
    except FileNotFoundError:  # a part was compacted between locating and reading: locate again here
        report.succeeded = score_shard(run.spec, shard, keys.digest, located())
    return report


def score_shard(spec: Spec, shard: int, digest: str, located: dict[str, dict[str, list[str]]]) -> int:
    """Join one shard's stored results into its scored file; returns its rows. ``located`` names,
    per result log, the parts that hold the shard's keys (``ResultLog.locate``), so this reads just
    those and needs no index: it runs in a worker process as well as in the flow's."""
    from ultrafeedback.infra.store import rows_table
    from ultrafeedback.tasks.common import store_for

    store = store_for(spec)
    models = {"completions": (Completion, "request_id"), ANNOTATIONS: (AspectAnnotation, "annotation_key")}
    models[CRITIQUES] = (Critique, "critique_key")

    def rows(name: str) -> dict[str, Any]:
        model, key = models[name]
        table = store.log(name).read_located(located[name])
        return {row[key]: model(**row) for row in table.to_pylist()}

    instructions = store.read_table(OUTPUTS["instructions"].shard_path(shard)).to_pylist()
    requests = store.read_table(OUTPUTS["requests"].shard_path(shard)).to_pylist()
    scored = build_scored(
        spec,
        {row["id"]: Instruction(**row) for row in instructions},
        [CompletionRequest(**row) for row in requests],
        rows("completions"),
        rows(ANNOTATIONS),
        rows(CRITIQUES),
    )
    store.write_shard(OUTPUTS["scored"].shard_path(shard), rows_table(scored, ScoredCompletion), digest)
    return len(scored)


def _summary(run: Run) -> list[Any]:
    from ultrafeedback.expectations.summary import count_check, unique_keys_check

    completions = run.log("completions").index()
    expected = sum(1 for s in run.shards() for r in run.request_keys(s) if r.request_id in completions)
    ids = run.column("scored", "completion_id")
    return [count_check("row count", len(ids), low=expected, high=expected), unique_keys_check("completion_id", ids)]


SCORE = Stage(
    name="score",
    reads=("instructions", "requests", "completions", "annotations", "critiques"),
    writes=("scored",),
    sharded=True,
    overlap=True,
    run_shard=run_score,
    done=score_done,
    gates=(Gate("annotate", shard_file_rows("scored"), summary=_summary),),
)
