"""The OpenAI-compatible HTTP backend: OpenAI, vLLM's ``vllm serve``, any proxy speaking that API.

A shard calls ``run`` with its batch from its own thread. The requests run on the process's one
I/O loop (``infra.llm.loop``, shared by every shard thread), over the one aiohttp session of the
base URL (keep-alive connections reused across runs), under the endpoint's shared budgets
(DESIGN §5): its ``InFlightLimit`` (requests on the wire) and its ``RateLimiter`` (requests and
tokens per minute); and they are retried with exponential backoff and full jitter that honour
``Retry-After``. Results come back to the calling thread through a queue, so ``on_result`` (a
blocking store write) runs there and never stalls the loop. A request that still fails is
delivered as an ``LLMResult`` carrying the error and a short reason, never raised (the contract
of ``infra.llm.base``).

We use aiohttp directly rather than the ``openai`` SDK: at 200 requests in flight the SDK in one
loop measured ~37 requests/s on these machines against ~760/s for a bare asyncio client
(reference/environment.md), and the pipeline needs only two POST endpoints.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from ultrafeedback.infra import stop
from ultrafeedback.infra.llm import loop as io_loop
from ultrafeedback.infra.llm.base import LLMRequest, LLMResult, ResultCallback
from ultrafeedback.infra.llm.limiter import InFlightLimit, RateLimiter, get_in_flight, get_limiter
from ultrafeedback.infra.llm.prefect_budget import PREFECT
from ultrafeedback.infra.llm.replicas import Replica, ReplicaSet, is_replica_failure

if TYPE_CHECKING:
    import aiohttp

    from ultrafeedback.spec import Endpoint

__all__ = [
    "MissingAPIKeyError",
    "OpenAICompatBackend",
    "backend_from_endpoint",
    "estimate_tokens",
    "parse_retry_after",
    "request_body",
]

log = logging.getLogger(__name__)

SAMPLING_KEYS: tuple[str, ...] = (
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
)
"""The sampling parameters passed to the API; others in ``LLMRequest.sampling`` are ignored."""

RETRY_STATUSES: frozenset[int] = frozenset({408, 409, 429})
"""Retried besides every 5xx: request timeout, conflict (a lock on the provider side), rate limit."""

RETRY_AFTER_STATUSES: frozenset[int] = frozenset({429, 503})
MAX_RETRY_AFTER_S = 900.0
"""A server asking for more than 15 minutes is more likely broken than busy."""

_ERROR_SNIPPET = 300

_POLL_S = 0.2
"""How often a caller blocked in ``run`` wakes to notice an interrupt (results wake it at once)."""
_CANCEL_WAIT_S = 30.0
"""How long an interrupted ``run`` waits for its requests to stop before it raises anyway."""

_DONE = object()
"""Sent after a run's last result."""

_REPLICA_SESSIONS: ContextVar[dict[str, aiohttp.ClientSession]] = ContextVar("replica_sessions")
"""A run's sessions per replica URL (set by ``_sessions`` for the run's request tasks)."""


class _Route:
    """One request's way through the replicas: the replica its last attempt failed on, if that
    failure was the replica's (the next attempt goes elsewhere)."""

    __slots__ = ("failed_on",)

    def __init__(self) -> None:
        self.failed_on: Replica | None = None


class _Outbox:
    """Results on their way from the I/O loop to the thread that called ``run``.

    The loop collects the results that finish in one of its iterations and sends them as one
    batch: one wake-up of the caller per iteration, not one per result.
    """

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[list[LLMResult] | object] = queue.SimpleQueue()
        self._batch: list[LLMResult] = []

    def add(self, result: LLMResult) -> None:  # on the loop
        if not self._batch:
            asyncio.get_running_loop().call_soon(self._send)
        self._batch.append(result)

    def _send(self) -> None:  # on the loop
        batch, self._batch = self._batch, []
        if batch:
            self.queue.put(batch)

    def close(self) -> None:  # on the loop, once the run has finished
        self._send()
        self.queue.put(_DONE)


class _Tally:
    """One run's requests: how many went on the wire (once each, retries aside) and how many
    results were delivered."""

    __slots__ = ("delivered", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.delivered = 0

    def stopped(self, total: int) -> stop.Stopped | None:
        """The ``Stopped`` to raise when the run stopped before every result was delivered."""
        if self.delivered >= total or not stop.requested():
            return None
        return stop.Stopped(unsent=total - self.sent)


class MissingAPIKeyError(RuntimeError):
    """An endpoint names a key source (environment variable or Prefect Secret) that is empty."""


class _Secret:
    """Holds the API key so that no repr, ``vars()`` dump or traceback local shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def scrub(self, text: str) -> str:
        return text.replace(self._value, "***") if self._value else text

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


class _Failure(Exception):
    """One failed attempt: ``reason`` is the category recorded in ``LLMResult.reason``."""

    def __init__(self, reason: str, message: str, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


def request_body(request: LLMRequest) -> tuple[str, dict[str, Any]]:
    """The API path (relative to the base URL) and the JSON body of one request."""
    body: dict[str, Any] = {"model": request.model}
    if request.messages is not None:
        path = "chat/completions"
        body["messages"] = request.messages
    elif request.prompt is not None:
        path = "completions"
        body["prompt"] = request.prompt
    else:
        raise ValueError(f"request {request.key}: needs `messages` or `prompt`")
    for key in SAMPLING_KEYS:
        value = request.sampling.get(key)
        if value is not None:
            body[key] = value
    return path, body


def estimate_tokens(request: LLMRequest) -> int:
    """Tokens the limiter books for a request: ~4 characters a token in, plus the output cap.

    Providers count ``max_tokens`` against TPM before they know the real output, so we do too.
    """
    if request.messages is not None:
        chars = sum(len(m.get("content") or "") for m in request.messages)
    else:
        chars = len(request.prompt or "")
    return chars // 4 + int(request.sampling.get("max_tokens") or 0)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _parse_success(raw: bytes, chat: bool) -> tuple[str, str, int, int]:
    """(text, finish_reason, prompt_tokens, completion_tokens) of a 200 body; raises ``_Failure``."""
    try:
        data = json.loads(raw)
        choice = data["choices"][0]
        if chat:
            text = choice["message"].get("content")
        else:
            text = choice["text"]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        snippet = raw[:_ERROR_SNIPPET].decode("utf-8", "replace")
        raise _Failure("malformed_response", f"malformed response ({type(exc).__name__}): {snippet!r}", True) from None
    if text is not None and not isinstance(text, str):
        raise _Failure("malformed_response", f"malformed response: content is {type(text).__name__}", True)
    usage = data.get("usage") or {}
    return (
        text or "",
        str(choice.get("finish_reason") or ""),
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
    )


class OpenAICompatBackend:
    """Async client for ``{base_url}/chat/completions`` and ``{base_url}/completions``.

    ``base_url`` includes the version prefix, as in the openai SDK (``https://api.openai.com/v1``);
    several URLs are replicas of one endpoint (``infra.llm.replicas``): each attempt goes to one of
    them, a replica that keeps failing is set aside, and a request it failed is retried on another
    at once. The budgets stay the endpoint's, whichever replica serves.
    ``run`` may be called from several threads at once; every call's requests run on the
    process's I/O loop over the base URL's one session, under ``limiter`` and ``in_flight`` (set
    them from ``get_limiter`` and ``get_in_flight`` so every backend of an endpoint shares one
    budget, as ``backend_from_endpoint`` does). Without ``in_flight``, ``max_in_flight`` bounds
    this backend's runs together; without ``limiter``, a 429's pause holds for this backend's.
    """

    def __init__(
        self,
        name: str,
        base_url: str | Sequence[str],
        api_key: str | None = None,
        max_in_flight: int = 32,
        timeout_s: float = 120.0,
        max_retries: int = 6,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        limiter: RateLimiter | None = None,
        in_flight: InFlightLimit | None = None,
        replica_max_failures: int = 3,
        replica_backoff_s: float = 5.0,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.name = name
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("base_url: give at least one URL")
        self.base_urls = [url.rstrip("/") for url in urls]
        self.base_url = self.base_urls[0]
        self._replicas = (
            ReplicaSet(self.base_urls, replica_max_failures, replica_backoff_s) if len(self.base_urls) > 1 else None
        )
        self._api_key = _Secret(api_key) if api_key else None
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.limiter = limiter
        self.in_flight = in_flight
        # without shared budgets, this backend's own (for all of its runs together)
        self._own_limiter = RateLimiter(None, None)
        self._own_slots = InFlightLimit(max_in_flight)
        self._timeout: aiohttp.ClientTimeout | None = None
        self._stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"OpenAICompatBackend(name={self.name!r}, base_url={self.base_url!r}, "
            f"api_key={'set' if self._api_key else None}, max_in_flight={self.max_in_flight}, "
            f"in_flight={self.in_flight!r})"
        )

    # ------------------------------------------------------------------ public API
    records_arrivals = True
    """``run`` takes ``on_arrival`` (``infra.journal.run_journaled`` journals on the I/O loop)."""

    def run(
        self, requests: list[LLMRequest], on_result: ResultCallback, on_arrival: ResultCallback | None = None
    ) -> None:
        """Run every request; ``on_result`` is called once per request, in the calling thread.
        ``on_arrival`` (optional) is called on the I/O loop as each result is read, before it is
        queued to the caller: what must be written down before the process could die (the result
        journal); it must be quick, and an exception from it fails the run like one from ``on_result``.

        Blocks until every request is done. The requests run on the process's I/O loop; the
        results are queued back to this thread as they finish. An exception raised by
        ``on_result`` (a failed checkpoint write), or one that interrupts the wait (Ctrl-C, a
        cancellation), cancels the rest of this run (its requests in flight are abandoned, no new
        ones start; other runs go on) and propagates: the caller's store is then in doubt and it
        must not go on silently. Works from any thread, also one running its own event loop (a
        notebook), except the I/O loop's own (use ``arun`` there).

        When the run stops (``infra.stop``) no request of it starts any more, those on the wire get
        until the stop's deadline, and ``run`` raises ``infra.stop.Stopped`` (with how many were
        never sent) once the results that arrived were handed to ``on_result``.
        """
        requests = list(requests)
        if not requests:
            return
        if io_loop.in_loop_thread():
            raise RuntimeError("run() on the I/O loop would wait for itself: await arun() instead")
        stop.check(unsent=len(requests))
        outbox = _Outbox()
        deliver = outbox.add
        if on_arrival is not None:

            def deliver(result: LLMResult) -> None:
                on_arrival(result)
                outbox.add(result)

        tally = _Tally()
        job = io_loop.submit(self._drive(requests, deliver, tally), on_done=outbox.close)
        try:
            while True:
                try:
                    batch = outbox.queue.get(timeout=_POLL_S)
                except queue.Empty:
                    if job.lost():
                        break
                    continue
                if batch is _DONE:
                    break
                for result in batch:  # type: ignore[union-attr]
                    on_result(result)
        except BaseException:
            job.cancel()
            if not job.wait(_CANCEL_WAIT_S):
                log.warning("%s: an interrupted run's requests did not stop within %.0f s", self.name, _CANCEL_WAIT_S)
            raise
        job.result()
        stopped = tally.stopped(len(requests))
        if stopped is not None:
            raise stopped

    async def arun(self, requests: Iterable[LLMRequest], on_result: ResultCallback) -> None:
        """``run`` for callers that own an event loop: ``on_result`` is called on that loop.

        The requests still run on the process's I/O loop, under the same shared budgets.
        """
        requests = list(requests)
        if not requests:
            return
        stop.check(unsent=len(requests))
        tally = _Tally()
        if io_loop.in_loop_thread():
            await self._drive(requests, on_result, tally)
        else:
            await self._arun_elsewhere(requests, on_result, tally)
        stopped = tally.stopped(len(requests))
        if stopped is not None:
            raise stopped

    async def _arun_elsewhere(self, requests: list[LLMRequest], on_result: ResultCallback, tally: _Tally) -> None:
        caller = asyncio.get_running_loop()
        inbox: asyncio.Queue[Any] = asyncio.Queue()

        def deliver(item: Any) -> None:
            try:
                caller.call_soon_threadsafe(inbox.put_nowait, item)
            except RuntimeError:  # the caller's loop closed: nobody listens any more
                pass

        job = io_loop.submit(self._drive(requests, deliver, tally), on_done=lambda: deliver(_DONE))
        try:
            while (item := await inbox.get()) is not _DONE:
                on_result(item)
        except BaseException:
            job.cancel()
            try:
                async with asyncio.timeout(_CANCEL_WAIT_S):
                    while await inbox.get() is not _DONE:
                        pass
            except TimeoutError:
                log.warning("%s: an interrupted run's requests did not stop within %.0f s", self.name, _CANCEL_WAIT_S)
            raise
        job.result()

    def stats(self) -> dict[str, int]:
        """Counters over this backend's life: requests, attempts, failures (also by reason), tokens."""
        with self._stats_lock:
            return dict(self._stats)

    def close(self) -> None:
        """Retire the base URL's shared session: it closes once the runs using it end, and a
        later ``run`` opens a fresh one."""
        for url in self.base_urls:
            io_loop.retire_session(url)

    # ------------------------------------------------------------------ on the I/O loop
    def _new_session(self) -> aiohttp.ClientSession:
        """The base URL's session: one connector, unbounded (the in-flight budgets bound it), its
        connections kept alive across runs. Keys go per request, so backends share it."""
        import aiohttp

        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        return aiohttp.ClientSession(
            connector=connector, headers={"Content-Type": "application/json"}, raise_for_status=False
        )

    async def _drive(self, requests: list[LLMRequest], deliver: ResultCallback, tally: _Tally) -> None:
        """Run ``requests`` concurrently on the I/O loop, handing each result to ``deliver``.

        When the run stops, the requests not on the wire (waiting for a slot, the rate limiter or a
        retry's backoff) are cancelled at once and those on the wire at the stop's deadline."""
        # the shared limit if there is one (it may have been resized since construction), else ours
        slots = self.in_flight if self.in_flight is not None else self._own_slots
        limiter = self.limiter or self._own_limiter
        loop = asyncio.get_running_loop()
        stopping = loop.create_future()
        unsubscribe = io_loop.on_stop(lambda: stopping.done() or stopping.set_result(None))
        if stop.requested() and not stopping.done():
            stopping.set_result(None)

        def counted(result: LLMResult) -> None:
            tally.delivered += 1
            deliver(result)

        on_wire: set[asyncio.Task[None]] = set()
        async with self._sessions() as session:
            tasks = [
                asyncio.ensure_future(self._one(session, slots, limiter, request, counted, tally, on_wire))
                for request in requests
            ]
            work = asyncio.gather(*tasks)
            # retrieved here in every case: a child cancelled by a stop must not log "never retrieved"
            work.add_done_callback(lambda done: done.cancelled() or done.exception())
            try:
                await asyncio.wait([work, stopping], return_when=asyncio.FIRST_COMPLETED)
                if work.done():
                    work.result()  # the first failure (a ``deliver`` that raised) ends the run
                else:  # stopping: nothing new goes out; what is on the wire gets until the deadline
                    for task in tasks:
                        if task not in on_wire:
                            task.cancel()
                    if on_wire:
                        await asyncio.wait(list(on_wire), timeout=stop.remaining())
            finally:
                unsubscribe()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    @asynccontextmanager
    async def _sessions(self) -> AsyncIterator[aiohttp.ClientSession]:
        """A run's session of its base URL; with replicas, also each replica's (for the run's
        request tasks, through ``_REPLICA_SESSIONS``)."""
        if self._replicas is None:
            async with io_loop.shared_session(self.base_url, self._new_session) as session:
                yield session
            return
        async with AsyncExitStack() as stack:
            sessions = {
                url: await stack.enter_async_context(io_loop.shared_session(url, self._new_session))
                for url in self.base_urls
            }
            token = _REPLICA_SESSIONS.set(sessions)
            try:
                yield sessions[self.base_url]
            finally:
                _REPLICA_SESSIONS.reset(token)

    async def _replica_attempt(self, path: str, payload: bytes, chat: bool, route: _Route) -> tuple[str, str, int, int]:
        """One attempt on the replica ``ReplicaSet.pick`` gives (not the one the last failed on)."""
        assert self._replicas is not None
        replica = self._replicas.pick(avoid=route.failed_on)
        verdict: str | None = ""  # no verdict unless it answers or fails (a cancellation)
        try:
            answer = await self._attempt(_REPLICA_SESSIONS.get()[replica.url], f"{replica.url}/{path}", payload, chat)
            verdict = None
            return answer
        except _Failure as exc:
            verdict = exc.reason
            raise
        finally:
            self._replicas.done(replica, verdict)
            route.failed_on = replica if verdict and is_replica_failure(verdict) else None

    # ------------------------------------------------------------------ one request
    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            self._stats.update(increments)

    def _backoff(self, retry: int, failure: _Failure) -> float:
        """Full jitter (AWS style) capped at backoff_max_s; never shorter than the server asked."""
        cap = min(self.backoff_max_s, self.backoff_base_s * (2**retry))
        delay = random.uniform(0.0, cap)
        if failure.retry_after is not None:
            delay = max(delay, failure.retry_after)
        return delay

    async def _one(
        self,
        session: aiohttp.ClientSession,
        slots: InFlightLimit,
        limiter: RateLimiter,
        request: LLMRequest,
        on_result: ResultCallback,
        tally: _Tally,
        on_wire: set[asyncio.Task[None]],
    ) -> None:
        try:
            path, body = request_body(request)
        except ValueError as exc:
            self._count(requests=1, failed=1, **{"failed_invalid_request": 1})
            on_result(LLMResult(request.key, None, attempts=0, error=str(exc), reason="invalid_request"))
            return
        url = f"{self.base_url}/{path}"
        route = _Route() if self._replicas is not None else None
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        tokens = estimate_tokens(request)
        chat = request.messages is not None
        started: float | None = None
        attempt = 0
        failure: _Failure | None = None
        while True:
            attempt += 1
            async with slots:
                await limiter.acquire(tokens)
                if stop.requested():  # no new request once the run stops (its results are not delivered)
                    return
                if started is None:
                    started = time.monotonic()
                    tally.sent += 1
                task = asyncio.current_task()
                assert task is not None
                on_wire.add(task)  # no await since the check above: a stop cancels this one at its deadline only
                try:
                    text, finish, tokens_in, tokens_out = await (
                        self._attempt(session, url, payload, chat)
                        if route is None
                        else self._replica_attempt(path, payload, chat, route)
                    )
                except _Failure as exc:
                    failure = exc
                else:
                    self._count(requests=1, attempts=attempt, tokens_in=tokens_in, tokens_out=tokens_out)
                    on_result(
                        LLMResult(
                            key=request.key,
                            text=text,
                            finish_reason=finish,
                            input_tokens=tokens_in,
                            output_tokens=tokens_out,
                            latency_s=time.monotonic() - started,
                            attempts=attempt,
                        )
                    )
                    return
                finally:
                    on_wire.discard(task)
            if failure.reason == "http_429" and failure.retry_after:
                limiter.penalize(failure.retry_after)
            if not failure.retryable or attempt > self.max_retries:
                break
            if route is not None and route.failed_on is not None and self._replicas.available(route.failed_on):
                continue  # the replica failed, not the request: another one in service takes it now
            delay = self._backoff(attempt - 1, failure)
            log.debug(
                "%s: %s attempt %d failed (%s); retrying in %.2fs",
                self.name,
                request.key,
                attempt,
                failure.reason,
                delay,
            )
            await asyncio.sleep(delay)
        message = self._scrub(failure.message)
        log.debug("%s: %s failed after %d attempts: %s", self.name, request.key, attempt, message)
        self._count(requests=1, attempts=attempt, failed=1, **{f"failed_{failure.reason}": 1})
        on_result(
            LLMResult(
                key=request.key,
                text=None,
                latency_s=time.monotonic() - (started or time.monotonic()),
                attempts=attempt,
                error=message,
                reason=failure.reason,
            )
        )

    async def _attempt(
        self, session: aiohttp.ClientSession, url: str, payload: bytes, chat: bool
    ) -> tuple[str, str, int, int]:
        import aiohttp

        if self._timeout is None:
            self._timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            # the key goes per request (backends with other keys share the session), never stored
            headers = {"Authorization": f"Bearer {self._api_key.get()}"} if self._api_key is not None else None
            async with session.post(url, data=payload, headers=headers, timeout=self._timeout) as response:
                raw = await response.read()
                status = response.status
                retry_after_header = response.headers.get("Retry-After")
        except TimeoutError:
            raise _Failure("timeout", f"no answer within {self.timeout_s:g}s from {url}", True) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _Failure("connection", f"{type(exc).__name__}: {exc}", True) from None
        except Exception as exc:  # noqa: BLE001 - one request's failure is data, never a crash
            raise _Failure("client_error", f"{type(exc).__name__}: {exc}", False) from None
        if 200 <= status < 300:
            return _parse_success(raw, chat)
        snippet = raw[:_ERROR_SNIPPET].decode("utf-8", "replace").strip()
        message = f"HTTP {status} from {url}: {snippet}"
        retryable = status in RETRY_STATUSES or status >= 500
        retry_after = parse_retry_after(retry_after_header) if status in RETRY_AFTER_STATUSES else None
        raise _Failure(f"http_{status}", message, retryable, retry_after)

    def _scrub(self, text: str) -> str:
        return self._api_key.scrub(text) if self._api_key is not None else text


def _api_key(name: str, endpoint: Endpoint) -> str | None:
    """The key from the endpoint's environment variable, else its Prefect Secret block."""
    from ultrafeedback.infra.secrets import read_secret

    value, tried = read_secret(endpoint.api_key_env, endpoint.api_key_block)
    if value:
        return value
    if tried:
        raise MissingAPIKeyError(f"endpoint {name!r} needs an API key: " + "; ".join(tried))
    return None


def backend_from_endpoint(name: str, endpoint: Endpoint, budget_dir: str | None = None) -> OpenAICompatBackend:
    """The backend of a spec endpoint, with its key resolved and its process-wide limiters (rate and
    in-flight), shared with every other backend of the same endpoint name; with ``budget_dir``, with
    every process of the machine naming that folder (``infra.llm.shared_budget``), or with
    ``budget_dir: prefect``, with every process on every machine using this Prefect API
    (``infra.llm.prefect_budget``)."""
    if budget_dir == PREFECT:
        from ultrafeedback.infra.llm.prefect_budget import prefect_in_flight, prefect_limiter
        from ultrafeedback.infra.llm.shared_budget import budget_key

        key = budget_key(name, endpoint.urls)
        limiter: RateLimiter = prefect_limiter(key, endpoint.requests_per_minute, endpoint.tokens_per_minute)
        in_flight: InFlightLimit = prefect_in_flight(key, endpoint.max_in_flight)
    elif budget_dir:
        from ultrafeedback.infra.llm.shared_budget import budget_key, shared_in_flight, shared_limiter

        key = budget_key(name, endpoint.urls)
        limiter = shared_limiter(budget_dir, key, endpoint.requests_per_minute, endpoint.tokens_per_minute)
        in_flight = shared_in_flight(budget_dir, key, endpoint.max_in_flight)
    else:
        limiter = get_limiter(name, endpoint.requests_per_minute, endpoint.tokens_per_minute)
        in_flight = get_in_flight(name, endpoint.max_in_flight)
    return OpenAICompatBackend(
        name=name,
        base_url=endpoint.urls,
        api_key=_api_key(name, endpoint),
        max_in_flight=endpoint.max_in_flight,
        timeout_s=endpoint.timeout_s,
        max_retries=endpoint.max_retries,
        backoff_base_s=endpoint.backoff_base_s,
        backoff_max_s=endpoint.backoff_max_s,
        limiter=limiter,
        in_flight=in_flight,
        replica_max_failures=endpoint.replica_max_failures,
        replica_backoff_s=endpoint.replica_backoff_s,
    )
