"""Checkpointing results and failures while a shard is in flight.

Results arrive one by one from a backend; they are buffered and written as one Parquet part every
``every`` results or ``max_seconds`` seconds, so a crash loses at most what is in the buffer.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from pydantic import BaseModel

from ultrafeedback.infra.store import ResultLog, Store
from ultrafeedback.records import Failure


def failure_log(store: Store, stage: str) -> ResultLog:
    """Failures of one stage, keyed by the unit's content key (the latest failure wins)."""
    return store.log(f"failures/{stage}")


class Checkpointer:
    """Buffered writer for one stage's results and failures (thread-safe)."""

    def __init__(
        self,
        results: ResultLog,
        failures: ResultLog,
        every: int = 64,
        max_seconds: float = 10.0,
        label: str = "part",
    ):
        self.results = results
        self.failures = failures
        self.every = every
        self.max_seconds = max_seconds
        self.label = label
        self._rows: list[BaseModel] = []
        self._failed: list[Failure] = []
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self.ok = 0
        self.failed_by_reason: Counter[str] = Counter()

    def add(self, row: BaseModel) -> None:
        with self._lock:
            self._rows.append(row)
            self.ok += 1
            self._maybe_flush()

    def fail(self, failure: Failure) -> None:
        with self._lock:
            self._failed.append(failure)
            self.failed_by_reason[failure.reason] += 1
            self._maybe_flush()

    def _maybe_flush(self) -> None:
        due = time.monotonic() - self._last >= self.max_seconds
        if len(self._rows) + len(self._failed) >= self.every or due:
            self._flush_locked()

    def _flush_locked(self) -> None:
        rows, failed = self._rows, self._failed
        self._rows, self._failed = [], []
        self.results.append(rows, label=self.label)
        self.failures.append(failed, label=self.label)
        self._last = time.monotonic()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
