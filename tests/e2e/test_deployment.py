"""The build run the way the README says: from a Prefect deployment, by a worker, against a real server.

A ``prefect server start`` subprocess on loopback (SQLite, a temporary PREFECT_HOME), a work pool of
type ``process``, ``prefect --no-prompt deploy --prefect-file deployments/prefect.yaml --all`` run
from the repository root, ``prefect deployment run 'build/demo'`` with the typed ``spec_path`` and
``overrides`` parameters, and ``prefect worker start --pool cpu --run-once``. The spec the test
writes points its endpoint at a dead port and its store elsewhere; only the ``overrides`` parameter
sends the run to the simulator (started here, in the test process) and the release to the store
the test checks. The simulator's key reaches the flow run the way a user's key does: from the
worker's environment, never through the deployment or its parameters.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.sim_spec import SIM_JUDGE, sim_endpoint, sim_models
from ultrafeedback.infra.simulator.config import SimulatorConfig
from ultrafeedback.infra.simulator.server import Simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
PREFECT_FILE = "deployments/prefect.yaml"
POOL = "cpu"  # the pool that deployments/prefect.yaml names
DEPLOYMENT = "build/demo"
KEY_ENV = "UF_DEPLOY_E2E_KEY"
SECRET = "sk-deploy-e2e-DO-NOT-LEAK-7171"

SERVER_START_TIMEOUT_S = 150.0
CLI_TIMEOUT_S = 120.0
WORKER_TIMEOUT_S = 240.0
STOP_GRACE_S = 15.0
LOG_TAIL = 6000

PROMPTS = [
    "Explain why the sky looks blue during the day.",
    "Write a haiku about autumn rain.",
    "What is 17 multiplied by 23? Show your steps.",
]


def _prefect_cli() -> str:
    """The ``prefect`` script of the interpreter running the tests (the project's .venv)."""
    beside = Path(sys.executable).parent / "prefect"
    if beside.is_file():
        return str(beside)
    found = shutil.which("prefect")
    if found is None:
        pytest.fail(f"no `prefect` command beside {sys.executable} or on PATH")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, limit: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<{path} unreadable: {exc}>"
    return text if len(text) <= limit else "...\n" + text[-limit:]


class Background:
    """A subprocess in its own session, output to a file; ``stop`` ends it and every descendant."""

    def __init__(self, argv: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.argv = argv
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def output(self) -> str:
        return _tail(self.log)

    def wait(self, timeout: float) -> int | None:
        """Its exit status; None when it ran past ``timeout`` (then it is stopped). Either way,
        nothing it started is left running."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self.stop()

    def stop(self) -> None:
        """End the process and everything it started (a flow-run process may sit in a process group
        of its own): SIGTERM, then SIGKILL for whatever is left after the grace period. Only its own
        processes are touched: itself, its descendants and the members of the session it leads."""
        import psutil

        def session_members() -> list[psutil.Process]:
            members = []
            for proc in psutil.process_iter():
                try:
                    if proc.pid != self.proc.pid and os.getsid(proc.pid) == self.proc.pid:
                        members.append(proc)
                except (OSError, psutil.Error):
                    pass
            return members

        try:
            targets = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            targets = []
        targets += [p for p in session_members() if p not in targets]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        for proc in targets:
            try:
                proc.terminate()
            except psutil.Error:
                pass
        try:
            self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_GRACE_S)
        _gone, alive = psutil.wait_procs(targets, timeout=STOP_GRACE_S)
        alive += [p for p in session_members() if p not in alive]
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=STOP_GRACE_S)


@dataclass
class PrefectServer:
    api_url: str
    env: dict[str, str] = field(repr=False)
    workdir: Path = field(repr=False)
    process: Background = field(repr=False)

    def cli(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        """Run ``prefect ARGS``; its output, or a failure that shows it."""
        log = self.workdir / f"cli-{time.monotonic_ns()}.log"
        command = Background([_prefect_cli(), *args], env=env or self.env, cwd=cwd or self.workdir, log=log)
        rc = command.wait(CLI_TIMEOUT_S)
        if rc is None:
            pytest.fail(f"`prefect {' '.join(args)}` ran past {CLI_TIMEOUT_S:g}s:\n{command.output()}")
        if rc != 0:
            pytest.fail(f"`prefect {' '.join(args)}` exited {rc}:\n{command.output()}")
        return log.read_text(errors="replace")

    def get(self, path: str) -> dict:
        response = httpx.get(f"{self.api_url}{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict) -> list | dict:
        response = httpx.post(f"{self.api_url}{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json()


def _prefect_env(home: Path, api_url: str) -> dict[str, str]:
    """The test's environment without any PREFECT_* setting of the test session, then a private
    home, no telemetry, INFO logs (the worker's captured output is the failure report)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        {
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": api_url,
            "PREFECT_LOGGING_LEVEL": "INFO",
            "PREFECT_CLI_COLORS": "false",
            "PREFECT_CLI_WRAP_LINES": "false",
            # never `uv run --project` the repository (it would sync the .venv): run in this one
            "PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES": "false",
            "ULTRAFEEDBACK_PROGRESS": "0",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "GX_ANALYTICS_ENABLED": "False",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop(KEY_ENV, None)
    return env


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[PrefectServer]:
    """``prefect server start`` on a free loopback port with SQLite in a temporary PREFECT_HOME."""
    workdir = tmp_path / "prefect"
    workdir.mkdir()
    yield from serve(workdir)


def serve(workdir: Path) -> Iterator[PrefectServer]:
    """``prefect server start`` in ``workdir`` (a fixture's body: yields the server, then stops it)."""
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = _prefect_env(workdir / "home", api_url)
    process = Background(
        [_prefect_cli(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=workdir,
        log=workdir / "server.log",
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if process.proc.poll() is not None:
                pytest.fail(f"`prefect server start` exited {process.proc.returncode}:\n{process.output()}")
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the Prefect server was not up after {SERVER_START_TIMEOUT_S:g}s:\n{process.output()}")
            time.sleep(0.25)
        yield PrefectServer(api_url=api_url, env=env, workdir=workdir, process=process)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def deployed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """One server for this file's tests, the demo deployment made on it the README's way (each test
    starts and checks its own flow runs)."""
    servers = serve(tmp_path_factory.mktemp("prefect"))
    server = next(servers)
    try:
        _deploy(server)
        yield server
    finally:
        servers.close()


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(latency_ms=2, seed=11, api_key=SECRET)) as sim:
        yield sim


def _write_spec(folder: Path, endpoint_url: str) -> Path:
    """A small spec whose endpoint is ``endpoint_url`` (the only host its key may go to in a
    deployment run) and whose store is not the one checked: a run that ignored the overrides would
    not publish where the test looks."""
    (folder / "instructions.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    endpoint = sim_endpoint(endpoint_url, KEY_ENV)
    endpoint["max_retries"] = 1
    spec = {
        "name": "deploy-e2e",
        "seed": 5,
        "store": str(folder / "spec-store"),
        "sources": [
            {"name": "mixed", "loader": "jsonl", "path": "instructions.jsonl", "fields": {"instruction": "prompt"}}
        ],
        "endpoints": {"sim": endpoint},
        "models": sim_models(3),
        "completions_per_instruction": 2,
        "sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 48},
        "judge": dict(SIM_JUDGE),
        "binarize": {"rule": "h4", "test_size": 0.34, "seed": 1},
        "execution": {"shard_size": 4, "checkpoint_every": 8},
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _deploy(server: PrefectServer) -> dict:
    """The README's steps, from the repository root; the ``build/demo`` deployment."""
    server.cli("work-pool", "create", POOL, "--type", "process")
    server.cli("--no-prompt", "deploy", "--prefect-file", PREFECT_FILE, "--all", cwd=REPO)
    deployment = server.get("/deployments/name/" + DEPLOYMENT)
    assert deployment["work_pool_name"] == POOL
    return deployment


def _start_run(server: PrefectServer, spec_path: Path, overrides: list[str]) -> str:
    """``prefect deployment run`` with typed parameters; the flow run's id."""
    out = server.cli(
        "deployment",
        "run",
        DEPLOYMENT,
        "--param",
        f"spec_path={spec_path}",
        "--param",
        f"overrides={json.dumps(overrides)}",
    )
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert match, f"no flow run id in the output of `prefect deployment run`:\n{out}"
    return match.group(1)


def _work(server: PrefectServer, flow_run_id: str, folder: Path, policy: dict[str, str]) -> tuple[dict, str]:
    """A worker with the key and ``policy`` in its environment, as a user's OPENAI_API_KEY would be,
    run until the flow run has ended; its final state and the worker's output. It runs outside the
    repository (the deployment's pull step sets the flow run's working directory)."""
    folder.mkdir()
    worker_env = {**server.env, KEY_ENV: SECRET, **policy}
    state: dict = {}
    worker_logs: list[str] = []
    for attempt in range(3):  # --run-once polls once: poll again if the run was not due yet
        worker = Background(
            [_prefect_cli(), "worker", "start", "--pool", POOL, "--run-once"],
            env=worker_env,
            cwd=folder,
            log=folder / f"worker-{attempt}.log",
        )
        rc = worker.wait(WORKER_TIMEOUT_S)
        worker_logs.append(worker.output())
        if rc is None:
            pytest.fail(f"the worker ran past {WORKER_TIMEOUT_S:g}s and was stopped; its output:\n{worker_logs[-1]}")
        state = server.get(f"/flow_runs/{flow_run_id}")["state"] or {}
        if rc != 0 or state.get("type") != "SCHEDULED":
            break
        time.sleep(1)
    log = "\n".join(worker_logs)
    assert rc == 0, f"the worker exited {rc}; its output:\n{log}"
    return state, log


def test_demo_deployment_runs_the_build_with_parameter_overrides(deployed_server, simulator, tmp_path):
    server = deployed_server
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    spec_path = _write_spec(spec_dir, simulator.url).resolve()
    override_store = (tmp_path / "override-store").resolve()
    overrides = [
        f"store={override_store}",
        "completions_per_instruction=3",
        "models.sim-0.sampling.temperature=0.25",
    ]
    # the worker allows these keys (k is allowed by default) and these folders
    policy = {
        "ULTRAFEEDBACK_ALLOWED_OVERRIDES": "store,completions_per_instruction,models.*.sampling.temperature",
        "ULTRAFEEDBACK_INPUT_ROOTS": str(spec_dir),
        "ULTRAFEEDBACK_OUTPUT_ROOTS": str(override_store),
    }

    deployment = server.get("/deployments/name/" + DEPLOYMENT)
    assert deployment["work_pool_name"] == POOL
    assert deployment["entrypoint"] == "flows/deployment.py:build"
    assert deployment["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ], f"unexpected pull steps: {deployment['pull_steps']}"
    schema = deployment["parameter_openapi_schema"]["properties"]
    assert schema["spec_path"]["type"] == "string"
    assert {"items": {"type": "string"}, "type": "array"} in schema["overrides"]["anyOf"]

    flow_run_id = _start_run(server, spec_path, overrides)
    flow_run = server.get(f"/flow_runs/{flow_run_id}")
    assert flow_run["deployment_id"] == deployment["id"]
    assert flow_run["parameters"] == {"spec_path": str(spec_path), "overrides": overrides}

    state, log = _work(server, flow_run_id, tmp_path / "worker", policy)
    assert state.get("type") == "COMPLETED", (
        f"flow run {flow_run_id} ended {state.get('type')} ({state.get('message')}); the worker's output:\n{log}"
    )

    # the release, where the `store` override put it, and as the flow reported it to the server
    release = override_store / "deploy-e2e" / "releases" / "v1"
    assert (release / "manifest.json").is_file(), f"no release v1 under {override_store}; worker output:\n{log}"
    assert not (spec_dir / "spec-store").exists(), "the run wrote to the spec's store, not the overridden one"
    artifacts = server.post(
        "/artifacts/filter",
        {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}, "key": {"any_": ["deploy-e2e-build-summary"]}}},
    )
    assert artifacts, f"the flow run has no build-summary artifact; worker output:\n{log}"
    summary = artifacts[0]["data"]
    found = re.search(r"release:\s+v1 (\S+)", summary)
    assert found, f"the build summary names no release v1:\n{summary}"
    uri = found.group(1)
    assert Path(uri.removeprefix("file://")).resolve() == release.resolve()

    import datasets

    completions = datasets.load_dataset(uri, name="completions", split="train")
    assert sorted(completions["instruction"]) == sorted(PROMPTS)
    for row in completions:
        models = sorted(c["model"] for c in row["completions"])
        assert models == ["sim-0", "sim-1", "sim-2"], models  # k=3 came from the overrides
        assert all(c["response"] and c["judge_kind"] == "model" for c in row["completions"])

    # the simulator: every call, keyed with the worker's key, none refused
    stats = simulator.stats()
    assert stats["by_kind"] == {"generation": 9, "judge_aspect": 12, "critique": 9}, stats
    assert stats["with_auth"] == stats["total"] and not stats["faults"], stats

    # a model's sampling came from the overrides
    from ultrafeedback.infra.store import Store
    from ultrafeedback.tasks.common import read_requests

    requests = read_requests(Store(str(override_store), "deploy-e2e"))
    temperatures = {r.model: json.loads(r.sampling_json)["temperature"] for r in requests}
    assert temperatures == {"sim-0": 0.25, "sim-1": 1.0, "sim-2": 1.0}, temperatures

    # the key stayed in the worker's environment
    for path in override_store.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"the API key leaked into {path}"
    assert SECRET not in log, "the API key appears in the worker's output"


def test_a_deployment_run_cannot_change_a_key_it_is_not_allowed_to_or_send_the_key_elsewhere(
    deployed_server, simulator, tmp_path
):
    """From the UI, a run that points the endpoint at another host (a listener on 127.0.0.1, another
    port, that records Authorization headers) is refused before any work: by the worker's default
    allow-list, and, when the worker allows base_url changes, because the key goes only to the host
    the spec file names. Neither the simulator nor the listener hears a request."""
    from tests.auth_listener import AuthListener

    server = deployed_server
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    spec_path = _write_spec(spec_dir, simulator.url).resolve()
    roots = {"ULTRAFEEDBACK_INPUT_ROOTS": str(spec_dir), "ULTRAFEEDBACK_OUTPUT_ROOTS": str(spec_dir)}
    with AuthListener() as listener:
        redirect = [f"endpoints.sim.base_url={listener.url}"]
        cases = {
            "not allowed": ({}, "overrides\\[0\\] \\(endpoints.sim.base_url\\) changes endpoints.sim.base_url"),
            "key pinned": (
                {"ULTRAFEEDBACK_ALLOWED_OVERRIDES": "endpoints.*.base_url"},
                f"endpoint 'sim': its key goes only to http://127.0.0.1:{simulator.port} .*not to .*:{listener.port}$",
            ),
        }
        for case, (allowed, reason) in cases.items():
            flow_run_id = _start_run(server, spec_path, redirect)
            state, log = _work(server, flow_run_id, tmp_path / f"worker-{case.replace(' ', '-')}", {**roots, **allowed})
            assert state.get("type") == "FAILED", f"{case}: the run ended {state.get('type')}:\n{log}"
            assert re.search("DeploymentRefused: deployment run refused: " + reason, state.get("message") or ""), (
                f"{case}: {state.get('message')}"
            )
        assert listener.requests == [], listener.requests
    assert simulator.stats()["total"] == 0, simulator.stats()
    assert not (spec_dir / "spec-store").exists(), "a refused run started work"
