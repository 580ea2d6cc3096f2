"""What a user of the Prefect UI sees of a deployment run, read back from a real server.

The deployment runs the way the README says (``prefect server start``, a process work pool, ``prefect
deploy``, ``prefect deployment run``, ``prefect worker start``) against the simulator, slowed down so
that the run takes a few seconds per stage. While the worker runs it, the test polls the API: the
generate stage's progress artifact must be seen moving through values between 0 and 100 while the
flow run is still running. After the run: the run's name and tags, artifacts keyed per dataset
(gates, progress, calls and cost, build summary, aggregate tables, plots, Data Docs links and the
link to the release), the plots in the release and its card, the Data Docs pages in the store, and
the shard log lines.
"""

from __future__ import annotations

import base64
import json
import time
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
from ultrafeedback.infra.simulator.config import SimulatorConfig
from ultrafeedback.infra.simulator.server import Simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

DATASET = "deploy-e2e"  # _write_spec's name
STAGES = ["ingest", "assign", "generate", "annotate", "score", "aggregate", "pairs", "publish"]
GATES = ["ingest", "assign", "generate", "annotate", "aggregate", "pairs", "binarized"]
PLOTS = ["ratings", "overall_score", "leaderboard", "sources"]
RUN_TIMEOUT_S = 300.0
PNG = b"\x89PNG\r\n\x1a\n"


def _artifacts(server: PrefectServer, flow_run_id: str) -> dict[str, dict]:
    """The flow run's artifacts by key (each key once: progress and tables are updated in place)."""
    found = server.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    by_key: dict[str, dict] = {}
    for artifact in found:
        assert artifact["key"] not in by_key, f"two artifacts with the key {artifact['key']} in one run"
        by_key[artifact["key"]] = artifact
    return by_key


def test_a_deployment_run_shows_its_progress_name_artifacts_plots_and_release(prefect_server, tmp_path):  # noqa: F811
    server = prefect_server
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    store = (tmp_path / "store").resolve()
    # 250 ms a call, one call at a time: 30 calls take about 8 s, so the progress can be seen moving
    with Simulator(SimulatorConfig(latency_ms=250, seed=11, api_key=SECRET)) as sim:
        spec_path = _write_spec(spec_dir, sim.url).resolve()
        spec = yaml.safe_load(spec_path.read_text())
        price = {"input_per_mtok": 1.0, "output_per_mtok": 2.0}
        overrides = [
            f"store={store}",
            "completions_per_instruction=3",
            "endpoints.sim.max_in_flight=1",
            *(f"models.{m['id']}.price.input_per_mtok=1.0" for m in spec["models"]),
        ]
        policy = {
            "ULTRAFEEDBACK_ALLOWED_OVERRIDES": "store,completions_per_instruction,endpoints.*.max_in_flight,"
            "models.*.price.input_per_mtok",
            "ULTRAFEEDBACK_INPUT_ROOTS": str(spec_dir),
            "ULTRAFEEDBACK_OUTPUT_ROOTS": str(store),
        }
        _deploy(server)
        flow_run_id = _start_run(server, spec_path, overrides)

        worker_dir = tmp_path / "worker"
        worker_dir.mkdir()
        env = {**server.env, KEY_ENV: SECRET, **policy, "ULTRAFEEDBACK_PROGRESS_INTERVAL_S": "0.2"}
        worker = Background(
            [_prefect_cli(), "worker", "start", "--pool", POOL], env=env, cwd=worker_dir, log=worker_dir / "worker.log"
        )
        try:
            seen = _watch_progress(server, flow_run_id, worker)
            state = server.get(f"/flow_runs/{flow_run_id}")["state"]
        finally:
            worker.stop()
        log = worker.output()
        stats = sim.stats()
    assert state["type"] == "COMPLETED", f"{state}\n{log}"

    # while it ran: the generate stage's progress moved through values between 0 and 100
    between = sorted({value for value in seen["generate"] if 0 < value < 100})
    assert len(between) >= 2, f"generate progress seen while running: {seen['generate']}\n{log}"
    assert seen["generate"] == sorted(seen["generate"]), "progress never goes back"

    # the run: named after the dataset and the command, tagged with the dataset and the spec hash
    from ultrafeedback.spec import load_spec

    spec_hash = load_spec(str(spec_path), overrides).spec_hash()
    flow_run = server.get(f"/flow_runs/{flow_run_id}")
    assert flow_run["name"] == f"{DATASET}/build"
    assert {f"dataset:{DATASET}", f"spec:{spec_hash}"} <= set(flow_run["tags"]), flow_run["tags"]

    # the artifacts, every key per dataset
    artifacts = _artifacts(server, flow_run_id)
    assert all(key.startswith(f"{DATASET}-") for key in artifacts), sorted(artifacts)
    for stage in STAGES:
        progress = artifacts[f"{DATASET}-progress-{stage}"]
        assert progress["type"] == "progress" and progress["data"] == 100.0, progress
        assert progress["description"].startswith(f"{stage}: done"), progress["description"]
    assert "9 of 9 calls answered" in artifacts[f"{DATASET}-progress-generate"]["description"]
    for gate in GATES:
        table = artifacts[f"{DATASET}-gate-{gate}"]
        assert table["type"] == "table" and "passed" in table["description"]
        assert json.loads(table["data"]), f"gate {gate}: no checks"
    for name in ("statistics", "leaderboard", "sources", "ratings", "overall-score"):
        assert artifacts[f"{DATASET}-aggregate-{name}"]["type"] == "table"
    summary = artifacts[f"{DATASET}-build-summary"]["data"]
    assert "release:   v1" in summary

    # calls and cost per model: the simulator's count, the spec's price
    cost = artifacts[f"{DATASET}-calls-and-cost"]
    rows = {row["model"]: row for row in json.loads(cost["data"])}
    assert rows["total"]["calls"] == stats["total"] == 30, (rows, stats)
    assert {rows[f"sim-{i}"]["calls"] for i in range(3)} == {3}
    for i in range(3):
        row = rows[f"sim-{i}"]
        assert row["est_cost_usd"] == round(row["tokens_in"] / 1e6 * price["input_per_mtok"], 4)
    assert rows["sim-judge"]["calls"] == 21 and rows["sim-judge"]["est_cost_usd"] == 0.0
    assert "final" in cost["description"]

    # the release: a link to it, its plots in the folder, in the card and as artifacts
    release = store / DATASET / "releases" / "v1"
    link = artifacts[f"{DATASET}-release"]
    assert link["type"] == "markdown"  # Prefect stores a link artifact as markdown: [text](url)
    assert f"]({release.as_uri()})" in link["data"], link["data"]
    card = (release / "README.md").read_text()
    manifest = json.loads((release / "manifest.json").read_text())
    for plot in PLOTS:
        png = (release / "plots" / f"{plot}.png").read_bytes()
        assert png.startswith(PNG) and f"plots/{plot}.png" in manifest["files"]
        assert f"(plots/{plot}.png)" in card
        shown = artifacts[f"{DATASET}-plot-{plot.replace('_', '-')}"]["data"]
        encoded = shown.split("data:image/png;base64,", 1)[1].split(")", 1)[0]
        assert base64.b64decode(encoded) == png, f"the {plot} artifact shows another image"

    # Data Docs: a page per gate in the store, linked from the run
    docs = store / DATASET / "data_docs"
    assert (docs / "index.html").is_file()
    for gate in GATES:
        data = artifacts[f"{DATASET}-data-docs-{gate}"]["data"]
        url = data.split("](", 1)[1].rsplit(")", 1)[0]
        page = Path(httpx.URL(url).path)
        assert page.is_file() and page.is_relative_to(docs / "validations"), url
        assert f"ultrafeedback.{gate}" in page.read_text()

    # the log: each shard's start and end with its counts
    messages: list[str] = []
    while True:
        body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200, "offset": len(messages)}
        page = [entry["message"] for entry in server.post("/logs/filter", body)]
        messages += page
        if len(page) < 200:
            break
    assert "generate shard 0: started" in messages, messages
    assert any(m.startswith("generate shard 0: done in") and "9 calls, 9 answered, none failed" in m for m in messages)
    assert any(m.startswith("annotate shard 0: done in") and "21 calls, 21 answered" in m for m in messages)


def _watch_progress(server: PrefectServer, flow_run_id: str, worker: Background) -> dict[str, list[float]]:
    """Poll the flow run's progress artifacts until the run ends; the values seen per stage while it
    was RUNNING."""
    seen: dict[str, list[float]] = {stage: [] for stage in STAGES}
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        state = (server.get(f"/flow_runs/{flow_run_id}")["state"] or {}).get("type")
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return seen
        if worker.proc.poll() is not None:
            pytest.fail(f"the worker exited {worker.proc.returncode}:\n{worker.output()}")
        if state == "RUNNING":
            for key, artifact in _artifacts(server, flow_run_id).items():
                stage = key.removeprefix(f"{DATASET}-progress-")
                if stage in seen and (not seen[stage] or seen[stage][-1] != artifact["data"]):
                    seen[stage].append(artifact["data"])
        time.sleep(0.1)
    pytest.fail(f"the flow run did not end within {RUN_TIMEOUT_S:g}s:\n{worker.output()}")
