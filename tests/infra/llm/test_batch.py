"""Batch API sessions against the simulator: submit, wait, collect, resume from the store's registry,
send again only what an expired batch or a failed line left unanswered."""

from __future__ import annotations

import time

import pytest

from ultrafeedback.infra.llm.base import LLMRequest, LLMResult
from ultrafeedback.infra.llm.batch import BatchBackend, BatchSession
from ultrafeedback.infra.simulator import Simulator, SimulatorConfig
from ultrafeedback.infra.store import Store
from ultrafeedback.spec import Endpoint


def requests(n: int, model: str = "sim-model", start: int = 0) -> list[LLMRequest]:
    return [
        LLMRequest(
            f"k{i:03d}", model, messages=[{"role": "user", "content": f"Question {i}?"}], sampling={"max_tokens": 9}
        )
        for i in range(start, start + n)
    ]


@pytest.fixture
def setup(tmp_path):
    sims: list[Simulator] = []

    def make(endpoint: dict | None = None, **config: object):
        sim = Simulator(SimulatorConfig(**{"seed": 2, "batch_delay_s": 0.3, **config})).start()
        sims.append(sim)
        point = Endpoint(base_url=sim.url, max_retries=2, backoff_base_s=0.01, **(endpoint or {}))
        return sim, BatchBackend("sim", point, None, poll_s=0.1), Store(str(tmp_path / "store"), "ds")

    yield make
    for sim in sims:
        sim.stop()


def collect(backend, store, calls, label="s00000", passes=100):
    """Run passes of a session until nothing waits; (results by key, sessions used)."""
    results: dict[str, LLMResult] = {}
    pending = list(calls)
    for _ in range(passes):
        session = BatchSession(backend, store, "completions", label)
        session.run(pending, lambda r: results.__setitem__(r.key, r))
        session.close()
        pending = [c for c in pending if c.key in session.waiting_keys]
        if not pending:
            return results
        time.sleep(0.1)
    raise AssertionError("batches never ended")


def test_calls_are_submitted_once_and_wait_without_blocking_then_are_collected(setup):
    sim, backend, store = setup(batch_delay_s=0.5)
    calls = requests(5)
    session = BatchSession(backend, store, "completions", "s00000")
    started = time.monotonic()
    session.run(calls, lambda r: pytest.fail("nothing can have ended yet"))
    assert time.monotonic() - started < 0.5  # submitting does not wait for the batch
    assert session.waiting_keys == {c.key for c in calls} and session.submitted == 5
    session.close()
    saved = store.read_json("batches/completions/s00000.sim.json")
    assert [b["keys"] for b in saved["batches"]] == [[c.key for c in calls]] and saved["batches"][0]["id"]
    results = collect(backend, store, calls)  # a new session (a restarted run) picks the batch up
    assert sorted(results) == [c.key for c in calls] and all(r.ok and r.output_tokens for r in results.values())
    assert sim.batch_stats()["created"] == 1 and set(sim.batch_stats()["submitted"].values()) == {1}
    assert not store.exists("batches/completions/s00000.sim.json")  # nothing waits: the registry is gone


def test_calls_are_split_at_the_request_and_byte_limits_and_per_model(setup):
    sim, backend, store = setup({"batch_max_requests": 3, "batch_max_bytes": 1024})
    calls = requests(7) + requests(2, model="other", start=7)
    big = LLMRequest("big", "sim-model", messages=[{"role": "user", "content": "x" * 900}])
    results = collect(backend, store, [*calls, big])
    assert len(results) == 10
    sizes = sorted(_batches(sim))
    assert sum(sizes) == 10 and max(sizes) <= 3 and sim.batch_stats()["created"] >= 5


def _batches(sim: Simulator) -> list[int]:
    """The request count of every batch the simulator holds."""
    import httpx

    data = httpx.get(f"{sim.url}/batches", params={"limit": 100}).json()["data"]
    return [batch["request_counts"]["total"] for batch in data]


def test_an_expired_batch_sends_only_its_unanswered_keys_again(setup):
    sim, backend, store = setup(batch_expire_first=1, batch_expire_fraction=0.5)
    results = collect(backend, store, requests(6))
    assert len(results) == 6 and all(r.ok for r in results.values())
    submitted = sim.batch_stats()["submitted"]
    assert sorted(submitted.values()) == [1, 1, 1, 2, 2, 2]  # the three unanswered ones, once more
    assert sim.batch_stats()["by_status"] == {"expired": 1, "completed": 1}


def test_failed_lines_are_sent_again_then_recorded_with_their_reason(setup):
    sim, backend, store = setup(batch_line_error_rate=0.4, max_faults_per_body=1)
    results = collect(backend, store, requests(10))
    assert all(r.ok for r in results.values())  # a 500 line goes into the next batch, which answers it
    again = [k for k, n in sim.batch_stats()["submitted"].items() if n > 1]
    assert again and sim.batch_stats()["created"] == 2
    forced = collect(backend, store, requests(2, model="force-400", start=20), label="s00001")
    assert {r.reason for r in forced.values()} == {"http_400"} and not any(r.ok for r in forced.values())
    assert all("HTTP 400" in (r.error or "") for r in forced.values())
    always = collect(backend, store, requests(1, model="force-503", start=30), label="s00002")
    assert always["k030"].reason == "http_503" and sim.batch_stats()["submitted"]["k030"] == 3  # 1 + max_retries


def test_a_batch_whose_creation_was_not_recorded_is_found_by_its_input_file(setup):
    sim, backend, store = setup()
    calls = requests(3)
    session = BatchSession(backend, store, "completions", "s00000")
    created = backend.client.create

    def crash(*args, **kwargs):  # the batch is created, then the process dies before recording its id
        created(*args, **kwargs)
        raise KeyboardInterrupt

    backend.client.create = crash
    with pytest.raises(KeyboardInterrupt):
        session.run(calls, lambda r: None)
    backend.client.create = created
    saved = store.read_json("batches/completions/s00000.sim.json")["batches"]
    assert saved[0]["id"] is None and saved[0]["file"]
    results = collect(backend, store, calls)
    assert len(results) == 3 and sim.batch_stats()["created"] == 1


def test_each_pass_takes_a_keys_batches_in_order_as_re_asks_do(setup):
    sim, backend, store = setup(batch_delay_s=0.1)
    call = requests(1)
    first = collect(backend, store, call)["k000"]
    session = BatchSession(backend, store, "completions", "s00000")
    seen: list[LLMResult] = []
    session.run(call, seen.append)  # the registry was deleted: a new batch
    assert not seen and session.waiting_keys == {"k000"}
    session.close()
    time.sleep(0.3)
    session = BatchSession(backend, store, "completions", "s00000")
    session.run(call, seen.append)  # a re-ask round in one pass: first batch, then a new one
    assert len(seen) == 1 and seen[0].text == first.text
    session.run(call, seen.append)
    assert len(seen) == 1 and session.waiting_keys == {"k000"} and sim.batch_stats()["created"] == 3


def test_an_answer_taken_again_by_a_later_pass_is_marked_replayed_and_keeps_its_tokens(setup):
    sim, backend, store = setup(batch_delay_s=0.1)
    first, second = requests(2)
    BatchSession(backend, store, "completions", "s00000").run([first], lambda r: None)
    time.sleep(0.3)
    seen: list[LLMResult] = []
    session = BatchSession(backend, store, "completions", "s00000")
    session.run([first, second], seen.append)  # first answered; second goes into a new batch
    session.close()
    time.sleep(0.3)
    session = BatchSession(backend, store, "completions", "s00000")
    session.run([first, second], seen.append)  # first again (a re-ask round would ask it again)
    assert [(r.key, r.replayed) for r in seen] == [("k000", False), ("k000", True), ("k001", False)]
    assert seen[1].output_tokens == seen[0].output_tokens > 0
