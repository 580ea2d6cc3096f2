"""Model-major generation on a GPU work pool, with real processes (issue 6, items 1 and 2).

A ``prefect server start`` on loopback, two process work pools (``cpu``, ``gpu``; the ``gpu`` pool made
from infra/gpu-worker/process-pool.json) and one ``prefect worker start`` for each, as separate
processes. The build runs as the ``build/demo`` deployment on the ``cpu`` worker; its open models
(``backend: vllm``) go as GPU jobs (``gpu-job/gpu-job`` runs) to the ``gpu`` worker, whose engine
process runs in a Python environment this test creates, where Prefect is not importable, with a
stand-in engine for vLLM (tests/fake_vllm.py: these machines have no GPU). The API model and the
judge are the simulator's, called from the build's own process.

Two GPU workers run the two models' jobs at once; the one under way first is killed (with its flow
run and engine processes) in the middle of its job, and a worker is started again: the build
completes, no input the engine had answered and stored is generated again, and the release equals,
table by table and value by value (tests/golden/golden.py's diff), the release of a single-process
build of the same spec (``ultrafeedback build``, the stand-in engine in the build's process), run
meanwhile. One build does both, to keep the test short (about a minute and a half on 2 cores).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from tests.e2e.sim_spec import SIM_JUDGE, sim_endpoint
from tests.e2e.test_deployment import Background, PrefectServer, _prefect_cli, serve
from tests.fake_vllm import digest
from tests.golden.golden import diff_releases, read_release
from ultrafeedback.infra.simulator.config import SimulatorConfig
from ultrafeedback.infra.simulator.server import Simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
KEY_ENV = "UF_GPU_POOL_E2E_KEY"
SECRET = "sk-gpu-pool-e2e"
DATASET = "gpu-pool-e2e"
ENGINE = "tests.fake_vllm:FakeLLM"
RUN_TIMEOUT_S = 240.0
LIGHT_PACKAGES = [
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "typing_inspection",
    "typing_extensions.py",
    "pyarrow",
    "fsspec",
    "numpy",
    "numpy.libs",
    "yaml",
    "_yaml",
]
COLOURS = "red blue green old new big".split()
PROMPTS = [f"Question {i}: name {i + 2} things that are {c}." for i, c in enumerate(COLOURS)]


# --------------------------------------------------------------------------- the engine environment


@pytest.fixture(scope="module")
def engine_python(tmp_path_factory) -> str:
    """A plain venv (no site packages) with the project's light core only: pydantic, pyarrow, fsspec,
    numpy, PyYAML and the project's source, linked from the test's own environment; no Prefect."""
    root = tmp_path_factory.mktemp("engine-env")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    purelib = Path(sysconfig.get_paths()["purelib"])
    light = root / "light"
    light.mkdir()
    for name in LIGHT_PACKAGES:
        if (purelib / name).exists():
            (light / name).symlink_to(purelib / name)
    finders = list(purelib.glob("__editable___ultrafeedback_builder_*_finder.py"))
    assert finders, f"the project is not installed editable in {purelib}"
    for finder in finders:
        (light / finder.name).symlink_to(finder)
    engine_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    lines = [str(light), *(f"import {f.stem}; {f.stem}.install()" for f in finders)]
    Path(engine_site, "uf_light.pth").write_text("\n".join(lines) + "\n")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
    check = subprocess.run(
        [str(python), "-c", "import ultrafeedback.tasks.generate.gpu_engine, tests.fake_vllm\nimport prefect"],
        env=env,
        capture_output=True,
        text=True,
        cwd=str(root),
    )
    assert "No module named 'prefect'" in check.stderr, f"the engine environment is not as meant:\n{check.stderr}"
    return str(python)


# --------------------------------------------------------------------------- servers and workers


@pytest.fixture(scope="module")
def simulator() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(latency_ms=2, seed=11, api_key=SECRET)) as sim:
        yield sim


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[PrefectServer]:
    """``prefect server start`` on loopback, for the module."""
    yield from serve(tmp_path_factory.mktemp("prefect"))


@pytest.fixture(scope="module")
def pools(server: PrefectServer, engine_python: str, tmp_path_factory) -> PrefectServer:
    """The ``cpu`` pool (the build) and the ``gpu`` pool from the shipped process template, with the
    engine interpreter this test made; the build and GPU job deployments."""
    template = json.loads((REPO / "infra" / "gpu-worker" / "process-pool.json").read_text())
    env = template["variables"]["properties"]["env"]["default"]
    assert "ULTRAFEEDBACK_ENGINE_PYTHON" in env
    env["ULTRAFEEDBACK_ENGINE_PYTHON"] = engine_python
    path = tmp_path_factory.mktemp("templates") / "gpu.json"
    path.write_text(json.dumps(template))
    server.cli("work-pool", "create", "cpu", "--type", "process")
    server.cli("work-pool", "create", "gpu", "--type", "process", "--base-job-template", str(path))
    server.cli("--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--name", "demo", cwd=REPO)
    server.cli("--no-prompt", "deploy", "--prefect-file", "deployments/prefect-gpu.yaml", "--all", cwd=REPO)
    assert server.get("/deployments/name/gpu-job/gpu-job")["work_pool_name"] == "gpu"
    return server


def _worker_env(server: PrefectServer, log: Path) -> dict[str, str]:
    return {
        **server.env,
        KEY_ENV: SECRET,
        "ULTRAFEEDBACK_VLLM_ENGINE": ENGINE,
        "PYTHONPATH": str(REPO),  # the stand-in engine (tests/fake_vllm.py)
        "UF_FAKE_VLLM_LOG": str(log),
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # pick up a job at once (default: every 15 s)
    }


def _worker(server: PrefectServer, pool: str, folder: Path, env: dict[str, str], name: str) -> Background:
    folder.mkdir(parents=True, exist_ok=True)
    limit = ["--limit", "1"] if pool == "gpu" else []  # a GPU holds one model at a time
    return Background(
        [_prefect_cli(), "worker", "start", "--pool", pool, "--name", name, *limit],
        env=env,
        cwd=folder,
        log=folder / f"{name}.log",
    )


def _kill(worker: Background) -> None:
    """SIGKILL the worker and everything it started (its flow run and that run's engine process)."""
    procs = [psutil.Process(worker.proc.pid)]
    try:
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        pass
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


# --------------------------------------------------------------------------- the spec and the builds


def _spec(folder: Path, sim_url: str, store: Path, job_size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instructions.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    spec = {
        "name": DATASET,
        "seed": 3,
        "store": str(store),
        "sources": [
            {"name": "qs", "loader": "jsonl", "path": "instructions.jsonl", "fields": {"instruction": "prompt"}}
        ],
        "endpoints": {"sim": sim_endpoint(sim_url, KEY_ENV)},
        "models": [
            {"id": "open-a", "backend": "vllm", "model": "tiny/open-a", "engine": {"tensor_parallel_size": 2}},
            {"id": "open-b", "backend": "vllm", "path": "/models/open-b"},
            {"id": "sim-0", "backend": "openai", "endpoint": "sim", "model": "sim-model-0"},
        ],
        "completions_per_instruction": 3,
        "sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 48},
        "judge": dict(SIM_JUDGE),
        "binarize": {"rule": "h4", "test_size": 0.34, "seed": 1},
        "gates": {"data_docs": False},
        "execution": {
            "worker_processes": 0,  # validations in the build's process: the GPU jobs are the subject here
            "shard_size": 3,
            "checkpoint_every": 4,
            "pools": {"gpu": "gpu"},
            "gpu_job_size": job_size,
            "gpu_batch_size": 1,
            "gpu_job_stale_s": 6,
            "gpu_job_start_s": 90,
            "gpu_poll_s": 0.5,
        },
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _single_process_build(server: PrefectServer, spec: Path, store: Path, folder: Path) -> Background:
    """``ultrafeedback build`` with no pool, started: the stand-in engine runs in the build's process."""
    env = {**_worker_env(server, folder / "engine-local.log"), "UF_FAKE_VLLM_DELAY_S": "0"}
    folder.mkdir(parents=True, exist_ok=True)
    argv = [str(Path(sys.executable).parent / "ultrafeedback"), "build", str(spec)]
    argv += ["--set", f"store={store}", "--set", "execution.pools.gpu=null"]
    return Background(argv, env=env, cwd=folder, log=folder / "build.log")


def _start_build(server: PrefectServer, spec: Path, store: Path) -> str:
    out = server.cli("deployment", "run", "build/demo", "--param", f"spec_path={spec}", "--param", "overrides=[]")
    import re

    found = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert found, out
    return found.group(1)


def _wait_run(server: PrefectServer, flow_run_id: str, logs: list[Background], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = server.get(f"/flow_runs/{flow_run_id}")["state"] or {}
        if state.get("type") in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            return state
        time.sleep(0.5)
    pytest.fail(f"flow run {flow_run_id} did not end in {timeout:g}s:\n" + "\n".join(w.output() for w in logs))


def _policy(spec_dir: Path, store: Path) -> dict[str, str]:
    return {"ULTRAFEEDBACK_INPUT_ROOTS": str(spec_dir), "ULTRAFEEDBACK_OUTPUT_ROOTS": str(store)}


def _engine_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _job_runs(server: PrefectServer) -> list[dict]:
    deployment = server.get("/deployments/name/gpu-job/gpu-job")
    return server.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}})


# --------------------------------------------------------------------------- the test


def test_gpu_pool_build_survives_a_killed_gpu_worker_and_equals_a_single_process_build(
    pools, simulator, engine_python, tmp_path
):
    server = pools
    store = (tmp_path / "store").resolve()
    spec = _spec(tmp_path / "spec", simulator.url, store, job_size=6)  # a job per model, across both shards
    reference_store = (tmp_path / "reference").resolve()
    reference = _single_process_build(server, spec, reference_store, tmp_path / "local")  # meanwhile
    engine_log = tmp_path / "engine.log"
    env = {**_worker_env(server, engine_log), **_policy(spec.parent, store), "UF_FAKE_VLLM_DELAY_S": "0.4"}
    cpu = _worker(server, "cpu", tmp_path / "cpu", env, "cpu-worker")
    gpus = [_worker(server, "gpu", tmp_path / f"gpu-{n}", env, f"gpu-worker-{n}") for n in "ab"]  # a GPU each
    everyone = [reference, cpu, *gpus]
    try:
        flow_run_id = _start_build(server, spec, store)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while len(_engine_log(engine_log)) < 2:  # a job is under way and has stored answers
            assert time.monotonic() < deadline, "\n".join(w.output() for w in everyone)
            time.sleep(0.1)
        jobs = [
            json.loads(p.read_text()) for p in (store / DATASET / "gpu_jobs").glob("*.json") if p.name.count(".") == 1
        ]
        # kill the worker (with its flow run and engine processes) that runs the job under way
        engine_pid = _engine_log(engine_log)[0]["pid"]
        (victim,) = [w for w in gpus if engine_pid in {p.pid for p in psutil.Process(w.proc.pid).children(True)}]
        _kill(victim)
        from ultrafeedback.infra.store import Store

        stored_before = set(Store(str(store), DATASET).log("completions").index())
        assert stored_before, "an answer was stored before the kill"
        restarted = _worker(server, "gpu", tmp_path / "gpu-c", env, "gpu-worker-c")
        everyone.append(restarted)
        state = _wait_run(server, flow_run_id, everyone, RUN_TIMEOUT_S)
        assert state["type"] == "COMPLETED", f"{state}\n" + "\n".join(w.output() for w in everyone)
        assert reference.wait(RUN_TIMEOUT_S) == 0, f"the single-process build failed:\n{reference.output()}"
    finally:
        for worker in everyone:
            worker.stop()

    # the jobs: one per model, the two at once on two workers; the killed one crashed and ran again
    runs = sorted(_job_runs(server), key=lambda r: r["start_time"] or "")
    states = Counter(r["state_type"] for r in runs)
    assert states == {"COMPLETED": 2, "CRASHED": 1}, [(r["name"], r["state_type"]) for r in runs]
    assert runs[1]["start_time"] < runs[0]["end_time"], "the two models' jobs ran at the same time"

    # the engine generated each input once, but for what the kill cut short before it was stored
    assert len(jobs) == 2 and not list((store / DATASET / "gpu_jobs").iterdir()), "settled jobs' files are removed"
    names = {}
    for job in jobs:
        for item in job["requests"]:
            request_id = item["request"]["request_id"]
            names[(job["model"], digest(job["model"], item["messages"] or item["prompt"]))] = request_id
    generated = _engine_log(engine_log)
    assert {g["model"] for g in generated} == {"tiny/open-a", "/models/open-b"}
    counts = Counter((g["model"], g["input"]) for g in generated)
    assert set(counts) == set(names), "every request was generated"
    first_by: dict[tuple[str, str], int] = {}
    for g in generated:
        first_by.setdefault((g["model"], g["input"]), g["pid"])
    # only an input the killed engine had generated but not yet stored may be generated again, once
    again = [n for n, c in counts.items() if c > 1 and (first_by[n] != engine_pid or names[n] in stored_before)]
    assert not again, f"generated again after it was stored: {again}"
    assert max(counts.values()) <= 2, counts

    # the release: the same rows and values as the single-process build's
    expected = read_release(str(reference_store / DATASET / "releases" / "v1"))
    report = diff_releases(expected, read_release(str(store / DATASET / "releases" / "v1")))
    assert not report, report
