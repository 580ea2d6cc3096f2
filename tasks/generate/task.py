"""The Prefect task for one generation shard."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.progress import progress_callback
from tasks.common import load_shard_requests, read_instructions, store_for
from tasks.generate.generate import STAGE, generate_shard
from ultrafeedback.records import Completion
from ultrafeedback.spec import Spec


@task(name="generate-shard", cache_policy=NO_CACHE, task_run_name="generate-shard-{shard}")
def generate_shard_task(spec: Spec, shard: int) -> dict[str, Any]:
    """Generate the shard's completions that the store does not hold yet."""
    store = store_for(spec)
    requests = load_shard_requests(store, shard)
    done = store.results(STAGE, Completion, key="request_id").keys()
    pending = [r for r in requests if r.request_id not in done]
    instructions = read_instructions(store, {r.instruction_id for r in pending})
    report = generate_shard(spec, store, shard, pending, instructions, progress_callback(STAGE))
    return report.as_state()
