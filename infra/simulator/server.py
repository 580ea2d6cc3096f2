"""The simulator's aiohttp server, its test handle ``Simulator`` and the ``simulate`` CLI entry.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /stats`` and ``POST /stats/reset``; the Files and Batch APIs (``/v1/files``, ``/v1/batches``,
``GET /stats/batches``) are in ``infra.simulator.batches``.

Faults are decided per request by an RNG seeded with (seed, sha256 of the body, how many times
this exact body was seen before), so a run is reproducible and a retried request can succeed.
Two test hooks sit beside the random faults: a model named ``force-<code>`` (``force-400``)
always gets that HTTP status (with ``Retry-After`` for 429 and 503), and a wrong API key (when
``api_key`` is set) gets a 401 whose message echoes the presented key verbatim, as careless
proxies do, so tests can check that clients keep keys out of their errors.

``/stats`` (and ``Simulator.stats()``) holds: ``total`` requests received (faulted ones included),
``by_kind`` (generation, judge_aspect, critique, invalid), ``by_model``, ``by_endpoint`` (chat,
completions), ``faults`` by type (``429``, ``500``, ``timeout``, ``malformed``, ``unparseable``,
``forced_<code>``, ``auth``), ``statuses`` answered (499: the client left first), ``with_auth``,
``prompt_tokens``, ``completion_tokens``, ``in_flight`` and the ``max_in_flight`` observed. Usage is
counted in whitespace words unless ``usage_tokenizer`` names a tokenizer (``infra.llm.tokens``: then
as OpenAI bills, message overhead included).

Latency is ``asyncio.sleep``, so concurrency is real; the handlers stay cheap (one JSON parse,
one hash, a small lock) so one core serves about a thousand requests a second.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ultrafeedback.infra.simulator import batches, content
from ultrafeedback.infra.simulator.config import SimulatorConfig

__all__ = ["Simulator", "SimulatorConfig", "build_app", "main", "serve_forever"]

_FORCED = re.compile(r"force-(\d{3})")
_SHUTDOWN_TIMEOUT_S = 0.5


class _State:
    """Counters and the per-body sighting counts; read from other threads, hence the lock."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.batch = batches.BatchState()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.total = 0
            self.by_kind: Counter[str] = Counter()
            self.by_model: Counter[str] = Counter()
            self.by_endpoint: Counter[str] = Counter()
            self.faults: Counter[str] = Counter()
            self.statuses: Counter[str] = Counter()
            self.with_auth = 0
            self.prompt_tokens = 0
            self.completion_tokens = 0
            self.in_flight = 0
            self.max_in_flight = 0
            self.seen: dict[bytes, int] = {}
            self.bodies: dict[str, list[list[float | int | None]]] = {}
            """body SHA-256 (hex) -> [came, answered (None while in flight), HTTP status] per request"""
            self.batch.reset()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "total": self.total,
                "by_kind": dict(self.by_kind),
                "by_model": dict(self.by_model),
                "by_endpoint": dict(self.by_endpoint),
                "faults": dict(self.faults),
                "statuses": dict(self.statuses),
                "with_auth": self.with_auth,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
            }


_STATE_KEY: web.AppKey[_State] = web.AppKey("simulator_state")


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def _fault_rng(seed: int, digest: bytes, sighting: int) -> random.Random:
    blob = hashlib.sha256(f"{seed}:{sighting}:".encode() + digest).digest()
    return random.Random(int.from_bytes(blob[:8], "big"))


def _user_text(body: dict[str, Any]) -> tuple[str, str, int]:
    """(last user message or prompt, system message, whitespace words of the whole input)."""
    if "messages" in body:
        user = system = ""
        words = 0
        for message in body["messages"]:
            text = message.get("content") or ""
            if not isinstance(text, str):  # content parts: keep the text ones
                text = " ".join(p.get("text", "") for p in text if isinstance(p, dict))
            words += len(text.split())
            if message.get("role") == "user":
                user = text
            elif message.get("role") == "system":
                system = text
        return user, system, words
    prompt = body["prompt"]
    if isinstance(prompt, list):
        prompt = "\n".join(str(p) for p in prompt)
    return prompt, "", len(prompt.split())


def _usage(state: _State, body: dict[str, Any], text: str) -> dict[str, int]:
    """The usage of one answer (words, or ``usage_tokenizer``'s tokens), added to the counters."""
    from ultrafeedback.infra.llm import tokens

    name = state.config.usage_tokenizer
    prompt = tokens.count_request(body.get("messages"), body.get("prompt"), name)
    completion = tokens.count_text(text, name)
    with state.lock:
        state.prompt_tokens += prompt
        state.completion_tokens += completion
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _validate(body: Any, chat: bool) -> str | None:
    """Why a request body is not a valid request (None when it is)."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "`model` is required"
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return "`messages` must be a non-empty list of objects"
    elif not isinstance(body.get("prompt"), str | list):
        return "`prompt` is required"
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        return "`max_tokens` must be a positive integer"
    return None


async def _completion(request: web.Request, chat: bool) -> web.Response:
    state = request.app[_STATE_KEY]
    config = state.config
    raw = await request.read()
    entry: list[float | int | None] | None = None
    with state.lock:
        state.total += 1
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        state.by_endpoint["chat" if chat else "completions"] += 1
        if config.record_bodies:
            entry = [time.time(), None, None]
            state.bodies.setdefault(hashlib.sha256(raw).hexdigest(), []).append(entry)
    status = 200
    try:
        response = await _answer(request, state, config, raw, chat)
        status = response.status
        if entry is not None:  # written to the socket once this returns: as close as a handler sees
            await response.prepare(request)
            await response.write_eof()
        return response
    except asyncio.CancelledError:
        status = 499  # the client went away (e.g. its timeout) while we were sleeping
        raise
    finally:
        with state.lock:
            state.in_flight -= 1
            state.statuses[str(status)] += 1
            if entry is not None:
                entry[1], entry[2] = time.time(), status


async def _answer(request: web.Request, state: _State, config: SimulatorConfig, raw: bytes, chat: bool) -> web.Response:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    problem = _validate(body, chat) if body is not None else "the body is not valid JSON"
    if problem is not None:
        with state.lock:
            state.by_kind["invalid"] += 1
        return _error(400, problem, "invalid_request_error")
    model: str = body["model"]
    user, system, _ = _user_text(body)
    kind, aspect = content.classify(user)
    auth = request.headers.get("Authorization")
    digest = hashlib.sha256(raw).digest()
    with state.lock:
        state.by_kind[kind] += 1
        state.by_model[model] += 1
        state.with_auth += auth is not None
        sighting = state.seen.get(digest, 0)
        state.seen[digest] = sighting + 1

    if config.api_key is not None and auth != f"Bearer {config.api_key}":
        presented = (auth or "").removeprefix("Bearer ")
        with state.lock:
            state.faults["auth"] += 1
        return _error(401, f"Incorrect API key provided: {presented or '(none)'}", "invalid_api_key")
    forced = _FORCED.fullmatch(model)
    if forced:
        code = int(forced.group(1))
        with state.lock:
            state.faults[f"forced_{code}"] += 1
        headers = {"Retry-After": f"{config.retry_after_s:g}"} if code in (429, 503) else None
        return _error(code, f"forced status {code} for model {model!r}", "forced_error", headers)

    rng = _fault_rng(config.seed, digest, sighting)
    faults_allowed = config.max_faults_per_body is None or sighting < config.max_faults_per_body
    draw = rng.random()
    fault = None
    if faults_allowed:
        for name, rate in (
            ("429", config.rate_429),
            ("500", config.rate_500),
            ("timeout", config.rate_timeout),
            ("malformed", config.rate_malformed),
        ):
            if draw < rate:
                fault = name
                break
            draw -= rate
    unparseable = faults_allowed and kind != "generation" and rng.random() < config.rate_unparseable
    if fault is not None:
        with state.lock:
            state.faults[fault] += 1
    if fault == "429":
        retry_after = f"{config.retry_after_s:g}"
        return _error(429, "rate limit exceeded (simulated)", "rate_limit_error", {"Retry-After": retry_after})

    delay_ms = config.latency_ms
    if config.jitter_ms:
        delay_ms += rng.uniform(-config.jitter_ms, config.jitter_ms)
    if delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000.0)
    if fault == "500":
        return _error(500, "internal server error (simulated)", "server_error")
    if fault == "timeout":
        await asyncio.sleep(config.timeout_sleep_s)
    if fault == "malformed":
        return web.Response(
            status=200,
            text='{"id": "cmpl-sim", "choices": [{"index": 0, "mess',
            content_type="application/json",
        )

    payload = reply_payload(state, body, (kind, aspect, user, system), digest, rng, unparseable, chat)
    return web.Response(body=json.dumps(payload).encode(), content_type="application/json")


def reply_payload(
    state: _State,
    body: dict[str, Any],
    request: tuple[str, str | None, str, str],
    digest: bytes,
    rng: random.Random,
    unparseable: bool,
    chat: bool,
) -> dict[str, Any]:
    """The 200 body answering ``body`` (``request``: its kind, aspect, user and system text): the
    deterministic content, broken when ``unparseable``, with its usage counted. The online
    endpoints and the Batch API's lines answer with it."""
    kind, aspect, user, system = request
    seed, model = state.config.seed, str(body["model"])
    finish = "stop"
    if kind == "judge_aspect":
        assert aspect is not None
        text = content.judge_reply(aspect, content.judge_texts(user), seed, model)
        if unparseable:
            text = content.break_judge_reply(text, rng)
    elif kind == "critique":
        text = content.critique_reply(user, seed, model)
        if unparseable:
            text = content.break_critique_reply(text, rng)
    else:
        text, finish = content.generation_reply(user, system, seed, model, body.get("max_tokens"))
    if unparseable:
        with state.lock:
            state.faults["unparseable"] += 1
    usage = _usage(state, body, text)
    ident = digest[:12].hex()
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        payload = {"id": f"chatcmpl-{ident}", "object": "chat.completion", "model": model}
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        payload = {"id": f"cmpl-{ident}", "object": "text_completion", "model": model}
    payload.update(created=int(time.time()), choices=[choice], usage=usage)
    return payload


async def _chat(request: web.Request) -> web.Response:
    return await _completion(request, chat=True)


async def _text(request: web.Request) -> web.Response:
    return await _completion(request, chat=False)


async def _models(request: web.Request) -> web.Response:
    state = request.app[_STATE_KEY]
    with state.lock:
        names = sorted(state.by_model) or ["simulator"]
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "simulator"} for name in names]
    return web.json_response({"object": "list", "data": data})


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[_STATE_KEY].snapshot())


async def _stats_bodies(request: web.Request) -> web.Response:
    """Per request body: [came, answered, status] of every request with it (``record_bodies``)."""
    state = request.app[_STATE_KEY]
    with state.lock:
        bodies = {digest: [list(entry) for entry in entries] for digest, entries in state.bodies.items()}
    return web.json_response({"record_bodies": state.config.record_bodies, "bodies": bodies})


async def _stats_reset(request: web.Request) -> web.Response:
    request.app[_STATE_KEY].reset()
    return web.json_response({"ok": True})


def build_app(config: SimulatorConfig) -> web.Application:
    """The aiohttp application (state in ``app[_STATE_KEY]``); for embedding in other servers."""
    app = web.Application(client_max_size=64 * 1024**2)
    app[_STATE_KEY] = _State(config)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/completions", _text)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/stats", _stats)
    app.router.add_get("/stats/bodies", _stats_bodies)
    app.router.add_post("/stats/reset", _stats_reset)
    batches.add_routes(app)
    return app


async def _start(config: SimulatorConfig) -> tuple[web.AppRunner, _State, int]:
    app = build_app(config)
    # handler_cancellation: a client that gave up (its timeout) frees the handler at once;
    # access_log=None: logging every request costs more than answering it
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024, reuse_address=True)
    await site.start()
    sockets = runner.addresses
    port = int(sockets[0][1]) if sockets else config.port
    return runner, app[_STATE_KEY], port


def _base(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class Simulator:
    """The simulator on a background thread with its own loop, for tests and benchmarks.

    >>> with Simulator(SimulatorConfig(latency_ms=5)) as sim:   # doctest: +SKIP
    ...     sim.url        # "http://127.0.0.1:PORT/v1", the backend's base_url
    ...     sim.stats()    # the /stats document
    """

    def __init__(self, config: SimulatorConfig | None = None, **overrides: Any) -> None:
        base = config or SimulatorConfig()
        self.config = SimulatorConfig.model_validate({**base.model_dump(), **overrides}) if overrides else base
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._state: _State | None = None

    @property
    def root_url(self) -> str:
        """``http://host:port`` (where ``/stats`` lives)."""
        if self.port is None:
            raise RuntimeError("the simulator is not running")
        return _base(self.config.host, self.port)

    @property
    def url(self) -> str:
        """The OpenAI base URL, ``http://host:port/v1``."""
        return f"{self.root_url}/v1"

    def start(self) -> Simulator:
        """Start serving; returns once the port is bound (raises if it cannot be)."""
        if self._thread is not None:
            raise RuntimeError("the simulator is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._runner, self._state, self.port = loop.run_until_complete(_start(self.config))
            except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name="ultrafeedback-simulator", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = self._loop = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop serving and join the thread; open connections are closed, hung handlers cancelled."""
        if self._thread is None or self._loop is None:
            return
        if self._runner is not None:
            future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            try:
                future.result(timeout=_SHUTDOWN_TIMEOUT_S + 10)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = self._loop = self._runner = None
        self.port = None

    def stats(self) -> dict[str, Any]:
        """Counters since start or the last reset (the same document as ``GET /stats``)."""
        if self._state is None:
            raise RuntimeError("the simulator was never started")
        return self._state.snapshot()

    def batch_stats(self) -> dict[str, Any]:
        """The Batch API's counters (``GET /stats/batches``): batches by status, lines answered, and
        how many times each ``custom_id`` went into a created batch."""
        if self._state is None:
            raise RuntimeError("the simulator was never started")
        with self._state.lock:
            return self._state.batch.snapshot()

    def reset(self) -> None:
        """Zero the counters and forget which bodies were seen (fault draws start over)."""
        if self._state is not None:
            self._state.reset()

    def update(self, **changes: Any) -> None:
        """Change settings while running (fault rates, latency); host and port stay as they are."""
        config = SimulatorConfig.model_validate({**self.config.model_dump(), **changes})
        self.config = config
        if self._state is not None:
            self._state.config = config

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_forever(config: SimulatorConfig, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve in the foreground until Ctrl-C or SIGTERM; ``on_ready`` gets the base URL (``.../v1``)."""

    async def run() -> None:
        runner, _, port = await _start(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass
        try:
            if on_ready is not None:
                on_ready(f"{_base(config.host, port)}/v1")
            await stop.wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


def _parser() -> argparse.ArgumentParser:
    defaults = SimulatorConfig()
    parser = argparse.ArgumentParser(
        prog="ultrafeedback simulate",
        description="Run the OpenAI-compatible simulator (deterministic answers, latency, faults).",
    )
    parser.add_argument("--host", default=defaults.host, help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default %(default)s)")
    parser.add_argument("--latency-ms", type=float, default=defaults.latency_ms)
    parser.add_argument("--jitter-ms", type=float, default=defaults.jitter_ms)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    for name in ("429", "500", "timeout", "malformed", "unparseable"):
        parser.add_argument(f"--rate-{name}", type=float, default=0.0, help="probability 0..1")
    parser.add_argument("--retry-after-s", type=float, default=defaults.retry_after_s)
    parser.add_argument("--timeout-sleep-s", type=float, default=defaults.timeout_sleep_s)
    parser.add_argument(
        "--max-faults-per-body",
        type=int,
        default=None,
        help="answer a repeated body cleanly after this many faults",
    )
    parser.add_argument("--api-key", default=None, help="require this bearer key (a test key, never a real one)")
    parser.add_argument(
        "--usage-tokenizer",
        default=defaults.usage_tokenizer,
        help="count usage with this tokenizer (o200k_base, cl100k_base, approx) instead of words",
    )
    parser.add_argument(
        "--batch-delay-s", type=float, default=defaults.batch_delay_s, help="Batch API: seconds to complete a batch"
    )
    parser.add_argument("--batch-line-error-rate", type=float, default=0.0, help="Batch API: failed lines, 0..1")
    parser.add_argument("--batch-expire-first", type=int, default=0, help="Batch API: the first N batches expire")
    parser.add_argument(
        "--record-bodies",
        action="store_true",
        help="keep when each request body came and was answered (GET /stats/bodies)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``ultrafeedback simulate``: print the base URL, serve until Ctrl-C; 0 on a clean stop."""
    args = _parser().parse_args(argv)
    try:
        config = SimulatorConfig(
            host=args.host,
            port=args.port,
            latency_ms=args.latency_ms,
            jitter_ms=args.jitter_ms,
            seed=args.seed,
            rate_429=args.rate_429,
            rate_500=args.rate_500,
            rate_timeout=args.rate_timeout,
            rate_malformed=args.rate_malformed,
            rate_unparseable=args.rate_unparseable,
            retry_after_s=args.retry_after_s,
            timeout_sleep_s=args.timeout_sleep_s,
            max_faults_per_body=args.max_faults_per_body,
            api_key=args.api_key,
            record_bodies=args.record_bodies,
            usage_tokenizer=args.usage_tokenizer,
            batch_delay_s=args.batch_delay_s,
            batch_line_error_rate=args.batch_line_error_rate,
            batch_expire_first=args.batch_expire_first,
        )
    except ValueError as exc:
        print(f"simulate: invalid settings: {exc}", file=sys.stderr)
        return 2

    def ready(url: str) -> None:
        print(f"OpenAI-compatible simulator serving at {url} (Ctrl-C to stop)", flush=True)

    try:
        serve_forever(config, on_ready=ready)
    except OSError as exc:
        print(f"simulate: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
