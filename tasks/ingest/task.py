"""The Prefect task for the ingest stage: instructions, quarantine and dropped records to the store."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import INSTRUCTIONS, store_for
from ultrafeedback.records import Instruction, Quarantined
from ultrafeedback.spec import Spec


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(spec: Spec) -> dict[str, Any]:
    """Load, normalise, quarantine, deduplicate and sample every source; replace the stage tables."""
    from tasks.ingest.ingest import ingest

    store = store_for(spec)
    result = ingest(spec)
    store.results(INSTRUCTIONS, Instruction, key="id").replace(result.instructions)
    store.results("quarantine", Quarantined).replace(result.quarantined)
    store.results("dropped", Quarantined).replace(result.dropped)
    store.write_json("ingest/stats.json", result.stats)
    return {
        "instructions": len(result.instructions),
        "quarantined": len(result.quarantined),
        "dropped": len(result.dropped),
        "quarantine_examples": [q.model_dump() for q in result.quarantined[:5]],
    }
