"""Reading the store's stage tables back as records (shared by the stage tasks and the flow)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from infra.store import Store
from ultrafeedback.records import CompletionRequest, Instruction, ScoredCompletion
from ultrafeedback.spec import Spec

INSTRUCTIONS = "instructions"
REQUESTS = "requests"
SCORED = "scored"


def store_for(spec: Spec) -> Store:
    """The spec's dataset folder in its store."""
    return Store(spec.store, spec.name, spec.execution.storage_options)


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The run logger inside a Prefect run; the module logger when called directly (``.fn``)."""
    from prefect import get_run_logger

    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - MissingContextError outside a run
        return logging.getLogger("ultrafeedback")


def read_scored(store: Store) -> pd.DataFrame:
    """The scored completions (one row per completion id)."""
    return store.results(SCORED, ScoredCompletion, key="completion_id").read().to_pandas()


def filter_in(table: pa.Table, column: str, values: Iterable[str]) -> pa.Table:
    """The rows of ``table`` whose ``column`` is in ``values``."""
    wanted = pa.array(sorted(set(values)), type=pa.string())
    return table.filter(pc.is_in(table.column(column), value_set=wanted))


def read_instructions(store: Store, ids: Iterable[str] | None = None) -> dict[str, Instruction]:
    table = store.results(INSTRUCTIONS, Instruction, key="id").read()
    if ids is not None:
        table = filter_in(table, "id", ids)
    return {row["id"]: Instruction(**row) for row in table.to_pylist()}


def read_requests(store: Store) -> list[CompletionRequest]:
    table = store.results(REQUESTS, CompletionRequest, key="request_id").read()
    return [CompletionRequest(**row) for row in table.to_pylist()]


def work_root(run_id: str) -> str:
    """One run's planned work (two runs of one dataset never read each other's plans); the flow
    removes it when the run ends."""
    return f"work/{run_id}"


def work_path(run_id: str, stage: str, shard: int) -> str:
    """Where the flow puts one shard's planned work for a stage."""
    return f"{work_root(run_id)}/{stage}/shard-{shard:05d}.parquet"


def write_work(store: Store, run_id: str, stage: str, by_shard: dict[int, pa.Table]) -> None:
    """The flow plans once; each shard task reads only its own file."""
    for shard, table in sorted(by_shard.items()):
        store.write_table(work_path(run_id, stage, shard), table)


def read_work(store: Store, run_id: str, stage: str, shard: int) -> pa.Table:
    return store.read_table(work_path(run_id, stage, shard))


def requests_by_shard(requests: Iterable[CompletionRequest]) -> dict[int, pa.Table]:
    """Shard number -> that shard's requests as a table, for the files written per shard."""
    from infra.store import rows_table

    grouped: dict[int, list[CompletionRequest]] = {}
    for request in requests:
        grouped.setdefault(request.shard, []).append(request)
    return {shard: rows_table(rows, CompletionRequest) for shard, rows in sorted(grouped.items())}


def load_shard_requests(store: Store, shard: int) -> list[CompletionRequest]:
    """The requests of one shard (written by assign as ``requests/shard-NNNNN.parquet``)."""
    path = f"{REQUESTS}/shard-{shard:05d}.parquet"
    if not store.exists(path):
        return []
    return [CompletionRequest(**row) for row in store.read_table(path).to_pylist()]
