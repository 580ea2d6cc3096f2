"""The engine process of a GPU job: ``python -m ultrafeedback.tasks.generate.gpu_engine``.

Runs in the GPU worker's own environment (``infra/gpu-worker/``: vLLM with its pinned torch and
FastAPI, and this project's light core: records, store, results), where Prefect is not installed: the
job's flow run (``flows.gpu_jobs.gpu_job``) starts this process and waits for it. It reads the job
file from the store (``tasks.generate.jobs``), loads the model once (``vllm.LLM`` with the job's
options, e.g. ``tensor_parallel_size``), and feeds the engine ``batch_size`` requests per call
(vLLM batches continuously inside a call): chat messages go through ``LLM.chat`` (the model's own
chat template), prompts rendered from a template file through ``LLM.generate``. After each call its
answers are checkpointed into the store (``completions``, ``failures/completions``), so a killed job
loses at most one call's answers, and a rerun of the job sends only the requests without a stored
completion. ``$ULTRAFEEDBACK_VLLM_ENGINE`` (``module:callable``) puts a stand-in engine in vLLM's place.

It dies with its parent (the job's flow run): on Linux at once (``PR_SET_PDEATHSIG``), elsewhere
before the next engine call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from ultrafeedback.infra.checkpoint import Checkpointer, failure_log
from ultrafeedback.infra.llm.base import LLMRequest, LLMResult
from ultrafeedback.infra.store import Store
from ultrafeedback.records import Completion
from ultrafeedback.tasks.generate.jobs import GpuJob, read_job, result_path
from ultrafeedback.tasks.generate.results import STAGE, cut_at, settle

STORAGE_OPTIONS_ENV = "ULTRAFEEDBACK_STORAGE_OPTIONS"
"""The store's fsspec options as JSON (they may hold credentials: never on the command line)."""

ORPHANED = 3
"""Exit status when the job's flow run died while this process ran."""


def run_job(store: Store, job: GpuJob, engine: Any = None, parent: int | None = None) -> dict[str, Any]:
    """Generate the job's requests that have no stored completion; returns the counts (also written
    to ``result_path``). ``engine``: an engine object instead of ``vllm.LLM`` (tests)."""
    from ultrafeedback.infra.llm.vllm_backend import VLLMBackend

    started = time.monotonic()
    results = store.log("completions")
    failures = failure_log(store, STAGE)
    done = results.index()
    todo = [r for r in job.requests if r.request.request_id not in done]
    counts: dict[str, Any] = {
        "job_id": job.job_id,
        "model": job.model_id,
        "skipped": len(job.requests) - len(todo),
        "issued": 0,
        "succeeded": 0,
        "failed": {},
        "tokens": [0, 0],
    }
    _say(f"job {job.job_id}: {job.model_id}: {len(todo)} to generate, {counts['skipped']} already stored")
    if todo:
        backend = VLLMBackend(job.model, job.engine, engine=engine)
        by_id = {r.request.request_id: r for r in todo}
        label = f"gpu-{job.job_id}"
        with Checkpointer(results, failures, every=job.batch_size + 1, max_seconds=float("inf"), label=label) as cp:

            def on_result(result: LLMResult) -> None:
                item = by_id[result.key]
                result, row = settle(item.request, result, cut_at(item.request), backend.name, item.prompt_template)
                if isinstance(row, Completion):
                    cp.add(row)
                    counts["succeeded"] += 1
                else:
                    cp.fail(row)
                    counts["failed"][row.reason] = counts["failed"].get(row.reason, 0) + 1
                counts["tokens"][0] += result.input_tokens
                counts["tokens"][1] += result.output_tokens

            for start in range(0, len(todo), job.batch_size):
                if parent is not None and os.getppid() != parent:
                    _say(f"job {job.job_id}: the job's flow run is gone; stopping")
                    raise SystemExit(ORPHANED)
                batch = todo[start : start + job.batch_size]
                calls = [
                    LLMRequest(
                        key=r.request.request_id,
                        model=job.model,
                        messages=r.messages,
                        prompt=r.prompt,
                        sampling=r.sampling,
                    )
                    for r in batch
                ]
                backend.run(calls, on_result)
                counts["issued"] += len(calls)
                cp.flush()  # the call's answers are stored before the next call starts
                _say(f"job {job.job_id}: {start + len(batch)}/{len(todo)} stored")
        backend.close()
        results.compact(min_parts=8, label=label)
    counts["seconds"] = round(time.monotonic() - started, 3)
    store.write_json(result_path(job.job_id), counts)
    return counts


def die_with_parent() -> None:
    """On Linux, have the kernel kill this process when its parent (the job's flow run) dies, also in
    the middle of an engine call (elsewhere: the check before each call)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one GPU job (its requests, from the store) on vLLM.")
    parser.add_argument("--store", required=True, help="the store's fsspec URL (the spec's `store`)")
    parser.add_argument("--dataset", required=True, help="the dataset's name (the spec's `name`)")
    parser.add_argument("--job", required=True, help="the job id (a file under gpu_jobs/ in the dataset's store)")
    args = parser.parse_args(argv)
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # it died before the kernel was told
        return ORPHANED
    options = json.loads(os.environ.get(STORAGE_OPTIONS_ENV) or "{}")
    store = Store(args.store, args.dataset, options)
    counts = run_job(store, read_job(store, args.job), parent=parent)
    _say(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
