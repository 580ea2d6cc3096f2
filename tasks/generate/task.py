"""The Prefect task for one generation shard."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.progress import progress_callback
from tasks.common import read_instructions, read_work, store_for
from tasks.generate.generate import STAGE, generate_shard
from ultrafeedback.records import CompletionRequest
from ultrafeedback.spec import Spec


@task(name="generate-shard", cache_policy=NO_CACHE, task_run_name="generate-shard-{shard}")
def generate_shard_task(spec: Spec, shard: int, run_id: str) -> Any:
    """Generate the shard's pending completions, as planned by the flow in ``work/completions/``."""
    store = store_for(spec)
    pending = [CompletionRequest(**row) for row in read_work(store, run_id, STAGE, shard).to_pylist()]
    instructions = read_instructions(store, {r.instruction_id for r in pending})
    report = generate_shard(spec, store, shard, pending, instructions, progress_callback(STAGE))
    return report.as_state()
