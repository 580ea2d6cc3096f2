"""The Prefect task for the assign stage: requests written per shard."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.assign.assign import assign, shard_instructions
from tasks.common import REQUESTS, read_instructions, requests_by_shard, store_for
from ultrafeedback.spec import Spec


@task(name="assign", cache_policy=NO_CACHE)
def assign_task(spec: Spec) -> dict[str, Any]:
    """Assign models, principles and system prompts; write ``requests/shard-NNNNN.parquet``.

    The requests are a pure function of the instructions and the spec, so they are rewritten on
    every run; what was already generated is found by request id, not by shard.
    """
    store = store_for(spec)
    instructions = sorted(read_instructions(store).values(), key=lambda i: (i.source, i.id))
    shard_of = shard_instructions(instructions, spec.execution.shard_size)
    requests = assign(instructions, spec, shard_of)
    store.delete(REQUESTS)
    by_shard = requests_by_shard(requests)
    for shard, table in by_shard.items():
        store.write_table(f"{REQUESTS}/shard-{shard:05d}.parquet", table)
    return {"requests": len(requests), "shards": list(by_shard)}
