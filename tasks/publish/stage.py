"""The publish stage as the flow runs it: a numbered release of what the gates passed."""

from __future__ import annotations

from ultrafeedback.tasks.stages import Run, ShardReport, Stage


def run_publish(run: Run, shard: int) -> ShardReport:
    from ultrafeedback.tasks.publish.task import publish_task

    report = ShardReport(stage="publish", shard=shard)
    release = publish_task.fn(run.spec, run.facts.get("aggregate"), run.facts["gates"], run.facts["summary"])
    run.facts["release"] = release
    report.skipped = not release.get("created", True)
    return report


PUBLISH = Stage(
    name="publish",
    reads=("scored", "pairs", "binarized"),
    writes=(),
    sharded=False,
    run_shard=run_publish,
)
