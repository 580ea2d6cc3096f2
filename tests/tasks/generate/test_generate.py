"""generate_shard with a fake backend: checkpoints, failures as data, empty answers."""

from __future__ import annotations

import pytest

from ultrafeedback.infra import stop
from ultrafeedback.infra.checkpoint import failure_log
from ultrafeedback.infra.llm.base import LLMResult
from ultrafeedback.infra.store import Store
from ultrafeedback.records import Completion, Instruction
from ultrafeedback.spec import validate_dict
from ultrafeedback.tasks.assign.assign import assign
from ultrafeedback.tasks.generate.generate import STAGE, generate_shard


class FakeBackend:
    name = "fake"

    def __init__(self, reply=lambda request: f"answer to {request.key}", crash_after: int | None = None):
        self.reply = reply
        self.crash_after = crash_after
        self.stop_after: int | None = None
        self.sent: list[str] = []

    def run(self, requests, on_result):
        stop.check(unsent=len(requests))  # as the real backends do: nothing starts once the run stops
        for index, request in enumerate(requests):
            if self.crash_after is not None and index == self.crash_after:
                raise RuntimeError("worker killed")
            if self.stop_after is not None and len(self.sent) == self.stop_after:
                stop.request("test")
                raise stop.Stopped(unsent=len(requests) - index)
            self.sent.append(request.key)
            text = self.reply(request)
            on_result(LLMResult(key=request.key, text=text, finish_reason="stop", input_tokens=3, output_tokens=5))

    def close(self):
        pass


@pytest.fixture
def setup(tmp_path, monkeypatch):
    spec = validate_dict(
        {
            "name": "g",
            "store": str(tmp_path),
            "sources": [{"name": "s", "loader": "jsonl", "path": "x"}],
            "models": [{"id": f"m{i}", "backend": "embedded"} for i in range(2)],
            "completions_per_instruction": 2,
            "execution": {"checkpoint_every": 2},
        }
    )
    instructions = {
        f"i{n}": Instruction(id=f"i{n}", source="s", instruction=f"question {n}", origin=f"x:{n}") for n in range(4)
    }
    requests = sorted(assign(list(instructions.values()), spec), key=lambda r: r.request_id)
    backend = FakeBackend()
    monkeypatch.setattr("ultrafeedback.infra.llm.factory.model_backend", lambda spec, entry: backend)
    return spec, Store(str(tmp_path), "g"), instructions, requests, backend


def test_results_are_stored_and_counted(setup):
    spec, store, instructions, requests, backend = setup
    report = generate_shard(spec, store, 0, requests, instructions)
    stored = store.results(STAGE, Completion, key="request_id").rows()
    assert {r["request_id"] for r in stored} == {r.request_id for r in requests}
    assert report.succeeded == 8 and report.tokens == {"m0": [12, 20], "m1": [12, 20]}


def test_a_crash_keeps_what_was_answered_and_a_rerun_sends_only_the_rest(setup):
    spec, store, instructions, requests, backend = setup
    backend.crash_after = 3
    with pytest.raises(RuntimeError, match="worker killed"):
        generate_shard(spec, store, 0, requests, instructions)
    done = store.results(STAGE, Completion, key="request_id").keys()
    assert len(done) == 3  # every answered request was checkpointed before the crash propagated
    backend.crash_after, backend.sent = None, []
    generate_shard(spec, store, 0, [r for r in requests if r.request_id not in done], instructions)
    assert set(backend.sent) == {r.request_id for r in requests} - done


def test_a_stop_keeps_what_was_answered_and_reports_only_the_calls_made(setup, tmp_path):
    spec, store, instructions, requests, backend = setup
    backend.stop_after = 3  # the run stops after three calls (its first model's batch of four)
    try:
        report = generate_shard(spec, store, 0, requests, instructions)
    finally:
        stop.reset()
    assert report.stopped and report.issued == 3 and report.succeeded == 3
    assert len(store.results(STAGE, Completion, key="request_id").keys()) == 3  # checkpointed
    assert list((tmp_path / "g" / "journal" / STAGE).glob("*.jsonl"))  # kept for the next run's replay
    state = report.as_state()
    assert state.is_cancelled() and state.data["stopped"] and state.data["issued"] == 3


def test_an_empty_answer_is_a_failure_not_a_completion(setup):
    spec, store, instructions, requests, backend = setup
    empty = requests[0].request_id
    backend.reply = lambda request: "   " if request.key == empty else "fine"
    report = generate_shard(spec, store, 0, requests, instructions)
    assert empty not in store.results(STAGE, Completion, key="request_id").keys()
    failures = failure_log(store, STAGE).rows()
    assert [(f["key"], f["reason"]) for f in failures] == [(empty, "empty_response")]
    assert report.failed == {"empty_response": 1}


def test_a_completion_carries_the_hash_of_its_text_and_refuses_another():
    from ultrafeedback.keys import text_hash

    completion = Completion(request_id="r", instruction_id="i", model="m", response="an answer")
    assert completion.response_hash == text_hash("an answer")
    with pytest.raises(ValueError, match="is not the hash of the response"):
        Completion(request_id="r", instruction_id="i", model="m", response="another", response_hash=text_hash("x"))


def test_response_hashes_read_the_hash_column_or_hash_old_parts(tmp_path):
    import pyarrow as pa

    from ultrafeedback.keys import text_hash
    from ultrafeedback.tasks.generate.generate import response_hashes

    store = Store(str(tmp_path), "h")
    log = store.log("completions")
    log.append([Completion(request_id="new", instruction_id="i", model="m", response="fresh")], label="s00000")
    assert response_hashes(log, ["new", "missing"]) == {"new": text_hash("fresh")}
    old = store.log("completions")  # a part written before the hash column existed
    old.append(pa.table({"request_id": ["old"], "instruction_id": ["i"], "model": ["m"], "response": ["stale"]}))
    assert response_hashes(store.log("completions"), ["old"]) == {"old": text_hash("stale")}


def test_the_gate_rows_a_worker_reads_are_the_stored_completions_also_after_a_compaction(setup):
    """The generate gate's rows travel to a worker process as where to read them (pickled), not as a
    table; a part compacted after they were located is located again there."""
    import pickle

    from ultrafeedback.tasks.generate.task import CompletionRows

    spec, store, instructions, requests, backend = setup
    generate_shard(spec, store, 0, requests, instructions)
    log = store.log("completions")
    ids = [r.request_id for r in requests]
    rows = pickle.loads(pickle.dumps(CompletionRows(store, ids, log.locate(ids))))
    expected = log.read_keys(ids).to_pandas()
    assert rows().equals(expected) and len(expected) == len(ids)
    assert log.compact(min_parts=2) > 1  # the located parts are gone
    assert sorted(rows()["request_id"]) == sorted(ids)
