"""A running build as the Prefect UI shows it: a progress artifact per stage, a live table of calls,
tokens and estimated cost per model, and log lines per shard (start, progress, end).

The shard threads never talk to the API. A shard task runs its stage inside ``watching``, so the
``ShardReport`` the stage creates is handed to the monitor (``report_created``) while the stage goes on
filling it; the flow tells the monitor when a stage starts and when a
shard ends (``shard_finished``, with the report the task returned). One reporter thread reads those
numbers every ``interval_s`` seconds and sends only what changed: a progress artifact updated in
place, the cost table at most every ``table_interval_s`` seconds (also updated in place, so a long
run does not pile up versions), a progress log line per running shard at most every
``log_interval_s`` seconds. A shard's calls cost a counter increment and nothing else.

``ULTRAFEEDBACK_PROGRESS_INTERVAL_S`` (default 2) sets ``interval_s``; the cost table and the log
lines follow at 2.5 and 5 times it. A shard in another process (a Dask or remote worker) has no live
report here: its stage moves when
the shard ends, from the report its task returned.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from ultrafeedback.infra.artifacts import artifact_key

log = logging.getLogger(__name__)

_MONITORS: dict[str, BuildMonitor] = {}
_REGISTRY_LOCK = threading.Lock()


_SHARD: contextvars.ContextVar[tuple[BuildMonitor, str, int, list[Any]] | None] = contextvars.ContextVar(
    "ultrafeedback_shard", default=None
)


def _registered(run_id: str) -> BuildMonitor | None:
    with _REGISTRY_LOCK:
        return _MONITORS.get(run_id)


@contextmanager
def watching(run_id: str, stage: str, shard: int) -> Iterator[None]:
    """While a shard task runs a stage on a shard: log its start and end, and show the
    ``ShardReport`` it creates (``report_created``) as its live progress. Nothing when no monitor
    watches run ``run_id`` in this process."""
    monitor = _registered(run_id)
    if monitor is None:
        yield
        return
    reports: list[Any] = []
    token = _SHARD.set((monitor, stage, shard, reports))
    monitor.shard_started(stage, shard)
    try:
        yield
    except BaseException as exc:
        monitor.shard_crashed(stage, shard, exc)
        raise
    else:
        monitor.shard_finished(stage, shard, reports[-1].to_dict() if reports else None)
    finally:
        _SHARD.reset(token)


def report_created(report: Any) -> None:
    """A ``ShardReport`` was made: inside ``watching`` it is the shard's report, which the stage
    fills as answers arrive (called by ``ShardReport.__post_init__``; otherwise nothing)."""
    current = _SHARD.get()
    if current is not None:
        monitor, stage, shard, reports = current
        reports.append(report)
        monitor.watch(stage, shard, report)


def skipped(run_id: str, stages: list[str], shard: int) -> None:
    """The flow found nothing to do for ``shard`` in ``stages`` and started no task for it."""
    monitor = _registered(run_id)
    if monitor is not None:
        for stage in stages:
            monitor.shard_finished(stage, shard, None)


def cost_usd(tokens_in: int, tokens_out: int, price: Any) -> float:
    """The estimated cost of the tokens at ``price`` (``input_per_mtok``/``output_per_mtok``)."""
    return tokens_in / 1e6 * price.input_per_mtok + tokens_out / 1e6 * price.output_per_mtok


def reasons(failed: Mapping[str, int]) -> str:
    """``http_500 3, timeout 1``: failure reasons, most frequent first."""
    return ", ".join(f"{reason} {count}" for reason, count in Counter(failed).most_common())


@dataclass
class _Stage:
    name: str
    shards: int = 0
    state: str = "waiting"
    finished: set[int] = field(default_factory=set)
    live: dict[int, Any] = field(default_factory=dict)
    issued: int = 0
    answered: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    started: float | None = None
    ended: float | None = None
    progress: float = 0.0
    artifact: UUID | None = None
    sent: tuple[float, str] | None = None


def _live(report: Any) -> tuple[int, int, Counter[str], dict[str, list[int]]]:
    """(calls planned, answered, failed by reason, model -> [calls, tokens in, tokens out]) of a
    report another thread is filling. The copies are C-level (atomic under the GIL); a copy that
    still races raises RuntimeError and the caller tries again on the next tick."""
    failed = Counter(report.failed.copy())
    tokens = dict(report.tokens.copy())
    calls = dict(report.calls.copy())
    models = {model: [calls.get(model, 0), int(pair[0]), int(pair[1])] for model, pair in tokens.items()}
    return report.issued, report.succeeded, failed, models


class BuildMonitor:
    """Progress and cost of one build, reported to the Prefect UI and the run's log.

    Args:
        dataset: the spec's name (artifact keys are per dataset).
        run_id: the build's run id (what shard tasks find the monitor by, ``watching``).
        stages: the stage names in pipeline order (one progress artifact each).
        prices: model id -> ``Price`` (for the estimated cost; a model without one shows none).
        flow_run_id: the flow run the artifacts belong to (None: no artifacts, log lines only).
        logger: where shard lines go (the flow run's logger).
    """

    interval_s = float(os.environ.get("ULTRAFEEDBACK_PROGRESS_INTERVAL_S", "2"))
    """seconds between two looks at the numbers (an artifact is sent only when it changed)"""
    table_interval_s = max(interval_s, 5.0 * interval_s / 2.0)
    log_interval_s = 5.0 * interval_s

    def __init__(
        self,
        dataset: str,
        run_id: str,
        stages: list[str],
        prices: Mapping[str, Any],
        flow_run_id: UUID | None = None,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
    ) -> None:
        self.dataset = dataset
        self.run_id = run_id
        self.prices = dict(prices)
        self.flow_run_id = flow_run_id
        self.logger = logger or log
        self._stages = {name: _Stage(name) for name in stages}
        self._models: dict[str, list[int]] = {}  # of finished shards: model -> [calls, tokens in, tokens out]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._table: UUID | None = None
        self._table_sent: tuple[str, str] | None = None
        self._logged: dict[tuple[str, int], tuple[float, tuple[int, int, int]]] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> BuildMonitor:
        """Register for ``watching`` and start the reporter thread (it creates the artifacts)."""
        with _REGISTRY_LOCK:
            _MONITORS[self.run_id] = self
        context = contextvars.copy_context()  # Prefect's settings (the API URL) live in context variables
        self._thread = threading.Thread(
            target=context.run, args=(self._loop,), name=f"build-monitor-{self.run_id}", daemon=True
        )
        self._thread.start()
        return self

    def close(self, stopped: BaseException | None = None) -> None:
        """Stop the reporter after a last update; a stage still running is marked stopped."""
        with _REGISTRY_LOCK:
            _MONITORS.pop(self.run_id, None)
        with self._lock:
            for stage in self._stages.values():
                if stage.state == "running":
                    stage.state = "stopped" if stopped is None else f"stopped ({type(stopped).__name__})"
                    stage.ended = time.monotonic()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> BuildMonitor:
        return self.start()

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        self.close(error)

    # ------------------------------------------------------------------ what the flow and shards say
    def stage_started(self, name: str, shards: int = 1) -> None:
        with self._lock:
            stage = self._stages.setdefault(name, _Stage(name))
            stage.shards, stage.state, stage.started = max(shards, 1), "running", time.monotonic()

    def stage_finished(self, name: str) -> None:
        with self._lock:
            stage = self._stages[name]
            stage.state, stage.ended, stage.progress = "done", time.monotonic(), 100.0
            line = _describe(stage, stage.issued, stage.answered, stage.failed)
        self.logger.info(line)

    def shard_started(self, name: str, shard: int) -> None:
        self.logger.info("%s shard %d: started", name, shard)

    def watch(self, name: str, shard: int, report: Any) -> None:
        with self._lock:
            self._stages[name].live[shard] = report

    def shard_crashed(self, name: str, shard: int, error: BaseException) -> None:
        with self._lock:
            self._stages[name].live.pop(shard, None)
        self.logger.error("%s shard %d: crashed: %s: %s", name, shard, type(error).__name__, error)

    def shard_finished(self, name: str, shard: int, data: Mapping[str, Any] | None) -> None:
        """A shard left the stage with ``data`` (its report as a dict; None: nothing to do, the
        flow did not start it)."""
        with self._lock:
            stage = self._stages[name]
            stage.live.pop(shard, None)
            stage.finished.add(shard)
            if data is None:  # the flow did not start it: the stage's last line counts it
                return
            stage.issued += int(data.get("issued", 0)) + int(data.get("replayed", 0))
            stage.answered += int(data.get("succeeded", 0))
            stage.failed.update(data.get("failed") or {})
            calls = data.get("calls") or {}
            for model, (tokens_in, tokens_out) in (data.get("tokens") or {}).items():
                totals = self._models.setdefault(model, [0, 0, 0])
                totals[0] += int(calls.get(model, 0))
                totals[1] += int(tokens_in)
                totals[2] += int(tokens_out)
        self.logger.info("%s shard %d: %s", name, shard, _shard_line(data))

    # ------------------------------------------------------------------ the reporter
    def _loop(self) -> None:
        client = None
        try:
            if self.flow_run_id is not None:
                from prefect.client.orchestration import get_client

                client = get_client(sync_client=True)
                client.__enter__()
            last_table = 0.0
            while True:
                final = self._stop.wait(self.interval_s)
                now = time.monotonic()
                table_due = final or now - last_table >= self.table_interval_s
                try:
                    self._tick(client, table_due, final)
                except Exception as exc:  # noqa: BLE001 - the UI never stops a build
                    log.warning("build monitor: %s", exc)
                if table_due:
                    last_table = now
                if final:
                    return
        finally:
            if client is not None:
                client.__exit__(None, None, None)

    def snapshot(self) -> tuple[list[tuple[str, float, str]], list[dict[str, Any]], list[str]]:
        """What the UI should show now: (stage, progress %, description) per stage, the cost
        table rows, and the progress lines of the running shards that are due."""
        stages, lines = [], []
        models = {model: list(values) for model, values in self._models.items()}
        now = time.monotonic()
        with self._lock:
            for stage in self._stages.values():
                issued, answered, failed = stage.issued, stage.answered, Counter(stage.failed)
                fraction = float(len(stage.finished))
                for shard, report in list(stage.live.items()):
                    try:
                        planned, done, bad, per_model = _live(report)
                    except RuntimeError:  # mutated while copied: next tick
                        continue
                    issued, answered, failed = issued + planned, answered + done, failed + bad
                    finished = done + sum(bad.values())
                    fraction += min(1.0, finished / planned) if planned else 0.0
                    for model, values in per_model.items():
                        totals = models.setdefault(model, [0, 0, 0])
                        for i, value in enumerate(values):
                            totals[i] += value
                    line = self._due_line(stage.name, shard, planned, done, bad, now)
                    if line:
                        lines.append(line)
                if stage.state == "done":
                    fraction = stage.shards
                stage.progress = max(stage.progress, 100.0 * min(fraction / stage.shards, 1.0) if stage.shards else 0.0)
                stages.append((stage.name, round(stage.progress, 1), _describe(stage, issued, answered, failed)))
        return stages, self._cost_rows(models), lines

    def _due_line(self, name: str, shard: int, planned: int, done: int, failed: Counter[str], now: float) -> str | None:
        """A progress line for a running shard, at most every ``log_interval_s`` and only when it moved."""
        state = (planned, done, sum(failed.values()))
        last = self._logged.get((name, shard))
        if not planned or (last is not None and (now - last[0] < self.log_interval_s or last[1] == state)):
            return None
        self._logged[(name, shard)] = (now, state)
        text = f"{name} shard {shard}: {done + state[2]:,} of {planned:,} calls answered"
        if state[2]:
            text += f", {state[2]:,} failed ({reasons(failed)})"
        return text

    def _cost_rows(self, models: Mapping[str, list[int]]) -> list[dict[str, Any]]:
        rows, total = [], [0, 0, 0, 0.0]
        for model, (calls, tokens_in, tokens_out) in sorted(models.items()):
            price = self.prices.get(model)
            cost = round(cost_usd(tokens_in, tokens_out, price), 4) if price is not None else None
            rows.append(
                {"model": model, "calls": calls, "tokens_in": tokens_in, "tokens_out": tokens_out, "est_cost_usd": cost}
            )
            total = [total[0] + calls, total[1] + tokens_in, total[2] + tokens_out, total[3] + (cost or 0.0)]
        rows.append(
            {"model": "total", "calls": total[0], "tokens_in": total[1], "tokens_out": total[2],
             "est_cost_usd": round(total[3], 4)}
        )  # fmt: skip
        return rows

    def _tick(self, client: Any, table_due: bool, final: bool) -> None:
        stages, rows, lines = self.snapshot()
        for line in lines:
            self.logger.info(line)
        if client is None:
            return
        for name, progress, description in stages:
            stage = self._stages[name]
            if stage.sent != (progress, description):
                key = artifact_key(self.dataset, "progress", name)
                stage.artifact = self._put(client, stage.artifact, key, "progress", progress, description)
                stage.sent = (progress, description)
        if not (table_due or self._table is None):
            return
        data, description = json.dumps(rows), self._table_description(final)
        if self._table_sent != (data, description):
            key = artifact_key(self.dataset, "calls-and-cost")
            self._table = self._put(client, self._table, key, "table", data, description)
            self._table_sent = (data, description)

    def _put(self, client: Any, artifact: UUID | None, key: str, kind: str, data: Any, description: str) -> UUID:
        """Create the run's artifact ``key`` the first time, then update that one in place (the UI
        shows one artifact that moves, and a long run does not pile up versions)."""
        from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate

        if artifact is None:
            create = ArtifactCreate(
                key=key, type=kind, data=data, description=description, flow_run_id=self.flow_run_id
            )
            return client.create_artifact(create).id
        client.update_artifact(artifact, ArtifactUpdate(data=data, description=description))
        return artifact

    def _table_description(self, final: bool) -> str:
        when = "final" if final else f"live, updated every {self.table_interval_s:g} s while the build runs"
        return (
            f"Calls, tokens and estimated cost per model of this build of `{self.dataset}` ({when}). "
            "Estimated from the spec's prices; answers a killed run had journalled are counted, not paid again."
        )


def _describe(stage: _Stage, issued: int, answered: int, failed: Counter[str]) -> str:
    parts = [f"{stage.name}: {stage.state}"]
    if stage.shards > 1 or stage.live:
        parts.append(f"{len(stage.finished)} of {stage.shards} shards done, {len(stage.live)} running")
    if issued:
        parts.append(f"{answered + sum(failed.values()):,} of {issued:,} calls answered")
    if failed:
        parts.append(f"{sum(failed.values()):,} failed ({reasons(failed)})")
    if stage.started is not None and stage.state != "waiting":
        end = stage.ended if stage.ended is not None else time.monotonic()
        parts.append(f"{end - stage.started:.0f} s")
    return "; ".join(parts)


def _shard_line(data: Mapping[str, Any] | None) -> str:
    """The end of a shard: what it sent, what came back, what failed and why, tokens."""
    if data is None or data.get("skipped"):
        return "up to date, nothing to do"
    issued, replayed = int(data.get("issued", 0)), int(data.get("replayed", 0))
    succeeded, failed = int(data.get("succeeded", 0)), data.get("failed") or {}
    seconds = float(data.get("seconds", 0.0))
    text = f"done in {seconds:.1f} s" if seconds else "done"
    if issued or replayed or failed:  # a stage that calls models
        text += f": {issued:,} calls, {succeeded:,} answered"
        text += f", {sum(failed.values()):,} failed ({reasons(failed)})" if failed else ", none failed"
        if replayed:
            text += f", {replayed:,} answers replayed from a killed run's journal"
    elif succeeded:
        text += f": {succeeded:,} rows"
    tokens = data.get("tokens") or {}
    if tokens:
        tokens_in = sum(pair[0] for pair in tokens.values())
        tokens_out = sum(pair[1] for pair in tokens.values())
        text += f"; tokens {tokens_in:,} in / {tokens_out:,} out"
    return text
