"""The Prefect task for one annotation shard."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.progress import progress_callback
from tasks.annotate.annotate import ANNOTATIONS, CRITIQUES, annotate_shard, build_scored, plan_jobs
from tasks.common import SCORED, filter_in, load_shard_requests, read_instructions, read_requests, store_for
from tasks.generate.generate import STAGE as COMPLETIONS
from ultrafeedback.records import AspectAnnotation, Completion, Critique, ScoredCompletion
from ultrafeedback.spec import Spec


@task(name="annotate-shard", cache_policy=NO_CACHE, task_run_name="annotate-shard-{shard}")
def annotate_shard_task(spec: Spec, shard: int) -> dict[str, Any]:
    """Rate and critique the shard's completions that have no stored judgement yet."""
    store = store_for(spec)
    requests = load_shard_requests(store, shard)
    ids = {r.request_id for r in requests}
    table = filter_in(store.results(COMPLETIONS, Completion, key="request_id").read(), "request_id", ids)
    completions = {row["request_id"]: Completion(**row) for row in table.to_pylist()}
    instructions = read_instructions(store, {r.instruction_id for r in requests})
    done_annotations = store.results(ANNOTATIONS, AspectAnnotation, key="annotation_key").keys()
    done_critiques = store.results(CRITIQUES, Critique, key="critique_key").keys()
    aspect_jobs, critique_jobs = plan_jobs(spec, requests, instructions, completions, done_annotations, done_critiques)
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
