"""Model-major generation on a GPU work pool (``execution.pools.gpu``).

``run_gpu_jobs`` (called by the build flow before the generate stage's shards) plans the jobs
(``tasks.generate.jobs``: the ``backend: vllm`` requests without a stored completion, across all
shards, per model, ``execution.gpu_job_size`` per job), starts each as a run of the
``execution.gpu_deployment`` deployment (``run_deployment(..., timeout=0)``: nothing waits per job),
then watches every job run from one loop. A job run that failed, crashed, was cancelled, or whose
heartbeat is older than ``execution.gpu_job_stale_s`` (its worker died: Prefect would show it
running for ever; it is marked Crashed) is started again for what is still missing, up to
``execution.gpu_job_attempts`` runs; after that the requests still missing are recorded as failures
(``gpu_job``), listed by ``status`` and sent again by the next run. Jobs of different models run on
different workers at the same time.

``gpu_job`` is the flow such a deployment runs (``deployments/prefect-gpu.yaml``, on the GPU pool):
it starts the engine process (``tasks.generate.gpu_engine``) with the interpreter named by
``$ULTRAFEEDBACK_ENGINE_PYTHON`` (the GPU worker's vLLM environment, where Prefect is not installed:
the process boundary is what lets vLLM and Prefect 3.9 share a machine), forwards its log lines,
writes the job's heartbeat to the store while it runs, and fails when it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger

from ultrafeedback.infra import stop
from ultrafeedback.infra.store import Store
from ultrafeedback.tasks.generate.jobs import (
    FOLDER,
    GpuJob,
    heartbeat_path,
    job_path,
    missing,
    plan_gpu_jobs,
    result_path,
)

ENGINE_PYTHON_ENV = "ULTRAFEEDBACK_ENGINE_PYTHON"
"""The engine environment's interpreter on the GPU worker (default: the flow run's own)."""

HEARTBEAT_S = 5.0
ENGINE_MODULE = "ultrafeedback.tasks.generate.gpu_engine"


# --------------------------------------------------------------------------- the job (GPU worker)


@flow(name="gpu-job")
def gpu_job(store: str, dataset: str, job_id: str, heartbeat_s: float = HEARTBEAT_S) -> dict[str, Any]:
    """Run one GPU job: its engine process, in the worker's vLLM environment, on the job's requests.

    Args:
        store: the dataset's store (the spec's ``store``, absolute), under the worker's
            ``$ULTRAFEEDBACK_OUTPUT_ROOTS`` (``deployment_policy``); its fsspec options come from the
            worker's ``$ULTRAFEEDBACK_STORAGE_OPTIONS`` (JSON), never from parameters.
        dataset: the dataset's name (the spec's ``name``).
        job_id: the job file under ``gpu_jobs/`` in the dataset's store.
        heartbeat_s: seconds between heartbeats (the build takes a silent job for a dead one).
    """
    import json
    import re

    from prefect.runtime import flow_run

    from ultrafeedback.deployment_policy import DeploymentPolicy

    if not re.fullmatch(r"[A-Za-z0-9_-]+", job_id) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", dataset):
        raise ValueError(f"gpu job refused: job_id {job_id!r} or dataset {dataset!r} is not a plain name")
    DeploymentPolicy.from_env().check_store(store)  # the worker's output roots, as for a build's store
    logger = get_run_logger()
    target = Store(store, dataset, json.loads(os.environ.get("ULTRAFEEDBACK_STORAGE_OPTIONS") or "{}"))
    python = os.environ.get(ENGINE_PYTHON_ENV) or sys.executable
    argv = [python, "-m", ENGINE_MODULE, "--store", store, "--dataset", dataset, "--job", job_id]
    logger.info("job %s: starting the engine process: %s", job_id, " ".join(argv))
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []

    def forward() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line.rstrip())
            del tail[:-20]
            logger.info("engine: %s", line.rstrip())

    reader = threading.Thread(target=forward, daemon=True)
    reader.start()
    try:
        while process.poll() is None:
            beat = {"flow_run_id": str(flow_run.id), "at": time.time(), "pid": process.pid}
            target.write_json(heartbeat_path(job_id), beat)
            try:
                process.wait(timeout=heartbeat_s)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if process.poll() is None:  # the flow run is cancelled or crashes: the engine goes with it
            process.kill()
            process.wait()
        reader.join(timeout=5)
    if process.returncode != 0:
        raise RuntimeError(f"job {job_id}: the engine process exited {process.returncode}: " + " | ".join(tail[-5:]))
    return target.read_json(result_path(job_id)) or {}


# --------------------------------------------------------------------------- the dispatcher (build flow)


class GpuPoolError(RuntimeError):
    """The spec's GPU pool cannot take jobs: no such deployment on the Prefect API, or it is on another pool."""


def check_gpu_pool(spec: Any) -> None:
    """With ``execution.pools.gpu``: the job deployment exists on this Prefect API and runs on that pool
    (checked before any work; a build on the temporary local API has no workers)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    pool, name = spec.execution.pools.gpu, spec.execution.gpu_deployment
    if pool is None:
        return
    api = PREFECT_API_URL.value() or "the temporary local Prefect API (set PREFECT_API_URL)"
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise GpuPoolError(
                f"execution.pools.gpu={pool}: no deployment {name} on {api}: deploy it with `prefect deploy "
                "--prefect-file deployments/prefect-gpu.yaml --all` (docs/operations.md, section 3)"
            ) from None
    if deployment.work_pool_name != pool:
        raise GpuPoolError(
            f"execution.pools.gpu={pool}: deployment {name} runs on work pool {deployment.work_pool_name}, "
            f"not {pool} (set execution.pools.gpu: {deployment.work_pool_name}, or deploy it to {pool})"
        )


def run_gpu_jobs(run: Any, summary: Any) -> None:
    """Plan the GPU jobs, run them on ``execution.pools.gpu`` and wait for all of them from one loop
    (see the module doc). The job runs' counts reach the build summary."""
    from prefect.client.orchestration import get_client

    logger = get_run_logger()
    jobs = {job.job_id: job for job in plan_gpu_jobs(run)}
    for name in run.store.ls(FOLDER):  # an earlier, stopped build's jobs (the lease: no other build is on)
        if name.split(".", 1)[0] not in jobs:
            run.store.delete(f"{FOLDER}/{name}")
    if not jobs:
        return
    execution = run.spec.execution
    logger.info(
        "GPU jobs: %d (%s) on pool %s, deployment %s",
        len(jobs),
        ", ".join(f"{j.model_id}: {len(j.requests)}" for j in jobs.values()),
        execution.pools.gpu,
        execution.gpu_deployment,
    )
    attempts: dict[str, int] = dict.fromkeys(jobs, 0)
    active: dict[str, Any] = {}  # job id -> its current flow run's id
    with get_client(sync_client=True) as client:
        try:
            for job in jobs.values():
                active[job.job_id] = _submit(run, job, attempts)
            while active:
                time.sleep(execution.gpu_poll_s)
                if stop.requested():  # Ctrl-C or SIGTERM of a command-line build: its jobs are cancelled below
                    from ultrafeedback.flows.build import BuildStopped

                    raise BuildStopped(stop.reason() or "stopped")
                for job_id, flow_run_id in list(active.items()):
                    job = jobs[job_id]
                    state = client.read_flow_run(flow_run_id).state
                    ended = state is not None and state.is_final()
                    stale = not ended and _stale(run.store, job_id, flow_run_id, state, execution)
                    if not (ended or stale):
                        continue
                    if stale:
                        from prefect.states import Crashed

                        message = "no heartbeat from its flow run: its worker is gone"
                        client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
                        logger.warning("GPU job %s (%s): %s", job_id, job.model_id, message)
                    elif state.is_completed():
                        _add_counts(run, summary, job)
                    else:
                        logger.warning("GPU job %s (%s): run %s", job_id, job.model_id, state.type.value)
                    left = missing(run.store, job)
                    if not left or (state is not None and state.is_completed() and not stale):
                        del active[job_id]  # done: every request has a completion or a recorded failure
                    elif attempts[job_id] < execution.gpu_job_attempts:
                        logger.info("GPU job %s: %d requests missing: run %d", job_id, len(left), attempts[job_id] + 1)
                        active[job_id] = _submit(run, job, attempts)
                    else:
                        _give_up(run, job, left, attempts[job_id])
                        del active[job_id]
        except BaseException:
            for flow_run_id in active.values():  # the build stops: so do its jobs
                from prefect.states import Cancelling

                try:
                    client.set_flow_run_state(flow_run_id, Cancelling(message="the build stopped"), force=True)
                except Exception:  # noqa: BLE001 - the stop's reason matters more
                    pass
            raise
    for job_id in jobs:  # settled: their answers and failures are in the logs
        for path in (job_path(job_id), heartbeat_path(job_id), result_path(job_id)):
            run.store.delete(path)
    run.log("completions").reload()  # written by the jobs' processes
    run.log("failures/completions").reload()


def _submit(run: Any, job: GpuJob, attempts: dict[str, int]) -> Any:
    from prefect.deployments import run_deployment

    attempts[job.job_id] += 1
    spec = run.spec
    flow_run = run_deployment(
        spec.execution.gpu_deployment,
        parameters={
            "store": run.store.url,  # absolute: the worker's working directory is not the build's
            "dataset": spec.name,
            "job_id": job.job_id,
            "heartbeat_s": min(HEARTBEAT_S, spec.execution.gpu_job_stale_s / 4),
        },
        timeout=0,  # return at once: one loop watches every job
        flow_run_name=f"{spec.name}/{job.model_id}/{job.job_id[:8]}-{attempts[job.job_id]}",
        tags=[f"dataset:{spec.name}", f"model:{job.model_id}"],
        as_subflow=False,
    )
    return flow_run.id


def _stale(store: Store, job_id: str, flow_run_id: Any, state: Any, execution: Any) -> bool:
    """A pending or running job run whose heartbeat is older than ``gpu_job_stale_s``, or that wrote
    none ``gpu_job_start_s`` after it became pending or running: its worker died with it."""
    if state is None or not (state.is_running() or state.is_pending()):
        return False  # scheduled: waiting for a worker, which is not a dead one
    beat = store.read_json(heartbeat_path(job_id)) or {}
    if beat.get("flow_run_id") == str(flow_run_id):
        return time.time() - beat["at"] > execution.gpu_job_stale_s
    stamp = state.timestamp
    since = stamp.timestamp() if isinstance(stamp, datetime) else time.time()
    return time.time() - since > execution.gpu_job_start_s


def _add_counts(run: Any, summary: Any, job: GpuJob) -> None:
    counts = run.store.read_json(result_path(job.job_id)) or {}
    tokens = counts.get("tokens") or [0, 0]
    summary.add_reports(
        [
            {
                "stage": "completions",
                "issued": counts.get("issued", 0),
                "failed": counts.get("failed", {}),
                "tokens": {job.model_id: tokens},
            }
        ]
    )


def _give_up(run: Any, job: GpuJob, left: list[str], runs: int) -> None:
    """The job ran ``runs`` times and these requests still have no completion: failures (``gpu_job``)."""
    from ultrafeedback.infra.checkpoint import failure_log
    from ultrafeedback.records import Failure
    from ultrafeedback.tasks.generate.results import STAGE

    shards = {r.request.request_id: r.request.shard for r in job.requests}
    error = f"GPU job {job.job_id} ({job.model_id}) ran {runs} times without answering it"
    now = time.time()
    failure_log(run.store, STAGE).append(
        [
            Failure(stage=STAGE, key=key, shard=shards[key], reason="gpu_job", error=error, attempts=runs, at=now)
            for key in left
        ],
        label=f"gpu-{job.job_id}",
    )
    get_run_logger().error("%s: %d requests recorded as failed (gpu_job)", error, len(left))
