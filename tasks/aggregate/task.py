"""The Prefect task for the aggregate stage: Dask over the scored Parquet, results to the store."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ultrafeedback.infra.dask_cluster import dask_client
from ultrafeedback.infra.store import Store
from ultrafeedback.outputs import OUTPUTS
from ultrafeedback.spec import Spec
from ultrafeedback.tasks.aggregate.aggregate import aggregate
from ultrafeedback.tasks.common import run_logger, store_for
from ultrafeedback.tasks.stages import Gate, Run, ShardReport, Stage, fingerprint

AGGREGATE_JSON = "aggregate/aggregate.json"
AGGREGATE_FINGERPRINT = "aggregate/inputs.json"


def _artifacts(dataset: str, result: dict[str, Any]) -> None:
    """Stage tables in the Prefect UI, keyed per dataset (best effort; only inside a run)."""
    from ultrafeedback.infra import artifacts

    for name, rows, description in (
        ("statistics", [result["stats"]], "Table 1 statistics row"),
        ("leaderboard", result["leaderboard"], "Per-model leaderboard"),
        ("sources", result["by_source"], "Per source"),
        ("ratings", result["rating_distribution"], "Rating distribution per aspect"),
        ("overall-score", result["overall_histogram"], "overall_score histogram (floor of the score)"),
    ):
        artifacts.table(artifacts.artifact_key(dataset, "aggregate", name), rows, f"{description} of `{dataset}`")


def aggregate_scored(spec: Spec) -> dict[str, Any]:
    """Aggregate ``{store}/{dataset}/scored/*.parquet`` on the spec's Dask cluster.

    Returns ``AggregateResult.to_dict()`` (JSON-able, what publish puts on the card) and writes it
    to ``aggregate/aggregate.json`` in the store.
    """
    store = store_for(spec)
    path = store.uri(OUTPUTS["scored"].folder) + "/*.parquet"
    with dask_client(spec.execution.dask_address, spec.execution.dask_workers) as client:
        result = aggregate(path, spec.execution.storage_options, client, pair_score=spec.pairs.score)
    data = result.to_dict()
    store.write_json(AGGREGATE_JSON, data)
    run_logger().info(
        "aggregate: %d prompts, %d completions, %d pairs in %.1f s",
        result.stats["prompts"],
        result.stats["completions"],
        result.stats["pairs"],
        result.elapsed_s,
    )
    _artifacts(spec.name, data)
    return data


@task(name="aggregate", cache_policy=NO_CACHE)
def aggregate_task(spec: Spec) -> dict[str, Any]:
    """``aggregate_scored`` as a Prefect task."""
    return aggregate_scored(spec)


def _inputs(run: Run) -> str:
    """The scored shards' fingerprints (footers only) and what the aggregate depends on besides."""
    scored = OUTPUTS["scored"]
    return fingerprint(
        "aggregate", [run.store.fingerprint(scored.shard_path(s)) for s in run.shards()], run.spec.pairs.score
    )


def run_aggregate(run: Run, shard: int) -> ShardReport:
    """Aggregate unless the scored shards are the ones the stored aggregate was computed from."""
    report = ShardReport(stage="aggregate", shard=shard)
    digest = _inputs(run)
    stored = run.store.read_json(AGGREGATE_FINGERPRINT)
    data = run.store.read_json(AGGREGATE_JSON) if stored == digest else None
    if data is None:
        data = aggregate_scored(run.spec)
        run.store.write_json(AGGREGATE_FINGERPRINT, digest)
    else:
        report.skipped = True
    run.facts["aggregate"] = data
    return report


def _gate_rows(run: Run, unit: Any) -> Any:
    import pandas as pd

    data = run.facts["aggregate"]
    return fingerprint("leaderboard", data["leaderboard"]), lambda: pd.DataFrame(data["leaderboard"])


def _facts(run: Run) -> dict[str, Any]:
    scored = OUTPUTS["scored"]
    facts: dict[str, Any] = {
        "expected_completions": sum(run.store.num_rows(scored.shard_path(s)) for s in run.shards())
    }
    if not run.facts["aggregate"]["leaderboard"]:  # nothing scored: the gate says why
        facts["failures"] = top_failures(run.store)
    return facts


def top_failures(store: Store, top: int = 3, outputs: tuple[str, ...] | None = None) -> dict[str, int]:
    """The most frequent reasons of the requests that failed and were not answered since,
    ``{"completions:http_500": 12}``, over ``outputs`` (default: every output that calls a model)."""
    from collections import Counter

    from ultrafeedback.outputs import FAILED_OUTPUTS
    from ultrafeedback.status import open_failures

    counts: Counter[str] = Counter()
    for name in outputs or FAILED_OUTPUTS:
        for row in open_failures(store, name, store.log(name).keys()):
            counts[f"{name}:{row['reason']}"] += 1
    return dict(counts.most_common(top))


AGGREGATE = Stage(
    name="aggregate",
    reads=("scored",),
    writes=(),
    sharded=False,
    run_shard=run_aggregate,
    gates=(Gate("aggregate", _gate_rows, scope="stage", facts=_facts),),
)
