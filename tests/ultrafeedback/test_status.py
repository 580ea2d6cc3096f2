"""``ultrafeedback status``: counts by key column, open failures by reason, quarantine, gates."""

from __future__ import annotations

import time

import yaml

from ultrafeedback.infra.store import Store
from ultrafeedback.records import Completion, CompletionRequest, Failure, Instruction, Quarantined
from ultrafeedback.status import COUNTED, collect_status, print_status


def request(i: int) -> CompletionRequest:
    return CompletionRequest(
        request_id=f"r{i}",
        instruction_id="i0",
        source="s",
        position=i,
        model="m",
        principle="helpfulness",
        system_prompt="be helpful",
        prompt_format="chat",
        sampling_json="{}",
        shard=0,
    )


def failure(key: str, reason: str) -> Failure:
    return Failure(stage="completions", key=key, shard=0, reason=reason, error="boom", attempts=3, at=time.time())


def fill(store: Store) -> None:
    store.log("instructions").append([Instruction(id="i0", source="s", instruction="hi", origin="f:1")])
    store.log("requests").append([request(i) for i in range(3)])
    store.log("failures/completions").append([failure("r0", "http_500"), failure("r1", "timeout")])
    # r0 succeeded on a later run: its failure is no longer open
    store.log("completions").append([Completion(request_id="r0", instruction_id="i0", model="m", response="x")])
    # a failure of a request the current assignment no longer asks for is not listed
    store.log("failures/completions").append([failure("gone", "http_429")])
    store.log("quarantine").append(
        [Quarantined(source="s", origin="in.jsonl:4", reason="malformed_json", detail="line 4")]
    )
    store.write_json("gates/generate.json", {"passed": False})
    store.write_json("gates/ingest.json", {"passed": True})


def test_collect_status(tmp_path):
    store = Store(str(tmp_path), "d")
    fill(store)
    status = collect_status(store)
    assert list(status["counts"]) == list(COUNTED)
    assert status["counts"]["requests"] == 3 and status["counts"]["completions"] == 1
    assert [f["key"] for f in status["failures"]["completions"]] == ["r1"]
    assert status["quarantine"][0]["origin"] == "in.jsonl:4"
    assert list(status["gates"]) == ["ingest", "generate"]  # pipeline order
    assert status["releases"] == []


def test_print_status_names_reasons_and_the_retry_command(tmp_path, capsys):
    spec = {
        "name": "d",
        "store": str(tmp_path),
        "sources": [{"name": "s", "loader": "jsonl", "path": "x.jsonl"}],
        "models": [{"id": "m", "backend": "embedded"}],
        "completions_per_instruction": 1,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    fill(Store(str(tmp_path), "d"))
    assert print_status(str(path), []) == 0
    out = capsys.readouterr().out
    assert "failed completions   1  (timeout 1)" in out
    assert "in.jsonl:4: malformed_json" in out
    assert "gate generate        FAILED" in out
    assert "retry-failed" in out
