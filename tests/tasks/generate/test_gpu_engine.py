"""A GPU job's engine process (tasks/generate/gpu_engine.py) with a stand-in engine: it stores what it
generates in the completions log after each engine call, sends nothing already stored, turns an
engine error into failures, and imports no Prefect, pandas or Dask."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_vllm import FakeLLM
from ultrafeedback.infra.store import Store
from ultrafeedback.keys import content_key
from ultrafeedback.records import CompletionRequest
from ultrafeedback.tasks.generate.gpu_engine import main, run_job
from ultrafeedback.tasks.generate.jobs import GpuJob, JobRequest, job_path, result_path

REPO = Path(__file__).resolve().parents[3]


def job(count: int = 5, batch_size: int = 2, cut: str | None = None) -> GpuJob:
    sampling = {"temperature": 1.0, "max_tokens": 16, **({"cut_at": cut} if cut else {})}
    items = []
    for i in range(count):
        request = CompletionRequest(
            request_id=content_key("r", i),
            instruction_id=content_key("i", i),
            source="s",
            position=0,
            model="open",
            principle="helpfulness",
            system_prompt="Be brief.",
            prompt_format="chat",
            prompt_template="chat@1",
            sampling_json=json.dumps(sampling, sort_keys=True),
            shard=i % 2,
        )
        messages = [{"role": "user", "content": f"question {i}"}]
        items.append(JobRequest(request=request, messages=messages, sampling=sampling, prompt_template="chat@1"))
    return GpuJob(job_id="j1", model_id="open", model="org/open", batch_size=batch_size, requests=items)


class CountingLLM(FakeLLM):
    def __init__(self, fail_on_call: int | None = None, **kwargs):
        super().__init__("org/open", **kwargs)
        self.calls: list[int] = []
        self.fail_on_call = fail_on_call

    def chat(self, messages, params, use_tqdm=False):
        self.calls.append(len(messages))
        if self.fail_on_call == len(self.calls):
            raise RuntimeError("CUDA error: an illegal memory access")
        return super().chat(messages, params, use_tqdm)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "store"), "d")


def test_generates_in_batches_and_stores_completions(store: Store):
    engine = CountingLLM()
    counts = run_job(store, job(), engine=engine)
    assert engine.calls == [2, 2, 1]
    assert counts["succeeded"] == 5 and counts["issued"] == 5 and counts["skipped"] == 0
    rows = store.log("completions").rows()
    assert sorted(r["request_id"] for r in rows) == sorted(r.request.request_id for r in job().requests)
    assert {r["model"] for r in rows} == {"open"} and {r["backend"] for r in rows} == {"vllm"}
    assert all(r["response"].startswith("[org/open") and r["prompt_template"] == "chat@1" for r in rows)
    assert store.read_json(result_path("j1"))["succeeded"] == 5


def test_a_rerun_sends_only_what_is_not_stored(store: Store):
    first = CountingLLM(fail_on_call=None)
    partial = job()
    partial.requests = partial.requests[:3]  # a job killed after its first calls: three stored
    run_job(store, partial, engine=first)
    again = CountingLLM()
    counts = run_job(store, job(), engine=again)
    assert again.calls == [2] and counts["skipped"] == 3 and counts["issued"] == 2


def test_an_engine_error_is_recorded_as_failures_and_earlier_calls_stay_stored(store: Store):
    counts = run_job(store, job(), engine=CountingLLM(fail_on_call=2))
    assert counts["succeeded"] == 3 and counts["failed"] == {"backend_error": 2}
    failures = store.log("failures/completions").rows()
    assert len(failures) == 2 and all("illegal memory access" in f["error"] for f in failures)
    assert {f["shard"] for f in failures} <= {0, 1}


def test_the_cut_applies_as_in_a_shard(store: Store):
    run_job(store, job(count=1, cut=" answer"), engine=CountingLLM())
    (row,) = store.log("completions").rows()
    assert row["response"] == "[org/open tp=1]"


def test_main_reads_the_job_from_the_store_with_the_engine_named_by_the_environment(store: Store, monkeypatch):
    store.write_json(job_path("j1"), job().model_dump(mode="json"))
    monkeypatch.setenv("ULTRAFEEDBACK_VLLM_ENGINE", "tests.fake_vllm:FakeLLM")
    assert main(["--store", str(Path(store.path()).parent), "--dataset", "d", "--job", "j1"]) == 0
    assert len(store.log("completions").index()) == 5


def test_the_engine_process_imports_no_prefect_pandas_or_dask():
    code = (
        "import sys, ultrafeedback.tasks.generate.gpu_engine\n"
        "print(sorted(m for m in ('prefect', 'pandas', 'dask', 'great_expectations', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO, env=dict(os.environ)
    )
    assert out.stdout.strip() == "[]"


def test_a_gpu_pool_needs_its_job_deployment_on_the_api(prefect_harness):
    from ultrafeedback.flows.gpu_jobs import GpuPoolError, check_gpu_pool
    from ultrafeedback.spec import validate_dict

    data = {
        "name": "t",
        "sources": [{"name": "a", "loader": "jsonl", "path": "a.jsonl"}],
        "models": [{"id": "open", "backend": "vllm", "model": "org/open"}],
        "completions_per_instruction": 1,
        "execution": {"pools": {"gpu": "gpu"}, "gpu_deployment": "gpu-job/not-deployed-here"},
    }
    with pytest.raises(GpuPoolError, match=r"execution.pools.gpu=gpu: no deployment gpu-job/not-deployed-here on "):
        check_gpu_pool(validate_dict(data))
    data["execution"] = {}
    check_gpu_pool(validate_dict(data))  # no pool: nothing to check


@pytest.mark.parametrize(
    "store_uri, job_id, refused",
    [
        ("/elsewhere/store", "j1", "is not under the worker's roots"),
        (None, "../../etc", "is not a plain name"),
    ],
)
def test_a_gpu_job_run_refuses_a_store_outside_the_roots_or_a_path_as_job_id(
    prefect_harness, tmp_path, monkeypatch, store_uri, job_id, refused
):
    from ultrafeedback.flows.gpu_jobs import gpu_job

    monkeypatch.setenv("ULTRAFEEDBACK_OUTPUT_ROOTS", str(tmp_path))
    with pytest.raises(Exception, match=refused):
        gpu_job(store=store_uri or str(tmp_path / "store"), dataset="d", job_id=job_id)


def test_a_gpu_job_run_runs_the_engine_process_and_returns_its_counts(prefect_harness, tmp_path, monkeypatch):
    from ultrafeedback.flows.gpu_jobs import gpu_job

    store = Store(str(tmp_path / "store"), "d")
    store.write_json(job_path("j1"), job().model_dump(mode="json"))
    monkeypatch.setenv("ULTRAFEEDBACK_OUTPUT_ROOTS", str(tmp_path))
    monkeypatch.setenv("ULTRAFEEDBACK_VLLM_ENGINE", "tests.fake_vllm:FakeLLM")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    counts = gpu_job(store=store.url, dataset="d", job_id="j1", heartbeat_s=0.2)
    assert counts["succeeded"] == 5 and len(store.log("completions").index()) == 5
    assert store.read_json("gpu_jobs/j1.heartbeat.json")["pid"] > 0


def test_the_engine_process_dies_with_the_job_flow_run_in_the_middle_of_an_engine_call(store: Store, tmp_path):
    import signal
    import time

    import psutil

    store.write_json(job_path("j1"), job(count=2, batch_size=2).model_dump(mode="json"))
    log = tmp_path / "engine.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ULTRAFEEDBACK_VLLM_ENGINE": "tests.fake_vllm:FakeLLM",
        "UF_FAKE_VLLM_DELAY_S": "30",  # one long engine call
        "UF_FAKE_VLLM_LOG": str(log),
    }
    argv = [sys.executable, "-m", "ultrafeedback.tasks.generate.gpu_engine", "--store", store.url, "--dataset", "d"]
    parent_code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen({[*argv, '--job', 'j1']!r})\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], env=env, stdout=subprocess.PIPE, text=True)
    engine = None
    try:
        engine = psutil.Process(int(parent.stdout.readline()))
        time.sleep(4)  # the engine has read the job and is in its call (30 s per input)
        assert engine.is_running()
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        engine.wait(timeout=10)  # psutil.TimeoutExpired: the orphan still runs
    finally:
        if parent.poll() is None:
            parent.kill()
        if engine is not None and engine.is_running():  # the test failed: stop the orphan it left
            engine.kill()
    assert store.log("completions").index() == {}
