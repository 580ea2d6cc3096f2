"""The assign stage: per shard, k models, a principle and a system prompt per completion."""

from __future__ import annotations

from typing import Any

from infra.store import rows_table
from tasks.assign.assign import assign
from tasks.stages import Gate, Run, ShardReport, Stage, fingerprint, shard_file_rows, write_if_changed
from ultrafeedback.outputs import OUTPUTS
from ultrafeedback.records import CompletionRequest


def run_assign(run: Run, shard: int) -> ShardReport:
    """Write ``requests/shard-NNNNN.parquet`` for the shard's instructions.

    The requests are a pure function of the instructions and the spec, so they are computed on
    every run (cheap: hashes) and written only when they changed; what was already generated is
    found by request id, not by shard.
    """
    report = ShardReport(stage="assign", shard=shard)
    instructions = list(run.instructions(shard).values())
    requests = assign(instructions, run.spec, {i.id: shard for i in instructions})
    digest = fingerprint("requests", [(r.request_id, r.position, r.shard) for r in requests])
    path = OUTPUTS["requests"].shard_path(shard)
    report.skipped = not write_if_changed(run.store, path, rows_table(requests, CompletionRequest), digest)
    report.succeeded = len(requests)
    return report


def _summary(run: Run) -> list[Any]:
    from expectations.summary import count_check, unique_keys_check

    ids = run.column("requests", "request_id")
    instructions = sum(run.store.num_rows(OUTPUTS["instructions"].shard_path(s)) for s in run.shards())
    expected = instructions * run.spec.completions_per_instruction
    return [count_check("row count", len(ids), low=expected, high=expected), unique_keys_check("request_id", ids)]


ASSIGN = Stage(
    name="assign",
    reads=("instructions",),
    writes=("requests",),
    sharded=True,
    run_shard=run_assign,
    gates=(Gate("assign", shard_file_rows("requests"), summary=_summary),),
)
