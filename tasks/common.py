"""The spec's store, the run logger, and reading requests back for small data."""

from __future__ import annotations

import logging

from ultrafeedback.infra.store import Store
from ultrafeedback.records import CompletionRequest
from ultrafeedback.spec import Spec


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


def read_requests(store: Store) -> list[CompletionRequest]:
    """Every current request (all shards), for small data and tests."""
    table = store.log("requests").read()
    return [CompletionRequest(**row) for row in table.to_pylist()]
