"""The assign stage: per shard, k models, a principle and a system prompt per completion."""

from __future__ import annotations

from typing import Any

from ultrafeedback.infra.store import rows_table
from ultrafeedback.outputs import OUTPUTS
from ultrafeedback.records import CompletionRequest
from ultrafeedback.spec import Spec
from ultrafeedback.tasks.assign.assign import assign
from ultrafeedback.tasks.stages import Gate, Run, ShardReport, Stage, fingerprint, shard_file_rows


def assign_config(spec: Spec) -> Any:
    """Everything in the spec that shapes a request besides its instruction."""
    from ultrafeedback.tasks.assign.assign import principle_prompts, prompt_format_versions

    return [
        spec.seed,
        spec.completions_per_instruction,
        [m.model_dump(mode="json", exclude={"price", "endpoint"}) for m in spec.models],
        spec.sampling.canonical_json(),
        principle_prompts(spec),
        prompt_format_versions(spec),
        {s.name: s.principles for s in spec.sources},
    ]


def _digest(run: Run, shard: int) -> str:
    """What the shard's requests file must have been computed from."""
    instructions = run.store.fingerprint(OUTPUTS["instructions"].shard_path(shard))
    return fingerprint("requests", instructions, assign_config(run.spec), shard)


def assign_done(run: Run, shard: int) -> bool:
    return run.store.fingerprint(OUTPUTS["requests"].shard_path(shard)) == _digest(run, shard)


def run_assign(run: Run, shard: int) -> ShardReport:
    """Write ``requests/shard-NNNNN.parquet`` for the shard's instructions.

    The requests are a pure function of the instructions and the spec: the file records the
    fingerprint of both, and a shard whose file has the same one is skipped without reading its
    instructions. What was already generated is found by request id, not by shard.
    """
    report = ShardReport(stage="assign", shard=shard)
    path = OUTPUTS["requests"].shard_path(shard)
    digest = _digest(run, shard)
    if run.store.fingerprint(path) == digest:
        report.skipped = True
        return report
    instructions = list(run.instructions(shard).values())
    requests = assign(instructions, run.spec, {i.id: shard for i in instructions})
    run.store.write_shard(path, rows_table(requests, CompletionRequest), digest)
    report.succeeded = len(requests)
    return report


def _summary(run: Run) -> list[Any]:
    from ultrafeedback.expectations.summary import count_check, unique_keys_check

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
    done=assign_done,
    gates=(Gate("assign", shard_file_rows("requests"), summary=_summary),),
)
