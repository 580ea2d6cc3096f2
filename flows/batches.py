"""Waiting for Batch API batches without holding a worker.

A shard whose calls sit in batches that are still running (``infra.llm.batch``) ends its task at
once with ``waiting`` calls in its report, and does not enter its next stage. This runs the
pipeline of a group of stages again every ``execution.batch_poll_s`` seconds while some shard
waits: each pass gives a waiting shard a short task (it collects what has ended, submits re-asks
and what could not be sent yet, and ends), shards that are done cost no task, and between passes
the flow only sleeps, so no task slot (``execution.parallel_shards``) is held while the provider
works. A run that is killed, crashes or is cancelled meanwhile loses nothing: the batches are in
the store's registry, and the next run (whenever it is started) picks them up.

The batches (stage, shard, endpoint, id, status, counts) are a Prefect table artifact,
``batches-{dataset}``, updated after every pass.

Why not Prefect's ``suspend_flow_run``: in Prefect 3.9 it needs the flow run to come from a
deployment, with persisted results, and someone (a person, an automation) to resume it; a CLI build
has neither. Polling with the shard slots released works for both, and for a 24-hour batch the run
can also be cancelled and started again later (a deployment run on a schedule, say): the batches are
picked up from the registry.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

log = logging.getLogger(__name__)


def run_until_collected(run: Any, group: list[Any], summary: Any) -> dict[str, dict[str, list[Any]]]:
    """``flows.build._run_pipeline`` until no shard of ``group`` waits on a batch; its last gates."""
    from ultrafeedback.flows.build import _run_pipeline

    waiting: dict[tuple[str, int], int] = {}
    batches: dict[str, dict[str, Any]] = {}
    add_reports = summary.add_reports

    def observe(reports: list[dict[str, Any]]) -> None:
        for report in reports:
            if report.get("waiting"):
                waiting[(report["stage"], report["shard"])] = report["waiting"]
            for row in report.get("batches") or []:
                batches[row["batch"]] = row
        add_reports(reports)

    summary.add_reports = observe
    try:
        while True:
            waiting.clear()
            results = _run_pipeline(run, group, summary)
            if batches:
                publish_artifact(run.spec.name, list(batches.values()), sum(waiting.values()))
            if not waiting:
                return results
            poll = run.spec.execution.batch_poll_s
            log.info("%d calls wait in Batch API batches (%d shards); next look in %g s", sum(waiting.values()),
                     len(waiting), poll)  # fmt: skip
            time.sleep(poll)
    finally:
        summary.add_reports = add_reports


def artifact_key(dataset: str) -> str:
    """``batches-{dataset}`` in the characters an artifact key may have."""
    return "batches-" + (re.sub(r"[^a-z0-9-]+", "-", dataset.lower()).strip("-") or "dataset")


def publish_artifact(dataset: str, rows: list[dict[str, Any]], waiting: int) -> None:
    """The batches as the Prefect table artifact ``batches-{dataset}`` (best effort outside a server)."""
    try:
        from prefect.artifacts import create_table_artifact

        create_table_artifact(
            key=artifact_key(dataset),
            table=sorted(rows, key=lambda r: (r["stage"], r["shard"], r["batch"])),
            description=f"Batch API batches of this build: {len(rows)} batches, {waiting} calls still waiting",
        )
    except Exception:  # noqa: BLE001 - artifacts are best effort
        pass
