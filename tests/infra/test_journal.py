"""The result journal: answers written down as they arrive, replayed once each after a kill."""

from __future__ import annotations

from pathlib import Path

import pytest

from ultrafeedback.infra.journal import JOURNAL_DIR_ENV, Journal, journal_root, run_journaled
from ultrafeedback.infra.llm.base import LLMRequest, LLMResult
from ultrafeedback.infra.store import Store


def answer(key: str, text: str = "an answer") -> LLMResult:
    return LLMResult(key=key, text=text, finish_reason="stop", input_tokens=3, output_tokens=4, latency_s=0.5)


def request(key: str, model: str = "m") -> LLMRequest:
    return LLMRequest(key=key, model=model, messages=[{"role": "user", "content": key}])


class Backend:
    """Answers every request it is sent; records what it was sent."""

    name = "fake"

    def __init__(self, arrivals: bool = False) -> None:
        self.sent: list[str] = []
        self.records_arrivals = arrivals
        self.arrived: list[str] = []

    def run(self, requests, on_result, on_arrival=None):
        for req in requests:
            self.sent.append(req.key)
            result = answer(req.key, f"fresh {req.key}")
            if on_arrival is not None:
                on_arrival(result)
                self.arrived.append(req.key)
            on_result(result)


def test_answers_of_an_earlier_run_are_replayed_once_each_oldest_first(tmp_path):
    first = Journal(tmp_path, "annotations", "s00001")
    first.record(answer("a", "unparseable"), "m")
    first.record(answer("a", "parseable"), "m")
    first.record(answer("b"), "m")
    first.close()
    replay = Journal(tmp_path, "annotations", "s00001").replay()
    assert len(replay) == 3
    assert replay.take(request("a")).text == "unparseable"
    assert replay.take(request("a")).text == "parseable"
    assert replay.take(request("a")) is None
    assert replay.take(request("c")) is None and replay.replayed == 2


def test_failures_are_not_journalled_and_another_model_is_not_answered(tmp_path):
    journal = Journal(tmp_path, "completions", "s00000")
    journal.record(LLMResult(key="a", text=None, error="HTTP 500", reason="http_500"), "m")
    journal.record(answer("b"), "m")
    journal.close()
    replay = Journal(tmp_path, "completions", "s00000").replay()
    assert replay.take(request("a")) is None
    assert replay.take(request("b", model="other")) is None


def test_a_line_cut_short_by_a_kill_is_skipped(tmp_path, caplog):
    journal = Journal(tmp_path, "completions", "s00000")
    journal.record(answer("a"), "m")
    journal.close()
    with journal.path.open("a") as handle:
        handle.write('{"key": "b", "model": "m", "te')
    replay = Journal(tmp_path, "completions", "s00000").replay()
    assert replay.take(request("a")).text == "an answer" and len(replay) == 0
    assert "an unreadable line is skipped" in caplog.text


def test_the_own_file_and_other_shards_are_not_replayed(tmp_path):
    other = Journal(tmp_path, "completions", "s00002")
    other.record(answer("a"), "m")
    other.close()
    journal = Journal(tmp_path, "completions", "s00001")
    journal.record(answer("a"), "m")
    assert len(journal.replay()) == 0


def test_discard_removes_every_run_s_journal_of_the_shard(tmp_path):
    for _ in range(2):
        journal = Journal(tmp_path, "completions", "s00001")
        journal.record(answer("a"), "m")
        journal.close()
    keep = Journal(tmp_path, "completions", "s00002")
    keep.record(answer("a"), "m")
    keep.close()
    assert Journal(tmp_path, "completions", "s00001").discard() == 2
    assert [p.name.split("-")[0] for p in (tmp_path / "completions").iterdir()] == ["s00002"]


def test_run_journaled_sends_only_what_the_journal_lacks_and_journals_before_handing_over(tmp_path):
    earlier = Journal(tmp_path, "completions", "s00000")
    earlier.record(answer("a", "from the journal"), "m")
    earlier.close()
    journal = Journal(tmp_path, "completions", "s00000")
    backend = Backend()
    seen: list[tuple[str, str, int]] = []

    def on_result(result: LLMResult) -> None:  # the journal already holds what is handed over
        seen.append((result.key, result.text, journal.written))

    replayed = run_journaled(backend, [request("a"), request("b")], on_result, journal, journal.replay())
    assert replayed == 1 and backend.sent == ["b"]
    assert seen == [("a", "from the journal", 0), ("b", "fresh b", 1)]


def test_a_backend_that_records_arrivals_journals_on_arrival(tmp_path):
    journal = Journal(tmp_path, "completions", "s00000")
    backend = Backend(arrivals=True)
    run_journaled(backend, [request("a")], lambda result: None, journal, journal.replay())
    journal.close()
    assert backend.arrived == ["a"] and journal.path.read_text().count('"key": "a"') == 1


def test_without_a_journal_the_backend_runs_as_usual():
    backend = Backend()
    assert run_journaled(backend, [request("a")], lambda result: None, None, None) == 0
    assert backend.sent == ["a"]


def test_journal_root_is_in_a_local_store_and_in_a_local_folder_for_an_object_store(tmp_path, monkeypatch):
    assert journal_root(Store(str(tmp_path), "d")) == Path(tmp_path) / "d" / "journal"
    monkeypatch.setenv(JOURNAL_DIR_ENV, str(tmp_path / "journals"))
    remote = Store("memory://bucket/x", "d")
    root = journal_root(remote)
    assert root.parent == tmp_path / "journals" and root != journal_root(Store("memory://bucket/y", "d"))


@pytest.mark.parametrize("stage", ["completions", "annotations"])
def test_each_run_writes_a_file_of_its_own(tmp_path, stage):
    one, two = Journal(tmp_path, stage, "s00000"), Journal(tmp_path, stage, "s00000")
    assert one.path != two.path and one.path.parent == two.path.parent == tmp_path / stage
