"""The annotate stage: per shard, the judge calls still to make, planned from key columns."""

from __future__ import annotations

from ultrafeedback.infra.progress import progress_callback
from ultrafeedback.tasks.annotate.jobs import ANNOTATIONS, CRITIQUES, plan_shard_jobs
from ultrafeedback.tasks.annotate.judge import annotate_shard
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
