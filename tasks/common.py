"""Reading the store's stage tables back as records (shared by the stage tasks and the flow)."""

from __future__ import annotations

import logging

import pandas as pd

from ultrafeedback.infra.store import Store
from ultrafeedback.records import CompletionRequest, ScoredCompletion
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


def read_requests(store: Store) -> list[CompletionRequest]:
    table = store.results(REQUESTS, CompletionRequest, key="request_id").read()
    return [CompletionRequest(**row) for row in table.to_pylist()]
