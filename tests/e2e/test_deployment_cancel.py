"""A cancel from the Prefect UI stops the spending, and the retry-failed deployment finishes the build.

The deployment runs the way the README says (a real ``prefect server start``, a process work pool,
``prefect deploy``, a worker) against the simulator, slowed down. Once some completions have arrived
the test cancels the flow run through the API, as the UI's Cancel button does (state Cancelling).
The worker's runner then sends the flow run's process SIGTERM: the run starts no new request, gives
those on the wire ``execution.stop_grace_s``, keeps what arrived and ends Cancelled, its summary
counting the calls the simulator received. Then a run of the ``retry-failed`` deployment completes
the build and sends only what was missing.

(Not the UI's Retry on the cancelled run itself: for a minute after a cancel, Prefect 3.9's runner
replays the cancel event to a new attempt of the same flow run and may cancel it again; README,
"Cancel, retry, refresh".)
"""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.test_deployment import (  # noqa: F401 - prefect_server is a fixture
    KEY_ENV,
    POOL,
    SECRET,
    Background,
    PrefectServer,
    _deploy,
    _prefect_cli,
    _start_run,
    _write_spec,
    prefect_server,
)
from tests.e2e.test_kill_resume import PROMPTS
from ultrafeedback.infra.simulator.config import SimulatorConfig
from ultrafeedback.infra.simulator.server import Simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

DATASET = "deploy-e2e"  # _write_spec's name
GRACE_S = 2.0
LATENCY_MS = 700
INSTRUCTIONS = PROMPTS[:8]
COMPLETIONS = 2 * len(INSTRUCTIONS)  # k=2
RUN_TIMEOUT_S = 240.0
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _spec(folder: Path, url: str, store: Path) -> Path:
    """test_deployment's spec with more instructions, two answers at a time, and ``store``."""
    path = _write_spec(folder, url)
    (folder / "instructions.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in INSTRUCTIONS))
    spec = yaml.safe_load(path.read_text())
    spec["store"] = str(store)
    spec["endpoints"]["sim"]["max_in_flight"] = 2  # 16 completions of 0.7 s each, two at a time: about 6 s
    spec["execution"]["parallel_shards"] = 2
    spec["execution"]["worker_processes"] = 1  # a worker the cancel's SIGTERM reaches too (it must ignore it)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _worker(server: PrefectServer, folder: Path, name: str, env: dict[str, str]) -> Background:
    folder.mkdir(exist_ok=True)
    return Background(
        [_prefect_cli(), "worker", "start", "--pool", POOL, "--run-once"], env=env, cwd=folder, log=folder / name
    )


def _state(server: PrefectServer, flow_run_id: str) -> dict:
    return server.get(f"/flow_runs/{flow_run_id}")["state"] or {}


def _wait_for(server: PrefectServer, flow_run_id: str, worker: Background, states: tuple[str, ...]) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        state = _state(server, flow_run_id)
        if state.get("type") in states:
            return state
        if worker.proc.poll() is not None and state.get("type") not in ("RUNNING", "CANCELLING", "PENDING"):
            pytest.fail(f"the worker exited {worker.proc.returncode} with the run {state}:\n{worker.output()}")
        time.sleep(0.1)
    pytest.fail(f"the flow run did not reach {states} within {RUN_TIMEOUT_S:g}s:\n{worker.output()}")


def _logs(server: PrefectServer, flow_run_id: str) -> list[dict]:
    found: list[dict] = []
    while True:
        body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200, "offset": len(found)}
        page = server.post("/logs/filter", body)
        found += page
        if len(page) < 200:
            return found


def _arrivals(sim: Simulator) -> list[float]:
    with urllib.request.urlopen(f"{sim.root_url}/stats/bodies") as response:
        bodies = json.loads(response.read())["bodies"]
    return sorted(entry[0] for entries in bodies.values() for entry in entries)


def _source_changed_schedules_a_refresh(server: PrefectServer) -> None:
    """The refresh deployment's trigger (deployments/prefect.yaml): a `ultrafeedback.source.changed`
    event, emitted as the README says, creates a run of it; the run is deleted again before a
    worker could take it."""
    refresh = server.get("/deployments/name/build/refresh")
    assert [s["schedule"]["cron"] for s in refresh["schedules"]] == ["0 3 * * *"]
    assert [s["active"] for s in refresh["schedules"]] == [False]
    server.cli("events", "emit", "ultrafeedback.source.changed", "--resource-id", "ultrafeedback.source.mixed")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = server.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [refresh["id"]]}}})
        if runs:
            break
        time.sleep(0.5)
    assert len(runs) == 1, f"the event started {len(runs)} refresh runs"
    httpx.delete(f"{server.api_url}/flow_runs/{runs[0]['id']}", timeout=30).raise_for_status()


def test_a_cancel_from_the_ui_stops_spending_and_retry_completes_the_build(prefect_server, tmp_path):  # noqa: F811
    from ultrafeedback.infra.store import Store
    from ultrafeedback.status import collect_status

    server = prefect_server
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    store = (tmp_path / "store").resolve()
    config = SimulatorConfig(latency_ms=LATENCY_MS, seed=11, api_key=SECRET, record_bodies=True)
    with Simulator(config) as sim:
        spec_path = _spec(spec_dir, sim.url, store).resolve()
        env = {
            **server.env,
            KEY_ENV: SECRET,
            "ULTRAFEEDBACK_INPUT_ROOTS": str(spec_dir),
            "ULTRAFEEDBACK_OUTPUT_ROOTS": str(store),
        }
        _deploy(server)
        _source_changed_schedules_a_refresh(server)
        flow_run_id = _start_run(server, spec_path, [f"execution.stop_grace_s={GRACE_S:g}"])
        worker = _worker(server, tmp_path / "worker", "worker-1.log", env)
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while sim.stats()["by_kind"].get("generation", 0) - sim.stats()["in_flight"] < 4:
                assert worker.proc.poll() is None, f"the worker ended before the cancel:\n{worker.output()}"
                assert time.monotonic() < deadline, f"generation did not start in time:\n{worker.output()}"
                time.sleep(0.05)
            cancelled_at = time.monotonic()
            server.post(f"/flow_runs/{flow_run_id}/set_state", {"state": {"type": "CANCELLING"}, "force": True})
            state = _wait_for(server, flow_run_id, worker, FINAL)
            took = time.monotonic() - cancelled_at
            assert worker.wait(60) == 0, worker.output()
        finally:
            worker.stop()
        log = worker.output()
        assert state["type"] == "CANCELLED", f"{state}:\n{log}"
        assert "Traceback" not in log, log

        # when the run heard of the cancel (its log line), and that no request came later than the grace period
        stopping = [entry for entry in _logs(server, flow_run_id) if "stopping: no new request" in entry["message"]]
        assert stopping, f"the run did not log its stop:\n{log}"
        heard = datetime.fromisoformat(stopping[0]["timestamp"].replace("Z", "+00:00")).timestamp()
        late = [round(came - heard, 3) for came in _arrivals(sim) if came > heard + GRACE_S]
        assert not late, f"requests reached the simulator this long after the run heard of the cancel: {late}"
        stats = sim.stats()
        summary = json.loads((store / DATASET / "runs" / "last.json").read_text())
        assert sum(summary["requests_sent"].values()) == stats["total"], (summary["requests_sent"], stats)
        stored = collect_status(Store(str(store), DATASET))["counts"]
        assert stored["completions"] == stats["by_kind"]["generation"] < COMPLETIONS, (stored, stats)
        print(f"cancelled {took:.1f} s after the request; {stats['total']} calls, all stored")

        # retry: the retry-failed deployment, a fresh flow run, sends only what is missing
        sim.update(latency_ms=2)
        sim.reset()
        deployment = server.get("/deployments/name/build/retry-failed")
        retry = server.post(
            f"/deployments/{deployment['id']}/create_flow_run", {"parameters": {"spec_path": str(spec_path)}}
        )
        worker = _worker(server, tmp_path / "worker", "worker-2.log", env)
        try:
            state = _wait_for(server, retry["id"], worker, FINAL)
            worker.wait(60)
        finally:
            worker.stop()
        assert state["type"] == "COMPLETED", f"{state}:\n{worker.output()}"
        assert server.get(f"/flow_runs/{retry['id']}")["name"] == f"{DATASET}/retry-failed"
        assert (store / DATASET / "releases" / "v1" / "manifest.json").is_file()
        assert sim.stats()["by_kind"]["generation"] == COMPLETIONS - stored["completions"]
