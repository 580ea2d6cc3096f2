"""The OpenAI-compatible backend against the project's simulator: success, each failure reason,
retries, Retry-After, concurrency bounds, the shared limiter, key hygiene, and runs from several
threads on the process's one I/O loop (cancellation, sessions, fork, restart)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import uuid
from email.utils import formatdate

import pytest

from tests.infra.llm.forking import fork_and_report
from ultrafeedback.infra.llm import loop as io_loop
from ultrafeedback.infra.llm.base import LLMRequest, LLMResult
from ultrafeedback.infra.llm.limiter import InFlightLimit, RateLimiter, get_in_flight, get_limiter
from ultrafeedback.infra.llm.openai_compat import (
    MissingAPIKeyError,
    OpenAICompatBackend,
    backend_from_endpoint,
    estimate_tokens,
    parse_retry_after,
    request_body,
)
from ultrafeedback.infra.simulator import Simulator, SimulatorConfig
from ultrafeedback.infra.simulator.content import generation_reply
from ultrafeedback.spec import Endpoint

SECRET = "sk-test-DO-NOT-LEAK-4f1c9e"


def chat_request(i: int = 0, model: str = "sim-model", **sampling) -> LLMRequest:
    return LLMRequest(
        key=f"k{i}",
        model=model,
        messages=[
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": f"Explain how volcanoes form, case {i}."},
        ],
        sampling=sampling,
    )


def backend(url: str, **overrides: object) -> OpenAICompatBackend:
    settings = {
        "name": "sim",
        "base_url": url,
        "api_key": None,
        "max_in_flight": 16,
        "timeout_s": 10.0,
        "max_retries": 3,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "limiter": None,
        "in_flight": None,
    }
    settings.update(overrides)
    return OpenAICompatBackend(**settings)


def run(b: OpenAICompatBackend, requests: list[LLMRequest]) -> dict[str, LLMResult]:
    results: list[LLMResult] = []
    b.run(requests, results.append)
    assert len(results) == len(requests)
    return {r.key: r for r in results}


def run_one(b: OpenAICompatBackend, request: LLMRequest | None = None) -> LLMResult:
    request = request or chat_request()
    return run(b, [request])[request.key]


# ----------------------------------------------------------------------------- success
def test_chat_request_returns_the_text_usage_and_finish_reason():
    with Simulator(SimulatorConfig(seed=5)) as sim:
        result = run_one(backend(sim.url), chat_request(max_tokens=400))
        assert sim.stats()["by_endpoint"] == {"chat": 1}
    expected, finish = generation_reply(
        "Explain how volcanoes form, case 0.", "You are helpful.", 5, "sim-model", 400
    )
    assert result.ok and result.reason is None and result.attempts == 1
    assert result.text == expected and result.finish_reason == finish == "stop"
    assert result.input_tokens == 9 and result.output_tokens == len(expected.split())
    assert result.latency_s > 0


def test_prompt_request_goes_to_completions():
    request = LLMRequest(key="p", model="base-model", prompt="Tell me about comets.")
    with Simulator(SimulatorConfig()) as sim:
        result = run_one(backend(sim.url), request)
        assert sim.stats()["by_endpoint"] == {"completions": 1}
    assert result.ok and "comets" in result.text.lower()


def test_a_length_finish_is_passed_through_not_an_error():
    with Simulator(SimulatorConfig()) as sim:
        result = run_one(backend(sim.url), chat_request(max_tokens=3))
    assert result.ok and result.finish_reason == "length" and len(result.text.split()) == 3


def test_sampling_keys_map_to_the_body_and_unknown_or_unset_ones_are_dropped():
    request = LLMRequest(
        key="k",
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        sampling={
            "temperature": 0.0, "top_p": 0.6, "max_tokens": 500, "stop": ["\n\n"], "presence_penalty": 0.0,
            "frequency_penalty": 0.1, "seed": 3, "best_of": 4, "logit_bias": None,
        },
    )  # fmt: skip
    path, body = request_body(request)
    assert path == "chat/completions"
    assert body == {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.0, "top_p": 0.6,
        "max_tokens": 500, "stop": ["\n\n"], "presence_penalty": 0.0, "frequency_penalty": 0.1, "seed": 3,
    }  # fmt: skip


def test_token_estimate_is_a_quarter_of_the_characters_plus_max_tokens():
    request = LLMRequest(
        key="k", model="m", messages=[{"role": "user", "content": "x" * 400}], sampling={"max_tokens": 50}
    )
    assert estimate_tokens(request) == 150


def test_a_request_without_messages_or_prompt_fails_without_a_call():
    with Simulator(SimulatorConfig()) as sim:
        result = run_one(backend(sim.url), LLMRequest(key="empty", model="m"))
        assert sim.stats()["total"] == 0
    assert result.reason == "invalid_request" and not result.ok


# ----------------------------------------------------------------------------- retries
def test_429_is_retried_after_the_servers_retry_after():
    with Simulator(SimulatorConfig(rate_429=1.0, max_faults_per_body=1, retry_after_s=0.5)) as sim:
        result = run_one(backend(sim.url))
        stats = sim.stats()
    assert result.ok and result.attempts == 2
    assert result.latency_s >= 0.5  # backoff alone is at most 0.05 s here
    assert stats["faults"] == {"429": 1} and stats["total"] == 2


def test_503_retry_after_is_honoured():
    with Simulator(SimulatorConfig(retry_after_s=0.4)) as sim:
        start = time.monotonic()
        result = run_one(backend(sim.url, max_retries=1), chat_request(model="force-503"))
        elapsed = time.monotonic() - start
    assert result.reason == "http_503" and result.attempts == 2
    assert elapsed >= 0.4  # backoff alone is at most 0.05 s here


def test_429_pauses_the_other_requests_of_the_endpoint_too():
    limiter = RateLimiter(None, None)
    with Simulator(SimulatorConfig(rate_429=1.0, retry_after_s=0.6)) as sim:
        b = backend(sim.url, limiter=limiter, max_retries=0)
        assert run_one(b, chat_request(0)).reason == "http_429"  # penalizes the shared limiter
        sim.update(rate_429=0.0)
        start = time.monotonic()
        assert run_one(b, chat_request(1)).ok
        elapsed = time.monotonic() - start
    assert elapsed >= 0.45  # it waited out the pause before its first try


def test_429_after_the_retries_are_spent_is_reason_http_429():
    with Simulator(SimulatorConfig(rate_429=1.0, retry_after_s=0.01)) as sim:
        result = run_one(backend(sim.url, max_retries=2))
        assert sim.stats()["total"] == 3
    assert result.reason == "http_429" and result.attempts == 3 and not result.ok
    assert "429" in result.error


def test_500_is_retried_and_succeeds():
    with Simulator(SimulatorConfig(rate_500=1.0, max_faults_per_body=2)) as sim:
        result = run_one(backend(sim.url))
    assert result.ok and result.attempts == 3


def test_500_after_the_retries_are_spent_is_reason_http_500():
    with Simulator(SimulatorConfig(rate_500=1.0)) as sim:
        result = run_one(backend(sim.url, max_retries=1))
        assert sim.stats()["total"] == 2
    assert result.reason == "http_500" and result.attempts == 2 and result.text is None


def test_timeouts_are_retried_then_reason_timeout():
    with Simulator(SimulatorConfig(rate_timeout=1.0, timeout_sleep_s=5.0)) as sim:
        start = time.monotonic()
        result = run_one(backend(sim.url, timeout_s=0.2, max_retries=1))
        elapsed = time.monotonic() - start
        assert sim.stats()["faults"] == {"timeout": 2}
    assert result.reason == "timeout" and result.attempts == 2
    assert elapsed < 4.0  # did not sit out the server's 5 s hang


def test_malformed_bodies_are_retried_then_reason_malformed_response():
    with Simulator(SimulatorConfig(rate_malformed=1.0)) as sim:
        result = run_one(backend(sim.url, max_retries=2))
        assert sim.stats()["total"] == 3
    assert result.reason == "malformed_response" and result.attempts == 3


def test_connection_errors_are_retried_then_reason_connection():
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_one(backend(f"http://127.0.0.1:{port}/v1", max_retries=2))
    assert result.reason == "connection" and result.attempts == 3


@pytest.mark.parametrize(
    ("status", "attempts"),
    [(400, 1), (401, 1), (404, 1), (422, 1), (408, 3), (409, 3), (502, 3), (503, 3)],
)
def test_which_statuses_are_retried(status, attempts):
    with Simulator(SimulatorConfig(retry_after_s=0.01)) as sim:
        result = run_one(backend(sim.url, max_retries=2), chat_request(model=f"force-{status}"))
        assert sim.stats()["total"] == attempts
    assert result.reason == f"http_{status}" and result.attempts == attempts


def test_retry_after_parses_seconds_and_http_dates():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(formatdate(time.time() + 30, usegmt=True)) == pytest.approx(30, abs=1.5)
    assert parse_retry_after(formatdate(time.time() - 30, usegmt=True)) == 0.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("999999") == 900.0


# ----------------------------------------------------------------------------- concurrency and rates
def test_max_in_flight_bounds_what_the_server_sees():
    with Simulator(SimulatorConfig(latency_ms=40)) as sim:
        results = run(backend(sim.url, max_in_flight=4), [chat_request(i) for i in range(30)])
        stats = sim.stats()
    assert all(r.ok for r in results.values())
    assert stats["max_in_flight"] == 4


def test_requests_per_minute_pace_the_calls():
    limiter = RateLimiter(600, None)  # 10/s with a burst of 10
    with Simulator(SimulatorConfig()) as sim:
        start = time.monotonic()
        results = run(backend(sim.url, limiter=limiter), [chat_request(i) for i in range(20)])
        elapsed = time.monotonic() - start
    assert all(r.ok for r in results.values())
    assert 0.9 <= elapsed < 2.5  # 10 beyond the burst at 10/s


def test_threads_sharing_an_endpoint_limiter_share_its_budget():
    name = f"sim-{uuid.uuid4().hex}"
    with Simulator(SimulatorConfig()) as sim:
        shared = backend(sim.url, limiter=get_limiter(name, 1200, None))  # 20/s, burst 20
        private = backend(sim.url, limiter=get_limiter(name, 1200, None))  # same endpoint, other shard
        outcomes: list[bool] = []

        def shard(b: OpenAICompatBackend, offset: int) -> None:
            results = run(b, [chat_request(offset + i) for i in range(20)])
            outcomes.extend(r.ok for r in results.values())

        threads = [
            threading.Thread(target=shard, args=(b, 100 * t)) for t, b in enumerate((shared, shared, private))
        ]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - start
        assert sim.stats()["total"] == 60
    assert outcomes == [True] * 60
    assert elapsed >= 1.9  # 60 requests, 40 beyond the shared burst at 20/s


def test_threads_sharing_an_endpoint_in_flight_limit_stay_within_it():
    name = f"sim-{uuid.uuid4().hex}"
    slots = get_in_flight(name, 5)
    with Simulator(SimulatorConfig(latency_ms=40)) as sim:
        # each backend alone would allow 16 on the wire; the endpoint's budget is 5 for all of them
        shared = backend(sim.url, max_in_flight=16, in_flight=slots)
        other = backend(sim.url, max_in_flight=16, in_flight=get_in_flight(name, 5))
        outcomes: list[bool] = []

        def shard(b: OpenAICompatBackend, offset: int) -> None:
            results = run(b, [chat_request(offset + i) for i in range(25)])
            outcomes.extend(r.ok for r in results.values())

        threads = [
            threading.Thread(target=shard, args=(b, 100 * t)) for t, b in enumerate((shared, shared, other))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        stats = sim.stats()
    assert outcomes == [True] * 75 and stats["total"] == 75
    assert stats["max_in_flight"] <= 5
    assert stats["max_in_flight"] >= 3  # the shards did overlap (one shard alone reaches 5)
    assert (slots.in_use, slots.waiting) == (0, 0)


def test_a_run_that_fails_midway_gives_back_every_shared_slot():
    slots = InFlightLimit(3)

    def explode(result: LLMResult) -> None:
        raise OSError("checkpoint write failed")

    with Simulator(SimulatorConfig(latency_ms=20)) as sim, pytest.raises(OSError, match="checkpoint"):
        backend(sim.url, in_flight=slots).run([chat_request(i) for i in range(20)], explode)
    assert (slots.in_use, slots.waiting) == (0, 0)


def test_run_works_when_called_from_inside_an_event_loop():
    with Simulator(SimulatorConfig()) as sim:
        b = backend(sim.url)

        async def caller() -> LLMResult:
            return run_one(b)

        assert asyncio.run(caller()).ok


def test_an_error_in_on_result_propagates_to_the_caller():
    def explode(result: LLMResult) -> None:
        raise OSError("checkpoint write failed")

    with Simulator(SimulatorConfig()) as sim, pytest.raises(OSError, match="checkpoint"):
        backend(sim.url).run([chat_request(i) for i in range(5)], explode)


# ----------------------------------------------------------------------------- keys
def test_the_key_is_sent_as_a_bearer_token():
    with Simulator(SimulatorConfig(api_key=SECRET)) as sim:
        assert run_one(backend(sim.url, api_key=SECRET)).ok
        assert sim.stats()["with_auth"] == 1


def test_no_authorization_header_without_a_key():
    with Simulator(SimulatorConfig()) as sim:
        assert run_one(backend(sim.url)).ok
        assert sim.stats()["with_auth"] == 0


def test_the_key_never_appears_in_results_errors_reprs_or_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="ultrafeedback.infra.llm.openai_compat")
    with Simulator(SimulatorConfig(api_key="sk-the-right-one")) as sim:
        b = backend(sim.url, api_key=SECRET, max_retries=0)
        result = run_one(b)
    assert result.reason == "http_401"
    assert "Incorrect API key provided: ***" in result.error  # the server echoed it; we scrubbed it
    for text in (result.error, repr(result), repr(b), str(vars(b)), caplog.text):
        assert SECRET not in text


def test_backend_from_endpoint_reads_the_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("UF_TEST_KEY", SECRET)
    with Simulator(SimulatorConfig(api_key=SECRET)) as sim:
        endpoint = Endpoint(
            base_url=sim.url, api_key_env="UF_TEST_KEY", requests_per_minute=6000, max_in_flight=3
        )
        b = backend_from_endpoint(f"ep-{uuid.uuid4().hex}", endpoint)
        assert run_one(b).ok
    assert b.max_in_flight == 3 and b.limiter.requests_per_minute == 6000
    assert SECRET not in repr(b)


def test_backends_of_one_endpoint_share_its_in_flight_limit():
    name = f"ep-{uuid.uuid4().hex}"
    first = backend_from_endpoint(name, Endpoint(base_url="http://127.0.0.1:9/v1", max_in_flight=3))
    second = backend_from_endpoint(name, Endpoint(base_url="http://127.0.0.1:9/v1", max_in_flight=3))
    other = backend_from_endpoint(f"{name}-other", Endpoint(base_url="http://127.0.0.1:9/v1", max_in_flight=3))
    assert first.in_flight is second.in_flight is get_in_flight(name, 3)
    assert other.in_flight is not first.in_flight
    resized = backend_from_endpoint(name, Endpoint(base_url="http://127.0.0.1:9/v1", max_in_flight=7))
    assert resized.in_flight is first.in_flight and first.in_flight.limit == 7


def test_backend_from_endpoint_names_the_missing_variable(monkeypatch):
    monkeypatch.delenv("UF_TEST_MISSING_KEY", raising=False)
    endpoint = Endpoint(base_url="http://127.0.0.1:9/v1", api_key_env="UF_TEST_MISSING_KEY")
    with pytest.raises(MissingAPIKeyError, match="UF_TEST_MISSING_KEY"):
        backend_from_endpoint("openai", endpoint)


def test_backend_from_endpoint_reads_a_prefect_secret_block(monkeypatch):
    from prefect.blocks.system import Secret

    loaded: list[str] = []

    def fake_load(name: str, *args, **kwargs) -> Secret:
        loaded.append(name)
        return Secret(value=SECRET)

    monkeypatch.setattr(Secret, "load", fake_load)
    with Simulator(SimulatorConfig(api_key=SECRET)) as sim:
        b = backend_from_endpoint("ep-block", Endpoint(base_url=sim.url, api_key_block="openai-key"))
        assert run_one(b).ok
    assert loaded == ["openai-key"]


def test_backend_from_endpoint_names_the_missing_block(monkeypatch):
    from prefect.blocks.system import Secret

    def fake_load(name: str, *args, **kwargs) -> Secret:
        raise ValueError(f"Unable to find block document named {name}")

    monkeypatch.setattr(Secret, "load", fake_load)
    with pytest.raises(MissingAPIKeyError, match="openai-key"):
        backend_from_endpoint(
            "ep-block", Endpoint(base_url="http://127.0.0.1:9/v1", api_key_block="openai-key")
        )


def test_an_endpoint_without_a_key_source_sends_no_key():
    b = backend_from_endpoint("local-vllm", Endpoint(base_url="http://127.0.0.1:9/v1"))
    assert "api_key=None" in repr(b)


# ----------------------------------------------------------------------------- one loop for every shard thread
def _in_threads(*targets) -> None:
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)


@pytest.fixture
def attempts(monkeypatch) -> list[tuple[float, str]]:
    """(time.monotonic(), model) of every attempt the backends start, seen on the client side.

    The server's counts lag behind: a request written just before a cancellation is counted when
    the server gets to it, so "nothing was sent after" is judged here."""
    started: list[tuple[float, str]] = []
    original = OpenAICompatBackend._attempt

    async def spy(self, session, url, payload, chat):
        started.append((time.monotonic(), json.loads(payload)["model"]))
        return await original(self, session, url, payload, chat)

    monkeypatch.setattr(OpenAICompatBackend, "_attempt", spy)
    return started


def _sent(attempts: list[tuple[float, str]], model: str, before: float = float("inf")) -> int:
    return sum(1 for at, name in attempts if name == model and at < before)


def test_runs_from_several_threads_share_one_loop_and_on_result_runs_in_each_caller(monkeypatch):
    attempts: list[tuple[asyncio.AbstractEventLoop, threading.Thread]] = []
    original = OpenAICompatBackend._attempt

    async def spy(self, *args):
        attempts.append((asyncio.get_running_loop(), threading.current_thread()))
        return await original(self, *args)

    monkeypatch.setattr(OpenAICompatBackend, "_attempt", spy)
    delivered: dict[int, set[int]] = {}
    with Simulator(SimulatorConfig(latency_ms=20)) as sim:
        shared = backend(sim.url)
        other = backend(sim.url, name="other")

        def shard(b: OpenAICompatBackend, offset: int) -> None:
            threads: set[int] = set()
            results = []

            def on_result(result: LLMResult) -> None:
                threads.add(threading.get_ident())
                results.append(result)

            b.run([chat_request(offset + i) for i in range(10)], on_result)
            assert len(results) == 10 and all(r.ok for r in results)
            delivered[threading.get_ident()] = threads

        _in_threads(*(lambda b=b, t=t: shard(b, 100 * t) for t, b in enumerate((shared, shared, other, other))))
    assert len(attempts) == 40
    assert {id(loop) for loop, _ in attempts} == {id(io_loop.get_loop())}
    assert len({thread for _, thread in attempts}) == 1
    (loop_thread,) = {thread for _, thread in attempts}
    assert len(delivered) == 4
    for caller, threads in delivered.items():
        assert threads == {caller} and caller != loop_thread.ident


def test_the_endpoint_budgets_hold_across_shard_threads_and_backends():
    name = f"ep-{uuid.uuid4().hex}"
    endpoint = Endpoint(base_url="http://127.0.0.1:9/v1", max_in_flight=4, requests_per_minute=2400)
    with Simulator(SimulatorConfig(latency_ms=30)) as sim:
        endpoint = endpoint.model_copy(update={"base_url": sim.url})
        backends = [backend_from_endpoint(name, endpoint) for _ in range(3)]
        outcomes: list[bool] = []

        def shard(b: OpenAICompatBackend, offset: int) -> None:
            results = run(b, [chat_request(offset + i) for i in range(20)])
            outcomes.extend(r.ok for r in results.values())

        start = time.monotonic()
        _in_threads(*(lambda b=b, t=t: shard(b, 100 * t) for t, b in enumerate(backends + backends)))
        elapsed = time.monotonic() - start
        stats = sim.stats()
    assert outcomes == [True] * 120 and stats["total"] == 120
    assert 3 <= stats["max_in_flight"] <= 4  # six shard threads, one budget of four on the wire
    assert elapsed >= 1.9  # 120 requests, 80 beyond the burst of 40 at 40/s
    slots = get_in_flight(name, 4)
    assert (slots.in_use, slots.waiting) == (0, 0)


def test_a_raising_on_result_cancels_only_its_own_run(attempts):
    slots = InFlightLimit(4)
    with Simulator(SimulatorConfig(latency_ms=40)) as sim:
        b = backend(sim.url, in_flight=slots)
        outcome: dict[str, object] = {}

        def failing() -> None:
            def explode(result: LLMResult) -> None:
                raise OSError("checkpoint write failed")

            started = time.monotonic()
            try:
                b.run([chat_request(i, model="model-a") for i in range(200)], explode)
            except OSError as exc:
                outcome["error"] = exc
            outcome["raised_at"] = time.monotonic()
            outcome["failing_s"] = outcome["raised_at"] - started

        def steady() -> None:
            outcome["steady"] = run(b, [chat_request(100 + i, model="model-b") for i in range(40)])

        _in_threads(failing, steady)
        time.sleep(0.2)
        stats = sim.stats()
    assert isinstance(outcome["error"], OSError)
    assert outcome["failing_s"] < 1.0  # it did not sit out the other 199 (>= 2 s at 4 in flight)
    assert all(r.ok for r in outcome["steady"].values()) and len(outcome["steady"]) == 40
    assert stats["by_model"]["model-b"] == 40
    sent_a = _sent(attempts, "model-a")
    assert sent_a == _sent(attempts, "model-a", before=outcome["raised_at"]) < 40  # none sent after it raised
    assert stats["by_model"]["model-a"] <= sent_a
    assert (slots.in_use, slots.waiting) == (0, 0)


def test_an_interrupt_while_run_waits_cancels_its_requests_and_others_go_on(attempts):
    import _thread

    slots = InFlightLimit(5)
    with Simulator(SimulatorConfig(latency_ms=200)) as sim:
        interrupted = backend(sim.url, in_flight=slots)
        other = backend(sim.url, name="other", max_in_flight=5)
        others: dict[str, LLMResult] = {}
        worker = threading.Thread(
            target=lambda: others.update(run(other, [chat_request(100 + i, model="model-b") for i in range(20)]))
        )
        worker.start()
        timer = threading.Timer(0.3, _thread.interrupt_main)
        got: list[LLMResult] = []
        timer.start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            interrupted.run([chat_request(i, model="model-a") for i in range(50)], got.append)
        raised_at = time.monotonic()
        elapsed = raised_at - start
        worker.join(timeout=30)
        stats = sim.stats()
    assert elapsed < 1.5  # 50 requests at 5 in flight would take 2 s
    sent = _sent(attempts, "model-a")
    assert sent == _sent(attempts, "model-a", before=raised_at) < 50  # nothing sent after the interrupt
    assert stats["by_model"]["model-a"] <= sent and len(got) < sent
    assert len(others) == 20 and all(r.ok for r in others.values())  # the loop served the other run on
    assert (slots.in_use, slots.waiting) == (0, 0)


def test_the_base_urls_session_and_its_connections_are_reused_across_runs():
    import psutil

    def client_ports(port: int) -> set[int]:
        return {
            c.laddr.port
            for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
        }

    with Simulator(SimulatorConfig(latency_ms=10)) as sim:
        first, second = backend(sim.url, max_in_flight=3), backend(sim.url, name="other", max_in_flight=3)
        assert all(r.ok for r in run(first, [chat_request(i) for i in range(12)]).values())
        session = io_loop.open_sessions()[sim.url]
        ports = client_ports(sim.port)
        assert 1 <= len(ports) <= 3
        assert all(r.ok for r in run(second, [chat_request(i) for i in range(12)]).values())
        assert all(r.ok for r in run(first, [chat_request(i) for i in range(12)]).values())
        assert io_loop.open_sessions()[sim.url] is session and not session.closed
        assert client_ports(sim.port) == ports  # the same keep-alive connections, no new ones


def test_backends_with_different_keys_share_the_session_and_send_their_own_key():
    with Simulator(SimulatorConfig(api_key=SECRET)) as sim:
        right, wrong = backend(sim.url, api_key=SECRET), backend(sim.url, api_key="sk-wrong", max_retries=0)
        assert run_one(right).ok
        assert run_one(wrong).reason == "http_401"
        assert run_one(right).ok
        assert sim.stats()["with_auth"] == 3
        assert list(io_loop.open_sessions()).count(sim.url) == 1


def test_close_retires_the_session_and_a_later_run_opens_a_fresh_one():
    with Simulator(SimulatorConfig()) as sim:
        b = backend(sim.url)
        assert run_one(b).ok
        session = io_loop.open_sessions()[sim.url]
        b.close()
        deadline = time.monotonic() + 5
        while not session.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert session.closed
        assert run_one(b).ok
        assert io_loop.open_sessions()[sim.url] is not session


def test_runs_go_on_after_the_loop_is_shut_down():
    with Simulator(SimulatorConfig()) as sim:
        b = backend(sim.url)
        assert run_one(b).ok
        before = io_loop.get_loop()
        io_loop.shutdown()
        assert before.is_closed()
        assert run_one(b).ok
        assert io_loop.get_loop() is not before


def test_a_forked_child_runs_requests_though_the_parent_held_the_endpoints_slots():
    slots = InFlightLimit(2)
    with Simulator(SimulatorConfig(latency_ms=300)) as sim:
        b = backend(sim.url, in_flight=slots)
        parent: dict[str, LLMResult] = {}
        worker = threading.Thread(target=lambda: parent.update(run(b, [chat_request(i) for i in range(4)])))
        worker.start()
        deadline = time.monotonic() + 5
        while slots.in_use < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert slots.in_use == 2  # the parent's loop holds both of the endpoint's slots

        def child() -> dict:
            results = run(b, [chat_request(100 + i) for i in range(3)])
            return {"ok": sorted(r.ok for r in results.values()), "loop_thread": threading.get_ident()}

        answer = fork_and_report(child)
        worker.join(timeout=30)
    assert answer.get("error") is None, answer
    assert answer["ok"] == [True, True, True]
    assert len(parent) == 4 and all(r.ok for r in parent.values())
    assert (slots.in_use, slots.waiting) == (0, 0)


def test_arun_delivers_on_the_callers_loop_while_the_requests_run_on_the_io_loop():
    with Simulator(SimulatorConfig(latency_ms=10)) as sim:
        b = backend(sim.url)
        threads: set[int] = set()
        results: list[LLMResult] = []

        def on_result(result: LLMResult) -> None:
            asyncio.get_running_loop()  # we are on the caller's loop
            threads.add(threading.get_ident())
            results.append(result)

        async def caller() -> None:
            await b.arun([chat_request(i) for i in range(8)], on_result)

        asyncio.run(caller())
    assert len(results) == 8 and all(r.ok for r in results)
    assert threads == {threading.get_ident()}


def test_cancelling_arun_cancels_its_requests(attempts):
    slots = InFlightLimit(2)
    with Simulator(SimulatorConfig(latency_ms=200)) as sim:
        b = backend(sim.url, in_flight=slots)

        async def caller() -> None:
            task = asyncio.ensure_future(b.arun([chat_request(i) for i in range(20)], lambda r: None))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        start = time.monotonic()
        asyncio.run(caller())
        returned_at = time.monotonic()
        time.sleep(0.3)
    assert returned_at - start < 1.5  # 20 requests at 2 in flight would take 2 s
    assert len(attempts) == _sent(attempts, "sim-model", before=returned_at) <= 2  # none after it
    assert (slots.in_use, slots.waiting) == (0, 0)


def test_run_on_the_io_loop_thread_is_refused_and_arun_works_there():
    with Simulator(SimulatorConfig()) as sim:
        b = backend(sim.url)

        async def on_the_loop() -> tuple[str, int]:
            try:
                b.run([chat_request()], lambda r: None)
            except RuntimeError as exc:
                refused = str(exc)
            else:
                refused = ""
            results: list[LLMResult] = []
            await b.arun([chat_request(i) for i in range(3)], results.append)
            return refused, sum(r.ok for r in results)

        job = io_loop.submit(on_the_loop())
        assert job.wait(10)
        refused, ok = job.result()
    assert "await arun()" in refused and ok == 3


# ----------------------------------------------------------------------------- stopping (infra.stop)
@pytest.fixture
def stopping():
    """The stop switch with a grace period; turned off again after the test."""
    from ultrafeedback.infra import stop

    grace = stop.grace_s()
    yield stop
    stop.reset()
    stop.configure(grace)


def _run_in_thread(b: OpenAICompatBackend, requests: list[LLMRequest]) -> tuple[threading.Thread, dict]:
    outcome: dict = {"results": []}

    def target() -> None:
        try:
            b.run(requests, outcome["results"].append)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize(("grace", "answered"), [(3.0, 2), (0.0, 0)], ids=["grace", "no grace"])
def test_a_stop_sends_nothing_more_and_keeps_the_answers_that_arrive_within_the_grace(stopping, grace, answered):
    with Simulator(SimulatorConfig(seed=5, latency_ms=400)) as sim:
        b = backend(sim.url, max_in_flight=2)
        thread, outcome = _run_in_thread(b, [chat_request(i) for i in range(6)])
        _wait_for(lambda: sim.stats()["in_flight"] == 2)
        stopping.configure(grace)
        stopping.request("test")
        thread.join(5)
        assert not thread.is_alive()
        stats = sim.stats()
    assert stats["total"] == 2  # the two on the wire; the four waiting for a slot never went out
    assert len(outcome["results"]) == answered and all(r.ok for r in outcome["results"])
    error = outcome["error"]
    assert isinstance(error, stopping.Stopped) and error.unsent == 4


def test_a_stop_ends_a_retry_backoff_at_once(stopping):
    with Simulator(SimulatorConfig(seed=5, rate_500=1.0)) as sim:
        b = backend(sim.url, backoff_base_s=30.0, backoff_max_s=30.0, max_retries=5)
        thread, outcome = _run_in_thread(b, [chat_request(0)])
        _wait_for(lambda: sim.stats()["total"] == 1 and sim.stats()["in_flight"] == 0)
        time.sleep(0.05)  # in its backoff now
        started = time.monotonic()
        stopping.request("test")
        thread.join(5)
        assert time.monotonic() - started < 2
        assert sim.stats()["total"] == 1
    assert outcome["results"] == [] and outcome["error"].unsent == 0  # sent once, never answered


def test_a_run_that_starts_after_the_stop_sends_nothing(stopping):
    with Simulator(SimulatorConfig(seed=5)) as sim:
        stopping.request("test")
        with pytest.raises(stopping.Stopped) as err:
            backend(sim.url).run([chat_request(i) for i in range(3)], lambda result: None)
        assert err.value.unsent == 3 and sim.stats()["total"] == 0
