"""The generate stage: per shard, the requests without a stored completion, checkpointed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ultrafeedback.infra.progress import progress_callback
from ultrafeedback.infra.store import Store
from ultrafeedback.tasks.generate.generate import STAGE, generate_shard, shard_label
from ultrafeedback.tasks.stages import Gate, Run, ShardReport, Stage, WorkerRows, fingerprint


def run_generate(run: Run, shard: int) -> ShardReport:
    """Generate the shard's pending completions (pending: request ids the completions log lacks)."""
    results = run.log("completions")
    done = results.index()
    pending = [r for r in run.requests(shard) if r.request_id not in done]
    if run.spec.execution.pools.gpu:  # the vLLM models' requests ran as GPU jobs (flows.gpu_jobs)
        on_gpu = {entry.id for entry in run.spec.models if entry.backend == "vllm"}
        pending = [r for r in pending if r.model not in on_gpu]
    if not pending:
        return ShardReport(stage=STAGE, shard=shard, skipped=True)
    instructions = run.instructions(shard)
    failures = run.log("failures/completions")
    report = generate_shard(
        run.spec,
        run.store,
        shard,
        pending,
        instructions,
        progress_callback(STAGE),
        results=results,
        failures=failures,
    )
    results.compact(min_parts=2, label=shard_label(shard))
    failures.compact(min_parts=2, label=shard_label(shard))
    return report


def present_ids(run: Run, shard: int) -> list[str]:
    """The shard's request ids that have a stored completion, in request order."""
    done = run.log("completions").index()
    return [r.request_id for r in run.request_keys(shard) if r.request_id in done]


@dataclass(frozen=True)
class CompletionRows(WorkerRows):
    """A shard's stored completions, read from the parts that hold them (``ResultLog.locate``), so
    a worker process with no index of its own reads just those."""

    store: Store
    ids: list[str]
    located: dict[str, list[str]]

    def __call__(self) -> Any:
        log = self.store.log("completions")
        try:
            table = log.read_located(self.located)
        except FileNotFoundError:  # a part was compacted since it was located: locate them again
            table = log.read_keys(self.ids)
        return _with_every_field(table.to_pandas())


def _gate_rows(run: Run, shard: int) -> Any:
    ids = present_ids(run, shard)
    return fingerprint("completions", ids), CompletionRows(run.store, ids, run.log("completions").locate(ids))


def _with_every_field(frame: Any) -> Any:
    """Completions read back, with the fields parts written before a field existed lack set to their
    default (``prompt_template``: ''), so the gate's column check judges the data, not its age."""
    from ultrafeedback.records import Completion

    for name, field in Completion.model_fields.items():
        if name not in frame.columns and len(frame) and isinstance(field.default, str):
            frame[name] = field.default
    return frame


def _summary(run: Run) -> list[Any]:
    from ultrafeedback.expectations.stages.generate import GENERATED
    from ultrafeedback.expectations.summary import count_check, rate_check

    done = run.log("completions").index()
    total = good = 0
    for shard in run.shards():
        requests = run.request_keys(shard)
        total += len(requests)
        good += sum(1 for r in requests if r.request_id in done)
    gates = run.spec.gates

    return [
        count_check("row count", good, low=math.ceil(total * gates.min_generation_success), high=total),
        rate_check("generation success rate", good, total, gates.min_generation_success, GENERATED),
    ]


def generate_done(run: Run, shard: int) -> bool:
    """Every request of the shard has a stored completion (key columns only)."""
    from ultrafeedback.tasks.score.task import generate_done as done

    return done(run, shard)


GENERATE = Stage(
    name="generate",
    reads=("instructions", "requests", "completions"),
    writes=("completions",),
    sharded=True,
    run_shard=run_generate,
    done=generate_done,
    gates=(Gate("generate", _gate_rows, summary=_summary),),
)
