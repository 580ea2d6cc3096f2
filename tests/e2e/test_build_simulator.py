"""Whole builds against the project's OpenAI-compatible simulator, under a real Prefect API."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from tests.e2e.sim_spec import SIM_JUDGE, sim_endpoint, sim_models
from ultrafeedback.infra.simulator.config import SimulatorConfig
from ultrafeedback.infra.simulator.server import Simulator
from ultrafeedback.infra.store import ResultLog

pytestmark = pytest.mark.e2e

SECRET = "sk-test-DO-NOT-LEAK-4242"
K = 4


def write_sources(folder: Path, broken_line: bool = False) -> None:
    prompts = [
        "Explain why the sky looks blue during the day.",
        "Write a haiku about autumn rain.",
        "What is 17 multiplied by 23? Show your steps.",
        "Give three tips for writing readable Python code.",
        "Summarise the plot of a heist story in two sentences.",
        "Is a tomato a fruit or a vegetable?",
        "Translate 'good morning' into Spanish and French.",
    ]
    lines = [json.dumps({"prompt": p}) for p in prompts]
    if broken_line:
        lines.insert(3, '{"prompt": "unterminated')
    (folder / "instructions.jsonl").write_text("\n".join(lines) + "\n")
    tqa = [
        {
            "question": "What happens if you swallow gum?",
            "correct": ["It passes through your digestive system"],
            "incorrect": ["It stays in your stomach for seven years"],
        },
        {
            "question": "Can you see the Great Wall of China from the Moon with the naked eye?",
            "correct": ["No"],
            "incorrect": ["Yes"],
        },
    ]
    (folder / "tqa.jsonl").write_text("\n".join(json.dumps(r) for r in tqa) + "\n")


def spec_data(folder: Path, url: str, **changes: object) -> dict:
    data: dict = {
        "name": "e2e",
        "seed": 5,
        "store": str(folder / "store"),
        "sources": [
            {"name": "mixed", "loader": "jsonl", "path": "instructions.jsonl", "fields": {"instruction": "prompt"}},
            {
                "name": "truthful",
                "loader": "jsonl",
                "path": "tqa.jsonl",
                "fields": {"instruction": "question", "correct_answers": "correct", "incorrect_answers": "incorrect"},
                "principles": {"truthfulness": 0.5, "honesty": 0.45, "verbalized_calibration": 0.05},
                "world_knowledge": "answers",
            },
        ],
        "endpoints": {"sim": sim_endpoint(url, "UF_E2E_KEY")},
        "models": sim_models(5, price={"input_per_mtok": 1.0, "output_per_mtok": 2.0}),
        "completions_per_instruction": K,
        "sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 48},
        "judge": dict(SIM_JUDGE),
        "binarize": {"rule": "h4", "test_size": 0.25, "seed": 1},
        # no Data Docs pages (seconds of Jinja per gate); the golden and deployment builds write them
        "gates": {"data_docs": False},
        # validations in the flow's own process (as the default does for a build this small); the golden,
        # interrupt and cancel builds ask for a worker process
        "execution": {"shard_size": 4, "checkpoint_every": 8, "worker_processes": 0},
    }
    data.update(changes)
    return data


def write_spec(folder: Path, data: dict) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def sim(monkeypatch):
    monkeypatch.setenv("UF_E2E_KEY", SECRET)
    with Simulator(SimulatorConfig(latency_ms=2, seed=3, api_key=SECRET)) as simulator:
        yield simulator


def run_build(spec_path: Path, overrides: list[str] | None = None) -> str:
    from ultrafeedback.flows.build import build

    return build(spec_path=str(spec_path), overrides=overrides or [])


def releases(folder: Path) -> list[str]:
    path = folder / "store" / "e2e" / "releases"
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def check_release(uri: str) -> None:
    import datasets

    completions = datasets.load_dataset(uri, name="completions", split="train")
    assert len(completions) == 9
    for row in completions:
        assert len(row["completions"]) == K
        models = [c["model"] for c in row["completions"]]
        assert len(set(models)) == K and sorted(models) == sorted(row["models"])
        for completion in row["completions"]:
            annotations = completion["annotations"]
            for aspect in ("instruction_following", "honesty", "truthfulness", "helpfulness"):
                assert annotations[aspect]["Rating"] in {"1", "2", "3", "4", "5", "N/A"}
                assert annotations[aspect]["Rationale"]
            assert completion["critique"]
            assert 1 <= completion["overall_score"] <= 10
            assert completion["judge_kind"] == "model"
            assert completion["response"]
    truthful = [r for r in completions if r["source"] == "truthful"]
    assert truthful and all(r["correct_answers"] != ["None"] for r in truthful)
    pairs = datasets.load_dataset(uri, name="pairs", split="train")
    assert len(pairs) > 0
    assert all(p["score_chosen"] > p["score_rejected"] for p in pairs)
    binarized = datasets.load_dataset(uri, name="binarized")
    assert set(binarized) == {"train_prefs", "test_prefs", "train_sft", "test_sft", "train_gen", "test_gen"}
    row = binarized["train_prefs"][0]
    assert row["chosen"][0]["role"] == "user" and row["chosen"][1]["role"] == "assistant"


def assert_no_secret(folder: Path) -> None:
    for path in (folder / "store").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"secret leaked into {path}"


def test_build_publishes_and_a_rerun_sends_no_request(prefect_harness, sim, tmp_path):
    write_sources(tmp_path)
    data = spec_data(tmp_path, sim.url)
    data["execution"]["checkpoint_every"] = 1  # a part per result: the stage compacts them after
    spec_path = write_spec(tmp_path, data)

    uri = run_build(spec_path)
    assert uri.endswith("/e2e/releases/v1")
    check_release(uri)
    root = tmp_path / "store" / "e2e"
    for stage in ("completions", "annotations", "critiques"):  # each shard's parts were compacted into one
        labels = [ResultLog.label_of(p.name) for p in (root / stage).glob("*.parquet")]
        assert sorted(labels) == ["s00000", "s00001", "s00002"]
    first = sim.stats()
    # 9 instructions x 4 completions, then 9 x 4 aspect calls and 36 critiques
    assert first["by_kind"] == {"generation": 36, "judge_aspect": 36, "critique": 36}
    assert first["with_auth"] == first["total"]
    assert_no_secret(tmp_path)
    assert {p.name for p in (root / "gates").glob("*.json")} >= {"annotate.json", "generate.json"}
    assert not (root / "data_docs").exists()  # gates.data_docs: false

    written = {p: p.stat().st_mtime_ns for p in root.rglob("*.parquet") if "releases" not in p.parts}
    gate_runs = []
    import ultrafeedback.expectations.gate as gate_module
    import ultrafeedback.flows.build as flow_module
    import ultrafeedback.tasks.ingest.ingest as ingest_module

    real_run_gate, real_ingest, real_submit = gate_module.run_gate, ingest_module.ingest, flow_module.shard_task.submit
    ingested, tasks = [], []
    gate_module.run_gate = lambda *a, **k: gate_runs.append(a[0]) or real_run_gate(*a, **k)
    ingest_module.ingest = lambda *a, **k: ingested.append(1) or real_ingest(*a, **k)
    flow_module.shard_task.submit = lambda *a, **k: tasks.append(a[1:3]) or real_submit(*a, **k)
    try:
        assert run_build(spec_path) == uri
    finally:
        gate_module.run_gate, ingest_module.ingest = real_run_gate, real_ingest
        flow_module.shard_task.submit = real_submit
    assert ingested == [], "a rerun on unchanged sources read them again"
    assert tasks == [], f"a no-op rerun started shard tasks {tasks}"
    assert sim.stats()["total"] == first["total"], "a rerun of a finished build sent requests"
    assert releases(tmp_path) == ["v1"]
    # a no-op rerun rewrites no shard file and no result part, and re-validates only the one
    # whole-stage table it cannot fingerprint cheaply
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*.parquet") if "releases" not in p.parts}
    changed = sorted(str(p.relative_to(root)) for p in set(after) | set(written) if after.get(p) != written.get(p))
    assert changed == []
    assert gate_runs == [], f"a no-op rerun re-ran gates {gate_runs}"


def test_transient_faults_are_retried_and_the_build_completes(prefect_harness, tmp_path, monkeypatch):
    monkeypatch.setenv("UF_E2E_KEY", SECRET)
    config = SimulatorConfig(
        seed=9,
        rate_429=0.15,
        rate_500=0.15,
        rate_malformed=0.05,
        rate_unparseable=0.2,
        retry_after_s=0.05,
        max_faults_per_body=2,
    )
    with Simulator(config) as sim:
        write_sources(tmp_path)
        data = spec_data(tmp_path, sim.url)
        uri = run_build(write_spec(tmp_path, data))
        check_release(uri)
        faults = sim.stats()["faults"]
    assert faults.get("429", 0) + faults.get("500", 0) > 0
    assert faults.get("unparseable", 0) > 0


def test_failed_requests_stop_the_run_and_a_rerun_sends_only_those(prefect_harness, sim, tmp_path):
    from ultrafeedback.expectations.gate import GateFailed
    from ultrafeedback.infra.store import Store
    from ultrafeedback.status import collect_status

    write_sources(tmp_path)
    data = spec_data(tmp_path, sim.url)
    data["endpoints"]["sim"]["max_retries"] = 0
    spec_path = write_spec(tmp_path, data)
    sim.update(rate_500=0.3)
    started = datetime.now(UTC)
    with pytest.raises(GateFailed, match="generate") as stopped:
        run_build(spec_path)
    assert releases(tmp_path) == []
    status = collect_status(Store(str(tmp_path / "store"), "e2e"))
    failed = status["failures"]["completions"]
    # the gate's one line says why rows are missing: the open request failures by reason
    assert f"failed requests: completions:http_500 {len(failed)} (" in str(stopped.value)
    assert failed and {f["reason"] for f in failed} == {"http_500"}
    assert status["counts"]["completions"] == 36 - len(failed)
    # the shards with failed requests show as Failed in Prefect, with the reasons in the message
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="generate-shard")))
    # this build's runs only: the session's Prefect server also holds other tests' task runs
    failed_runs = [
        r for r in runs if r.state and r.state.type.value == "FAILED" and r.start_time and r.start_time >= started
    ]
    assert failed_runs and all("http_500" in (r.state.message or "") for r in failed_runs)

    sim.update(rate_500=0.0)
    sim.reset()
    uri = run_build(spec_path)
    assert sim.stats()["by_kind"]["generation"] == len(failed)
    check_release(uri)
    assert collect_status(Store(str(tmp_path / "store"), "e2e"))["failures"]["completions"] == []


def test_malformed_jsonl_line_stops_the_run_naming_the_line(prefect_harness, sim, tmp_path):
    from ultrafeedback.expectations.gate import GateFailed

    write_sources(tmp_path, broken_line=True)
    with pytest.raises(GateFailed) as err:
        run_build(write_spec(tmp_path, spec_data(tmp_path, sim.url)))
    assert "instructions.jsonl:4" in str(err.value)
    assert releases(tmp_path) == []
    assert sim.stats()["total"] == 0


def test_missing_source_file_names_the_key_and_path(prefect_harness, sim, tmp_path):
    write_sources(tmp_path)
    data = spec_data(tmp_path, sim.url)
    data["sources"][1]["path"] = "missing.jsonl"
    from ultrafeedback.tasks.ingest.loaders import IngestError

    with pytest.raises(IngestError) as err:
        run_build(write_spec(tmp_path, data))
    assert "sources[1]" in str(err.value) and "missing.jsonl" in str(err.value)
    assert releases(tmp_path) == []


def test_cli_build_prints_the_release_uri_last(prefect_harness, sim, tmp_path, capsys):
    from ultrafeedback.cli import main

    write_sources(tmp_path)
    spec_path = write_spec(tmp_path, spec_data(tmp_path, sim.url, name="e2e"))
    assert main(["build", str(spec_path), "--set", "binarize.rule=argilla"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].endswith("/e2e/releases/v1")
    assert Path(out[-1], "manifest.json").is_file()

    assert main(["status", str(spec_path)]) == 0
    status = capsys.readouterr().out
    assert "completions" in status and "release v1" in status


def test_cli_exit_codes_for_bad_input(tmp_path, capsys):
    from ultrafeedback.cli import EXIT_INPUT, main

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "sources": [], "models": []}))
    assert main(["validate", str(bad)]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "bad.yaml: invalid spec" in err and "sources:" in err
    assert main(["build", str(tmp_path / "none.yaml")]) == EXIT_INPUT
    assert "none.yaml: spec file not found" in capsys.readouterr().err


def test_refresh_computes_only_new_keys(prefect_harness, sim, tmp_path):
    """Adding instructions and a model to a finished build sends only the new units of work."""
    from ultrafeedback.infra.store import Store
    from ultrafeedback.tasks.common import read_requests

    write_sources(tmp_path)
    data = spec_data(tmp_path, sim.url)
    spec_path = write_spec(tmp_path, data)
    run_build(spec_path)
    store = Store(str(tmp_path / "store"), "e2e")
    before = {r.request_id for r in read_requests(store)}
    old_instructions = {r.instruction_id for r in read_requests(store)}

    with (tmp_path / "instructions.jsonl").open("a") as handle:
        handle.write(json.dumps({"prompt": "Name two uses of copper."}) + "\n")
    data["models"].append({"id": "sim-new", "backend": "openai", "endpoint": "sim", "model": "sim-model-new"})
    write_spec(tmp_path, data)
    sim.reset()
    uri = run_build(spec_path)

    requests = read_requests(store)
    new_requests = {r.request_id for r in requests} - before
    changed = {r.instruction_id for r in requests if r.request_id in new_requests}
    stats = sim.stats()
    assert stats["by_kind"]["generation"] == len(new_requests)
    assert len(new_requests) < len(requests) / 2  # the new model took at most one slot per instruction
    # judged again: the instructions whose completion set changed (4 aspects each) and the new critiques
    assert stats["by_kind"]["judge_aspect"] == 4 * len(changed)
    assert stats["by_kind"]["critique"] == len(new_requests)
    assert len(changed - old_instructions) == 1
    assert uri.endswith("/v2")


def test_missing_api_key_stops_before_any_work(prefect_harness, sim, tmp_path, monkeypatch, capsys):
    from ultrafeedback.cli import EXIT_INPUT, main

    write_sources(tmp_path)
    spec_path = write_spec(tmp_path, spec_data(tmp_path, sim.url))
    monkeypatch.delenv("UF_E2E_KEY")
    assert main(["build", str(spec_path)]) == EXIT_INPUT
    assert "UF_E2E_KEY" in capsys.readouterr().err
    assert sim.stats()["total"] == 0
    assert not (tmp_path / "store" / "e2e" / "instructions").exists()


def test_judge_calls_that_stayed_unparseable_are_resent_only_with_reparse(prefect_harness, sim, tmp_path, capsys):
    """A unit whose answers stayed unparseable after every re-ask is not paid for again by a rerun;
    ``retry-failed --reparse`` sends exactly those units again."""
    from ultrafeedback.cli import main
    from ultrafeedback.infra.store import Store
    from ultrafeedback.status import collect_status

    write_sources(tmp_path)
    data = spec_data(tmp_path, sim.url)
    data["judge"]["parse_retries"] = 1
    data["gates"].update(min_annotation_success=0.5, min_rating_rate=0.0)
    spec_path = write_spec(tmp_path, data)
    sim.update(rate_unparseable=0.4)
    assert main(["build", str(spec_path)]) == 0
    failures = collect_status(Store(str(tmp_path / "store"), "e2e"))["failures"]
    failed = [f for stage in ("annotations", "critiques") for f in failures[stage]]
    assert failed and all(f["reason"].startswith("parse_") for f in failed)

    sim.reset()
    assert main(["build", str(spec_path)]) == 0
    judge_kinds = ("judge_aspect", "critique")
    assert sum(sim.stats()["by_kind"].get(k, 0) for k in judge_kinds) == 0  # not paid again

    sim.update(rate_unparseable=0.0)
    sim.reset()
    capsys.readouterr()
    assert main(["retry-failed", str(spec_path), "--reparse"]) == 0
    assert sum(sim.stats()["by_kind"].get(k, 0) for k in judge_kinds) == len(failed)
    after = collect_status(Store(str(tmp_path / "store"), "e2e"))["failures"]
    assert after["annotations"] == [] and after["critiques"] == []
