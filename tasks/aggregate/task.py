"""The Prefect task for the aggregate stage: Dask over the scored Parquet, results to the store."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.dask_cluster import dask_client
from tasks.aggregate.aggregate import aggregate
from tasks.common import SCORED, run_logger, store_for
from ultrafeedback.spec import Spec

AGGREGATE_JSON = "aggregate/aggregate.json"


def _artifacts(result: dict[str, Any]) -> None:
    """Stage tables in the Prefect UI (best effort; only inside a run, where there is a UI to show
    them: outside one, Prefect would start a temporary server just to store them)."""
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return
    try:
        from prefect.artifacts import create_table_artifact

        create_table_artifact(key="aggregate-statistics", table=[result["stats"]], description="Table 1 statistics row")
        create_table_artifact(
            key="aggregate-leaderboard", table=result["leaderboard"], description="Per-model leaderboard"
        )
        create_table_artifact(key="aggregate-sources", table=result["by_source"], description="Per source")
        create_table_artifact(
            key="aggregate-ratings",
            table=result["rating_distribution"],
            description="Rating distribution per aspect",
        )
        create_table_artifact(
            key="aggregate-overall-score",
            table=result["overall_histogram"],
            description="overall_score histogram (floor of the score)",
        )
    except Exception:  # noqa: BLE001 - artifacts never fail a stage
        pass


@task(name="aggregate", cache_policy=NO_CACHE)
def aggregate_task(spec: Spec) -> dict[str, Any]:
    """Aggregate ``{store}/{dataset}/scored/*.parquet`` on the spec's Dask cluster.

    Returns ``AggregateResult.to_dict()`` (JSON-able, what publish puts on the card) and writes it
    to ``aggregate/aggregate.json`` in the store.
    """
    store = store_for(spec)
    path = store.uri(SCORED) + "/*.parquet"
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
    _artifacts(data)
    return data
