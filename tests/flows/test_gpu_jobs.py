"""The build's GPU job loop (flows/gpu_jobs.py) against a real Prefect API (the test harness): a job
whose runs keep failing is started again up to ``execution.gpu_job_attempts`` runs, then its requests
still without a completion are recorded as ``gpu_job`` failures; a job whose run completes is done.
No worker here: the job runs are created on the API and given their end state, as a worker's would."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tasks.generate.test_gpu_engine import job as make_job
from ultrafeedback.flows import gpu_jobs
from ultrafeedback.flows.build import BuildSummary
from ultrafeedback.infra.store import Store
from ultrafeedback.spec import validate_dict
from ultrafeedback.tasks.generate.jobs import job_path
from ultrafeedback.tasks.stages import Run


def spec(tmp_path: Path, attempts: int):
    return validate_dict(
        {
            "name": "d",
            "store": str(tmp_path / "store"),
            "sources": [{"name": "a", "loader": "jsonl", "path": "a.jsonl"}],
            "models": [{"id": "open", "backend": "vllm", "model": "org/open"}],
            "completions_per_instruction": 1,
            "execution": {"pools": {"gpu": "gpu"}, "gpu_job_attempts": attempts, "gpu_poll_s": 0.05},
        }
    )


@pytest.mark.parametrize("outcome", ["Failed", "Completed"])
def test_a_failing_job_runs_again_up_to_its_attempts_then_its_requests_fail(
    prefect_harness, tmp_path, monkeypatch, outcome
):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Failed

    the_spec = spec(tmp_path, attempts=3)
    store = Store(the_spec.store, "d")
    run = Run(the_spec, store, "r1", stage_list=[])
    job = make_job(count=3)
    store.write_json(job_path(job.job_id), job.model_dump(mode="json"))
    started: list[str] = []

    @flow(name="gpu-job-stand-in")
    def stand_in() -> None:
        pass

    def submit(run, job, attempts):  # what run_deployment and a worker would do: a run that ends at once
        attempts[job.job_id] += 1
        with get_client(sync_client=True) as client:
            flow_run = client.create_flow_run(stand_in, name=f"{job.job_id}-{attempts[job.job_id]}")
            state = Failed(message="engine exited 1") if outcome == "Failed" else Completed()
            client.set_flow_run_state(flow_run.id, state, force=True)
        started.append(str(flow_run.id))
        return flow_run.id

    monkeypatch.setattr(gpu_jobs, "plan_gpu_jobs", lambda run: [job])
    monkeypatch.setattr(gpu_jobs, "_submit", submit)

    @flow(name="build-stand-in")
    def build() -> None:
        gpu_jobs.run_gpu_jobs(run, BuildSummary())

    build()
    failures = store.log("failures/completions").rows()
    if outcome == "Failed":
        assert len(started) == 3, "three runs of the job, then it gives up"
        assert sorted(f["key"] for f in failures) == sorted(job.request_ids)
        assert {(f["reason"], f["attempts"]) for f in failures} == {("gpu_job", 3)}
        assert {f["shard"] for f in failures} == {0, 1}
    else:  # a completed run settled the job (its engine recorded what failed): not run again
        assert len(started) == 1 and failures == []
    assert not store.exists(job_path(job.job_id)), "a settled job's file is removed"
