"""GPU jobs: the requests of the ``backend: vllm`` models, across all shards, grouped per model.

A GPU holds one model at a time, so with ``execution.pools.gpu`` set the build does not run an open
model shard by shard in its own process: every request of such a model that has no stored completion
goes into a job of at most ``execution.gpu_job_size`` requests of that one model, and each job runs on
a GPU worker (``flows.gpu_jobs``), which loads the model once and feeds the engine large batches.

A job is a file in the store (``gpu_jobs/{job_id}.json``): the model, its ``vllm.LLM`` options, and
per request the ``CompletionRequest`` with the call already built here by the model's prompt recipe
(so the worker needs neither the spec nor its template files). The worker writes its answers into the
``completions`` log and its failures into ``failures/completions``, in the same checkpointed,
content-keyed format as a shard does: the generate stage then finds them stored, and retries,
resume, ``status`` and ``refresh`` work unchanged. The job id is a content key of the model and its
requests: planning again after a crash finds the same jobs for the same missing requests.

Imports no Prefect: the engine process reads job files with this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from ultrafeedback.keys import content_key
from ultrafeedback.records import CompletionRequest, Failure

if TYPE_CHECKING:
    from ultrafeedback.infra.store import Store
    from ultrafeedback.tasks.stages import Run

FOLDER = "gpu_jobs"


class JobRequest(BaseModel):
    """One request of a job and the engine call built for it."""

    request: CompletionRequest
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    sampling: dict[str, Any] = Field(default_factory=dict)
    prompt_template: str = Field(description="the recipe that built the call (the completion's prompt_template)")


class GpuJob(BaseModel):
    """One model's requests for one engine load."""

    job_id: str
    model_id: str = Field(description="the pool entry id")
    model: str = Field(description="what vllm.LLM loads: the entry's path, else its model name")
    engine: dict[str, Any] = Field(default_factory=dict, description="vllm.LLM options (tensor_parallel_size, ...)")
    batch_size: int = Field(ge=1, description="requests per engine call; a checkpoint after each")
    requests: list[JobRequest]

    @property
    def request_ids(self) -> list[str]:
        return [r.request.request_id for r in self.requests]


def job_path(job_id: str) -> str:
    return f"{FOLDER}/{job_id}.json"


def heartbeat_path(job_id: str) -> str:
    """Written by the job's flow run every few seconds while its engine process lives."""
    return f"{FOLDER}/{job_id}.heartbeat.json"


def result_path(job_id: str) -> str:
    """The engine process's counts of its last run of the job."""
    return f"{FOLDER}/{job_id}.result.json"


def read_job(store: Store, job_id: str) -> GpuJob:
    data = store.read_json(job_path(job_id))
    if data is None:
        raise FileNotFoundError(f"no GPU job {job_id} in {store.uri(FOLDER)}")
    return GpuJob(**data)


def plan_gpu_jobs(run: Run) -> list[GpuJob]:
    """The jobs for every ``backend: vllm`` request without a stored completion, written to the store
    (a job file already there is kept). A request whose chat template cannot render is recorded as
    a ``prompt_template`` failure, as a shard records it, and goes in no job."""
    from ultrafeedback.infra.checkpoint import failure_log
    from ultrafeedback.tasks.generate.chat_templates import ChatTemplateError
    from ultrafeedback.tasks.generate.generate import STAGE, to_llm_request
    from ultrafeedback.tasks.generate.prompt_builder import builders
    from ultrafeedback.tasks.generate.results import unbuilt as unbuilt_failure

    spec = run.spec
    entries = {entry.id: entry for entry in spec.models if entry.backend == "vllm"}
    if not entries:
        return []
    done = run.log("completions").index()
    recipes = builders(spec)
    per_model: dict[str, list[JobRequest]] = {model_id: [] for model_id in entries}
    unbuilt: list[Failure] = []
    for shard in run.shards():
        pending = [r for r in run.requests(shard) if r.model in entries and r.request_id not in done]
        if not pending:
            continue
        instructions = run.instructions(shard)
        for request in pending:
            entry = entries[request.model]
            recipe = recipes[entry.id]
            try:
                call = to_llm_request(request, instructions[request.instruction_id], entry.served_name, recipe)
            except ChatTemplateError as exc:
                unbuilt.append(unbuilt_failure(request, exc))
                continue
            per_model[entry.id].append(
                JobRequest(
                    request=request,
                    messages=call.messages,
                    prompt=call.prompt,
                    sampling=call.sampling,
                    prompt_template=request.prompt_template or recipe.identity,
                )
            )
    if unbuilt:
        failure_log(run.store, STAGE).append(unbuilt, label="gpu-plan")
    size = spec.execution.gpu_job_size
    jobs = []
    for model_id, requests in per_model.items():
        entry = entries[model_id]
        requests.sort(key=lambda r: r.request.request_id)
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            job = GpuJob(
                job_id=content_key("gpu-job", model_id, *[r.request.request_id for r in chunk])[:20],
                model_id=model_id,
                model=entry.path or entry.served_name,
                engine=entry.engine.llm_kwargs(),
                batch_size=spec.execution.gpu_batch_size,
                requests=chunk,
            )
            if not run.store.exists(job_path(job.job_id)):
                run.store.write_json(job_path(job.job_id), job.model_dump(mode="json"))
            jobs.append(job)
    return jobs


def missing(store: Store, job: GpuJob) -> list[str]:
    """The job's request ids without a stored completion (a fresh look at the log: the worker wrote
    it from another process)."""
    done = store.log("completions").index()
    return [i for i in job.request_ids if i not in done]
