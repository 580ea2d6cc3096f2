"""A build whose every generation request fails stops at the generate gate with one line saying
that generate produced nothing and why."""

from __future__ import annotations

import json

import pytest
import yaml

from ultrafeedback.infra.simulator.server import Simulator

pytestmark = pytest.mark.e2e


def test_a_stage_that_produced_nothing_stops_the_build_in_one_line(prefect_harness, tmp_path, monkeypatch):
    from ultrafeedback.expectations.gate import GateFailed
    from ultrafeedback.flows.build import build

    monkeypatch.setenv("UF_EMPTY_KEY", "simulated")
    (tmp_path / "s.jsonl").write_text("".join(json.dumps({"q": f"Question {i}: why {i}?"}) + "\n" for i in range(4)))
    with Simulator() as sim:
        endpoint = {"base_url": sim.url, "api_key_env": "UF_EMPTY_KEY", "max_retries": 0, "timeout_s": 5}
        spec = {
            "name": "empty",
            "store": str(tmp_path / "store"),
            "sources": [{"name": "s", "loader": "jsonl", "path": "s.jsonl", "fields": {"instruction": "q"}}],
            "endpoints": {"sim": endpoint},
            "models": [{"id": f"m{i}", "backend": "openai", "endpoint": "sim", "model": "force-500"} for i in range(2)],
            "completions_per_instruction": 2,
            "judge": {"backend": "openai", "endpoint": "sim", "model": "sim-judge"},
            "execution": {"worker_processes": 0},
        }
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
        with pytest.raises(GateFailed) as stopped:
            build(spec_path=str(tmp_path / "spec.yaml"))
    assert str(stopped.value) == (
        "gate 'generate' failed: generate produced no completion: every request failed (completions:http_500 8)"
    )
    assert stopped.value.result.checks[0].name == "stage produced nothing"
