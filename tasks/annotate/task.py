"""The Prefect task for one annotation shard."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.progress import progress_callback
from tasks.annotate.annotate import ANNOTATIONS, CRITIQUES, annotate_shard, build_scored, jobs_from_table
from tasks.common import SCORED, load_shard_requests, read_instructions, read_requests, read_work, store_for
from tasks.generate.generate import STAGE as COMPLETIONS
from ultrafeedback.records import AspectAnnotation, Completion, Critique, ScoredCompletion
from ultrafeedback.spec import Spec


@task(name="annotate-shard", cache_policy=NO_CACHE, task_run_name="annotate-shard-{shard}")
def annotate_shard_task(spec: Spec, shard: int, run_id: str) -> Any:
    """Rate and critique as planned by the flow in ``work/annotations/`` for this shard."""
    store = store_for(spec)
    table = read_work(store, run_id, ANNOTATIONS, shard)
    instructions = read_instructions(store, set(table.column("instruction_id").to_pylist()))
    requests = {r.request_id: r for r in load_shard_requests(store, shard)}
    aspect_jobs, critique_jobs = jobs_from_table(table, instructions, requests)
    report = annotate_shard(spec, store, shard, aspect_jobs, critique_jobs, progress_callback(ANNOTATIONS))
    return report.as_state()


@task(name="score", cache_policy=NO_CACHE)
def score_task(spec: Spec) -> int:
    """Join instructions, requests, completions, ratings and critiques into the scored table."""
    store = store_for(spec)
    completions = {
        c["request_id"]: Completion(**c) for c in store.results(COMPLETIONS, Completion, key="request_id").rows()
    }
    annotations = {
        a["annotation_key"]: AspectAnnotation(**a)
        for a in store.results(ANNOTATIONS, AspectAnnotation, key="annotation_key").rows()
    }
    critiques = {
        c["critique_key"]: Critique(**c) for c in store.results(CRITIQUES, Critique, key="critique_key").rows()
    }
    rows = build_scored(spec, read_instructions(store), read_requests(store), completions, annotations, critiques)
    store.results(SCORED, ScoredCompletion, key="completion_id").replace(rows)
    return len(rows)
