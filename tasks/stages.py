"""The stage interface and the list of stages the build flow loops over.

Every stage has the same small shape (``Stage``): the outputs it reads and writes (named in the
registry ``ultrafeedback.outputs``), whether it runs per shard or once, what one shard does
(``run_shard``), the rows its gate checks for one shard (``gate_rows``) and the whole-stage
summary checks computed from key columns (``summary_checks``). The flow (``flows.build``) is a loop
over ``STAGES``: consecutive sharded stages marked ``overlap`` run as one pipeline per shard, so a
shard's annotation starts as soon as its completions are stored while other shards still generate.

Memory grows with keys, not with rows of text: a shard reads its own files, pending work comes
from key columns (``ResultLog.index``), and rows with text are read per shard only for the keys
that need them. Each sharded output file records the fingerprint of its inputs, so a rerun skips
every unchanged shard and a no-op rerun reads key columns and Parquet footers only.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pandas as pd
import pyarrow as pa

from ultrafeedback.infra.store import ResultLog, Store
from ultrafeedback.keys import content_key
from ultrafeedback.outputs import OUTPUTS, output
from ultrafeedback.records import CompletionRequest, Instruction
from ultrafeedback.spec import Spec

# --------------------------------------------------------------------------- one run's context


class Run:
    """What the stages of one build share in a process: the spec, the store, one ResultLog per
    output (so key indexes are built once and kept current by appends) and the shard numbers.

    Shard tasks find it by run id (``Run.get``); a task in another process builds its own.
    """

    _RUNS: dict[str, Run] = {}
    _LOCK = threading.Lock()

    def __init__(self, spec: Spec, store: Store, run_id: str, stage_list: list[Stage] | None = None) -> None:
        self.spec = spec
        self.store = store
        self.run_id = run_id
        self.stages = stage_list if stage_list is not None else stages()
        self._logs: dict[str, ResultLog] = {}
        self._lock = threading.Lock()
        self._worker_pool: Any = None
        self._cache: dict[Any, Any] = {}
        self._shared: dict[Any, Any] = {}
        self._shards: list[int] | None = None
        self.facts: dict[str, Any] = {}
        """whole-stage facts a later stage or gate needs (instruction count, quarantine, ...)"""

    @classmethod
    def get(cls, spec: Spec, run_id: str) -> Run:
        with cls._LOCK:
            run = cls._RUNS.get(run_id)
            if run is None:
                from ultrafeedback.tasks.common import store_for

                run = cls._RUNS[run_id] = Run(spec, store_for(spec), run_id)
            return run

    @classmethod
    def start(cls, spec: Spec, run_id: str, stage_list: list[Stage] | None = None) -> Run:
        """A new run registered under its id (what the flow starts with)."""
        from ultrafeedback.tasks.common import store_for

        run = Run(spec, store_for(spec), run_id, stage_list)
        with cls._LOCK:
            cls._RUNS[run_id] = run
        return run

    def worker_pool(self) -> Any:
        """The run's worker processes for CPU-heavy shard work (a ``ProcessPoolExecutor``, started on
        first use), or None when ``execution.worker_processes`` is 0, or unset and the build is
        smaller than ``AUTO_WORKER_MIN_INSTRUCTIONS`` (decided again at each use until a pool starts:
        before ingest has written its shards, the build counts as small)."""
        workers = self.spec.execution.worker_processes
        if workers is None:
            size = len(self.shards()) * self.spec.execution.shard_size
            workers = 1 if size >= AUTO_WORKER_MIN_INSTRUCTIONS else 0
        if workers == 0:
            return None
        with self._lock:
            if self._worker_pool is None:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                # spawn: a fork of a process with an event loop, Prefect and Dask threads is unsafe
                context = multiprocessing.get_context("spawn")
                self._worker_pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)
            return self._worker_pool

    def offload(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` in one of the run's worker processes (in this one when there are
        none); blocks until it returns. ``function`` and ``args`` must pickle."""
        pool = self.worker_pool()
        if pool is None:
            return function(*args)
        return pool.submit(function, *args).result()

    def close(self) -> None:
        """Stop what the run started (its worker processes)."""
        with self._lock:
            pool, self._worker_pool = self._worker_pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r} in this run; stages: {', '.join(s.name for s in self.stages)}")

    @classmethod
    def forget(cls, run_id: str) -> None:
        with cls._LOCK:
            cls._RUNS.pop(run_id, None)

    def log(self, name: str) -> ResultLog:
        """The run's ResultLog of an output (``completions``) or failure log (``failures/completions``)."""
        with self._lock:
            if name not in self._logs:
                self._logs[name] = self.store.log(name)
            return self._logs[name]

    # ------------------------------------------------------------------ shards
    def shards(self) -> list[int]:
        """The shard numbers of the current instructions (one file each, written by ingest); listed
        once, then kept until ingest says otherwise (``set_shards``)."""
        if self._shards is None:
            folder = OUTPUTS["instructions"].folder
            self._shards = sorted(
                int(name[len("shard-") : -len(".parquet")])
                for name in self.store.ls(folder)
                if name.startswith("shard-") and name.endswith(".parquet")
            )
        return list(self._shards)

    def set_shards(self, shards: list[int]) -> None:
        self._shards = sorted(shards)

    def column(self, name: str, column: str) -> list[Any]:
        """One column of a sharded output over every current shard (key columns: cheap)."""
        out = OUTPUTS[name]
        values: list[Any] = []
        for shard in self.shards():
            path = out.shard_path(shard)
            if self.store.exists(path):
                values += self.store.read_table(path, [column]).column(column).to_pylist()
        return values

    def instructions(self, shard: int) -> dict[str, Instruction]:
        table = self.store.read_table(OUTPUTS["instructions"].shard_path(shard))
        return {row["id"]: Instruction(**row) for row in table.to_pylist()}

    def requests(self, shard: int) -> list[CompletionRequest]:
        path = OUTPUTS["requests"].shard_path(shard)
        if not self.store.exists(path):
            return []
        return [CompletionRequest(**row) for row in self.store.read_table(path).to_pylist()]

    def request_keys(self, shard: int) -> list[RequestKey]:
        """The shard's requests by their key columns only (what planning from keys needs)."""
        path = OUTPUTS["requests"].shard_path(shard)
        if not self.store.exists(path):
            return []
        table = self.store.read_table(path, list(RequestKey._fields))
        columns = (table.column(name).to_pylist() for name in RequestKey._fields)
        return [RequestKey(*row) for row in zip(*columns, strict=True)]

    def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        """A value computed once until ``clear_cache()`` (the flow's pre-check shares shard keys
        between the stages it asks)."""
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        value = compute()
        with self._lock:
            self._cache[key] = value
        return value

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def shared(self, key: Any, create: Callable[[], Any]) -> Any:
        """One object per key for the whole run in this process, shared by its shards (e.g. the
        annotate stage's circuit breaker); unlike ``cached``, never cleared."""
        with self._lock:
            if key not in self._shared:
                self._shared[key] = create()
            return self._shared[key]


AUTO_WORKER_MIN_INSTRUCTIONS = 2_000
"""With ``execution.worker_processes`` unset, a build of at least this many instructions (shards x
``shard_size``) starts one worker process. A worker costs seconds of CPU to start (Great
Expectations alone imports in about 4 s), and a gate's validation is a fraction of a second of
fixed cost per shard: below this, the worker costs more than it takes off the event loop's process."""


def _init_worker() -> None:
    """A run's worker process ignores Ctrl-C (the terminal signals the whole process group) and a
    cancel's SIGTERM (Prefect signals the flow run's process group): they are for the run's
    process, which stops gracefully and then shuts its workers down; a worker killed by them would
    fail the validation it runs with a broken pool and a traceback. It also exits without a last
    full garbage collection (``fast_exit``), and exits when the run's process is gone (``kill -9``,
    an out-of-memory kill): the pool's queue never reports that to a waiting worker, which holds a
    write end of it itself, so without this the worker would wait forever."""
    import signal

    from ultrafeedback.infra.stop import fast_exit

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fast_exit()
    exit_with_parent()


def exit_with_parent() -> None:
    """End this process (``os._exit``) as soon as the process that started it has ended: a daemon
    thread waits on the parent's sentinel (``multiprocessing.parent_process``; spawned children
    have one). Does nothing in a process not started by ``multiprocessing``."""
    import multiprocessing
    import os
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class RequestKey(NamedTuple):
    """A request's key columns."""

    request_id: str
    instruction_id: str
    position: int


def remove_stale_shards(store: Store, name: str, keep: set[int]) -> None:
    """Delete the shard files of ``name`` whose shard is no longer in ``keep`` (fewer shards now)."""
    folder = OUTPUTS[name].folder
    for file in store.ls(folder):
        if file.startswith("shard-") and file.endswith(".parquet") and int(file[6:11]) not in keep:
            store.delete(f"{folder}/{file}")


def write_if_changed(store: Store, path: str, table: pa.Table, fingerprint: str) -> bool:
    """Write a shard file unless the stored one was computed from the same inputs."""
    if store.fingerprint(path) == fingerprint:
        return False
    store.write_shard(path, table, fingerprint)
    return True


def fingerprint(kind: str, *parts: Any) -> str:
    return content_key(f"fingerprint:{kind}", *parts)


def file_fingerprint(store: Store, relpath: str) -> str:
    """A shard file's recorded inputs fingerprint, else its path, size and modification stamp."""
    recorded = store.fingerprint(relpath)
    if recorded is not None:
        return recorded
    info = store.fs.info(store.path(relpath))
    stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or ""
    return fingerprint("file", relpath, info.get("size"), str(stamp))


# --------------------------------------------------------------------------- reports


@dataclass
class ShardReport:
    """What one shard of one stage did; summed by the flow for the final summary."""

    stage: str
    shard: int
    issued: int = 0
    succeeded: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    tokens: dict[str, list[int]] = field(default_factory=dict)
    """model -> [input tokens, output tokens]"""
    calls: Counter[str] = field(default_factory=Counter)
    """model -> answers received (one per ``add_tokens``; failed calls and replayed answers included)"""

    def __post_init__(self) -> None:
        from ultrafeedback.infra.monitor import report_created

        report_created(self)  # in a watched shard task: its live progress in the Prefect UI
    seconds: float = 0.0
    skipped: bool = False
    """nothing to do: the shard's outputs were up to date"""
    replayed: int = 0
    """answers taken from the journal of an earlier, killed run (no call made; in ``succeeded``/``failed``)"""
    waiting: int = 0
    """calls in Batch API batches that are still running: the shard is not done, the flow asks again later"""
    batches: list[dict[str, Any]] = field(default_factory=list)
    """the shard's Batch API batches (id, status, counts), for the flow's artifact"""
    stopped: bool = False
    """the run stopped (``infra.stop``) before the shard was done: ``issued`` counts the calls made"""

    def stopped_by(self, exc: Any) -> None:
        """A backend call that the run's stop (``infra.stop.Stopped``) cut short: the answers it
        took from the journal, and its requests that were never sent (no longer ``issued``)."""
        self.stopped = True
        self.replayed += exc.replayed
        self.issued -= exc.unsent

    def add_batches(self, session: Any) -> None:
        """Count a batch session's waiting calls (``infra.llm.batch.BatchSession``) and list its batches."""
        self.waiting += len(session.waiting_keys)
        self.batches += session.rows()

    def add_tokens(self, model: str, tokens_in: int, tokens_out: int) -> None:
        """One answer of ``model`` arrived (or failed for good) and used these tokens."""
        self.calls[model] += 1
        pair = self.tokens.setdefault(model, [0, 0])
        pair[0] += tokens_in
        pair[1] += tokens_out

    def as_state(self, extra: dict[str, Any] | None = None) -> Any:
        """The report (plus ``extra``) as the shard task's result: a Failed state with it as its
        data when units failed, so the Prefect UI marks the shard failed while the flow goes on to
        its gate; a Cancelled one when the run stopped before the shard was done."""
        data = {**self.to_dict(), **(extra or {})}
        if self.stopped:
            from prefect.states import Cancelled

            return Cancelled(message=f"shard {self.shard}: stopped after {self.issued} {self.stage} calls", data=data)
        if not self.failed:
            return data
        from prefect.states import Failed

        reasons = ", ".join(f"{reason} {count}" for reason, count in self.failed.most_common())
        message = (
            f"shard {self.shard}: {sum(self.failed.values())} of {self.issued} {self.stage} failed ({reasons}); "
            f"recorded under failures/, re-sent by the next run"
        )
        return Failed(message=message, data=data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "shard": self.shard,
            "issued": self.issued,
            "succeeded": self.succeeded,
            "failed": dict(self.failed),
            "tokens": self.tokens,
            "calls": dict(self.calls),
            "seconds": round(self.seconds, 3),
            "skipped": self.skipped,
            "replayed": self.replayed,
            "waiting": self.waiting,
            "batches": self.batches,
            "stopped": self.stopped,
        }


# --------------------------------------------------------------------------- the interface


GateRows = Callable[[Run, Any], "tuple[str, Callable[[], pd.DataFrame]] | None"]


@dataclass(frozen=True)
class Gate:
    """A Great Expectations suite over a stage's output.

    Attributes:
        suite: the suite's stage name in ``expectations`` (``generate``, ``annotate``, ...).
        rows: ``(run, unit) -> (fingerprint, rows)``: the rows of one unit (a shard) and a
            fingerprint of them, so an unchanged unit's result is reused without reading them.
            ``rows`` is a callable; None when the unit has nothing to check.
        scope: ``shard``: the suite runs per unit (rows counts and stage-wide rates left out) and
            ``summary`` adds the whole-stage checks; ``stage``: one unit holds the whole output.
        units: ``(run) -> units`` (default: the run's shards; ``stage`` scope: ``[0]``).
        summary: ``(run) -> [CheckResult]``: whole-stage checks from key columns and counts.
        facts: ``(run) -> dict``: GateContext facts the spec does not give.
    """

    suite: str
    rows: GateRows
    scope: str = "shard"
    units: Callable[[Run], list[Any]] | None = None
    summary: Callable[[Run], list[Any]] | None = None
    facts: Callable[[Run], dict[str, Any]] | None = None

    def unit_names(self, run: Run) -> list[Any]:
        if self.units is not None:
            return self.units(run)
        return run.shards() if self.scope == "shard" else [0]


@dataclass(frozen=True)
class Stage:
    """One stage of the build.

    Attributes:
        name: the stage's name (progress, summary, Prefect task names).
        reads: the outputs it reads (``ultrafeedback.outputs`` names).
        writes: the outputs it writes.
        sharded: True when it runs once per shard (``run_shard``), False when once per build
            (``run_shard`` with shard 0 then stands for the whole stage).
        overlap: a sharded stage that may start on a shard as soon as the previous stage is done
            with that shard (the flow runs such stages as one pipeline per shard).
        gates: the suites that check its output.
        run_shard: ``(run, shard) -> ShardReport``.
        done: ``(run, shard) -> bool``, from key columns and fingerprints only: True when the stage
            has nothing to do for the shard. The flow does not start a shard whose every stage in a
            pipeline is done (a no-op rerun then costs no task at all).
    """

    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    sharded: bool
    run_shard: Callable[[Run, int], ShardReport]
    overlap: bool = False
    gates: tuple[Gate, ...] = ()
    done: Callable[[Run, int], bool] | None = None

    def __post_init__(self) -> None:
        for name in (*self.reads, *self.writes):
            output(name)  # a typo in a stage's outputs fails at import


class WorkerRows:
    """Gate rows that a worker process can read itself (a picklable callable, unlike a lambda): the
    gate's validation then reads them there, instead of this process reading the table and
    pickling it over to the worker (``validate_rows``)."""

    def __call__(self) -> pd.DataFrame:
        raise NotImplementedError


@dataclass(frozen=True)
class FileRows(WorkerRows):
    """A gate unit's rows that are one file."""

    store: Store
    path: str

    def __call__(self) -> pd.DataFrame:
        return self.store.read_table(self.path).to_pandas()


def validate_rows(suite: str, rows: Callable[[], pd.DataFrame], context: Any) -> Any:
    """``run_gate`` on the rows ``rows`` reads (in the process that validates)."""
    from ultrafeedback.expectations.gate import run_gate

    return run_gate(suite, rows(), context)


def file_rows(run: Run, path: str) -> tuple[str, Callable[[], pd.DataFrame]]:
    """A gate unit that is one file: its fingerprint, and its rows when the gate must read them."""
    return file_fingerprint(run.store, path), FileRows(run.store, path)


def shard_file_rows(name: str) -> GateRows:
    """The gate rows of a sharded output: each shard's file."""
    return lambda run, shard: file_rows(run, OUTPUTS[name].shard_path(shard))


def stages() -> list[Stage]:
    """Every stage in pipeline order (built on demand: the stage modules import heavy parts)."""
    from ultrafeedback.tasks.aggregate.task import AGGREGATE
    from ultrafeedback.tasks.annotate.task import ANNOTATE
    from ultrafeedback.tasks.assign.task import ASSIGN
    from ultrafeedback.tasks.generate.task import GENERATE
    from ultrafeedback.tasks.ingest.task import INGEST
    from ultrafeedback.tasks.pairs.stage import PAIRS
    from ultrafeedback.tasks.publish.stage import PUBLISH
    from ultrafeedback.tasks.score.task import SCORE

    return [INGEST, ASSIGN, GENERATE, ANNOTATE, SCORE, AGGREGATE, PAIRS, PUBLISH]
