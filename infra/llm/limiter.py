"""An endpoint's budgets, shared by every shard of the process: requests and tokens per minute,
and requests on the wire at once.

Shards run in several threads, but all of a process's API requests run on one asyncio loop, the
I/O loop of ``infra.llm.loop``, and an endpoint's budget belongs to the endpoint, not to a shard
(DESIGN §5): ``get_limiter`` and ``get_in_flight`` hand every backend of an endpoint name the
same objects.

``RateLimiter`` is a pair of continuously refilling token buckets (the scheme of the OpenAI
cookbook's parallel processor), implemented by *reservation*: a caller takes its request and
tokens at once, the bucket may go into debt, and the caller sleeps until the debt it joined is
paid off. That makes waiting FIFO and O(1) (no thundering herd of pollers), and a request larger
than the bucket still goes through at the configured rate instead of deadlocking. Buckets hold one
second's worth (at least 1), so a fresh limiter does not fire a whole minute's budget in the first
instant. Its state sits behind a small lock, so ``reserve``, ``penalize`` and ``configure`` (a
shard thread applying a changed spec) may come from any thread; waiters sleep on their own loop.

``InFlightLimit`` is a FIFO semaphore confined to the loop its waiters sleep on (the I/O loop):
a freed slot is handed straight to the oldest waiter, no polling, no lock.

After a fork, the child's copies forget the slots the parent's I/O thread held (that thread does
not exist in the child) and get fresh locks.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from types import TracebackType

__all__ = ["InFlightLimit", "RateLimiter", "get_in_flight", "get_limiter", "reset_limiters"]


class _Bucket:
    """One refilling budget; ``stamp`` may lie in the future while a penalty pause holds."""

    __slots__ = ("capacity", "level", "per_minute", "rate", "stamp")

    def __init__(self, per_minute: float, now: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(self.rate, 1.0)
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def reserve(self, amount: float, now: float) -> float:
        """Take ``amount`` and return the earliest time the caller may go."""
        self.refill(now)
        start = max(now, self.stamp)
        self.level -= amount
        if self.level >= 0:
            return start
        return start + (-self.level) / self.rate

    def hold_until(self, until: float) -> None:
        """No refill before ``until``: a server's 429 says we were already over its budget."""
        if until > self.stamp:
            self.level = min(self.level, 0.0)
            self.stamp = until


class RateLimiter:
    """Requests-per-minute and tokens-per-minute budgets; either may be ``None`` (unlimited).

    ``acquire(tokens)`` waits until both budgets cover one request of ``tokens`` tokens;
    ``penalize(seconds)`` pauses every caller (a 429 with ``Retry-After`` arrived).
    """

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        self._lock = threading.Lock()
        self._paused_until = 0.0
        _RATE_LIMITERS.add(self)
        self._requests: _Bucket | None = None
        self._tokens: _Bucket | None = None
        self.configure(requests_per_minute, tokens_per_minute)

    def configure(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        """Set (or change) the rates; a changed rate starts from a fresh, bounded bucket."""
        for value, label in ((requests_per_minute, "requests"), (tokens_per_minute, "tokens")):
            if value is not None and value <= 0:
                raise ValueError(f"{label} per minute must be positive, got {value}")
        now = time.monotonic()
        with self._lock:
            if self.requests_per_minute != requests_per_minute:
                self._requests = _Bucket(requests_per_minute, now) if requests_per_minute else None
            if self.tokens_per_minute != tokens_per_minute:
                self._tokens = _Bucket(tokens_per_minute, now) if tokens_per_minute else None

    @property
    def requests_per_minute(self) -> float | None:
        return self._requests.per_minute if self._requests else None

    @property
    def tokens_per_minute(self) -> float | None:
        return self._tokens.per_minute if self._tokens else None

    def reserve(self, tokens: int = 0) -> float:
        """Book one request now; returns the ``time.monotonic()`` at which it may be sent.

        The booking is final (the caller must then wait, not cancel): it keeps ``acquire`` FIFO.
        """
        now = time.monotonic()
        with self._lock:
            return self._book(tokens, now)

    def _book(self, tokens: int, now: float) -> float:
        """``reserve``'s booking, under the lock (``infra.llm.shared_budget`` books in a shared file)."""
        go = now
        if self._requests is not None:
            go = max(go, self._requests.reserve(1.0, now))
        if self._tokens is not None and tokens > 0:
            go = max(go, self._tokens.reserve(float(tokens), now))
        return go

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until both budgets cover one request of ``tokens`` tokens, then take them."""
        go = self.reserve(tokens)
        while True:
            # re-read the pause on every wake-up: a penalty may arrive while we sleep
            target = max(go, self._paused_until)
            delay = target - time.monotonic()
            if delay <= 0:
                return
            await asyncio.sleep(delay)

    def penalize(self, seconds: float) -> None:
        """Make every caller of this limiter pause for ``seconds`` from now."""
        if seconds <= 0:
            return
        now = time.monotonic()
        with self._lock:
            self._pause(now, now + seconds)

    def _pause(self, now: float, until: float) -> None:
        """``penalize``'s pause, under the lock."""
        if until <= self._paused_until:
            return
        self._paused_until = until
        for bucket in (self._requests, self._tokens):
            if bucket is not None:
                bucket.refill(now)
                bucket.hold_until(until)

    @property
    def paused_for(self) -> float:
        """Seconds left of the current penalty pause (0 when none)."""
        return max(0.0, self._paused_until - time.monotonic())

    def __repr__(self) -> str:
        return (
            f"RateLimiter(requests_per_minute={self.requests_per_minute}, tokens_per_minute={self.tokens_per_minute})"
        )


class InFlightLimit:
    """At most ``limit`` holders at once: an endpoint's budget of requests on the wire.

    Use it as ``async with slots:`` (or ``await acquire()`` / ``release()``) on the event loop
    that runs the requests: the process's one I/O loop (``infra.llm.loop``), where every shard
    thread's requests run, so one object bounds them all and needs no lock. A released slot goes
    straight to the oldest waiter (FIFO, no barging: a newcomer queues while anyone waits). A
    waiter cancelled before the hand-off leaves the queue; one cancelled after it (or whose
    coroutine is closed with its loop) passes the slot on, so none leaks and none is released
    twice. Waiters whose loop has closed are skipped.

    ``set_limit`` (and ``release``) may be called from another thread: the change is then applied
    on the loop the waiters sleep on. Waiting on two running loops at once is refused.
    """

    def __init__(self, limit: int) -> None:
        self._limit = _check_limit(limit)
        self._in_use = 0
        self._waiters: OrderedDict[asyncio.Future[None], None] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None  # where it was last used
        _IN_FLIGHT_LIMITS.add(self)

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_use(self) -> int:
        """Slots held now, counting those handed to a waiter that has not resumed yet."""
        return self._in_use

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def set_limit(self, limit: int) -> None:
        """Change the limit; a larger one wakes waiters at once, a smaller one takes effect as
        holders release (none is interrupted)."""
        self._limit = _check_limit(limit)
        self._on_owner_loop(self._fill)

    async def acquire(self) -> None:
        """Wait for a slot of this limit, then hold it until ``release``."""
        loop = asyncio.get_running_loop()
        if self._in_use < self._limit and not self._waiters:
            self._in_use += 1
            self._loop = loop
            return
        if self._waiters and self._loop is not loop and self._loop is not None and self._loop.is_running():
            raise RuntimeError(
                f"{self!r} has waiters on another event loop: use it from one loop, the process's "
                "I/O loop (infra.llm.loop)"
            )
        self._loop = loop
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters[waiter] = None
        try:
            await waiter
        except BaseException:  # cancelled, or the coroutine closed with its loop
            if waiter.done() and not waiter.cancelled():
                self._on_owner_loop(self._release)  # the slot came with the wake-up: pass it on
            else:
                self._waiters.pop(waiter, None)
            raise

    def release(self) -> None:
        """Give a slot back; the oldest live waiter gets it."""
        if self._in_use <= 0:
            raise RuntimeError("InFlightLimit released more often than acquired")
        self._on_owner_loop(self._release)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"InFlightLimit(limit={self._limit}, in_use={self._in_use}, waiting={len(self._waiters)})"

    # ------------------------------------------------------------------ on the owner loop
    def _on_owner_loop(self, action: Callable[[], None]) -> None:
        """Run ``action`` now, or on the loop this limit is used on when that runs in another thread."""
        loop = self._loop
        if loop is not None and loop.is_running() and not loop.is_closed():
            try:
                running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                try:
                    loop.call_soon_threadsafe(action)
                    return
                except RuntimeError:  # it closed just now: nobody else touches this limit
                    pass
        action()

    def _release(self) -> None:
        if self._in_use <= 0:
            raise RuntimeError("InFlightLimit released more often than acquired")
        if self._in_use > self._limit or not self._hand_off():
            self._in_use -= 1

    def _fill(self) -> None:
        """Hand free slots to waiters (after the limit grew)."""
        while self._waiters and self._in_use < self._limit:
            self._in_use += 1
            if not self._hand_off():
                self._in_use -= 1

    def _hand_off(self) -> bool:
        """Give the caller's slot to the oldest waiter that can still take it; False if none can."""
        while self._waiters:
            waiter, _ = self._waiters.popitem(last=False)
            if not waiter.done() and not waiter.get_loop().is_closed():
                waiter.set_result(None)
                return True
        return False

    def _forget_holders(self) -> None:
        """In a forked child: the holders and waiters were the parent's I/O thread's."""
        self._in_use = 0
        self._waiters.clear()
        self._loop = None


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"in-flight limit must be an integer >= 1, got {limit!r}")
    return limit


_RATE_LIMITERS: weakref.WeakSet[RateLimiter] = weakref.WeakSet()
_IN_FLIGHT_LIMITS: weakref.WeakSet[InFlightLimit] = weakref.WeakSet()
_REGISTRY: dict[str, RateLimiter] = {}
_IN_FLIGHT: dict[str, InFlightLimit] = {}
_REGISTRY_LOCK = threading.Lock()


def registered_limiter(
    registry: dict[str, RateLimiter],
    key: str,
    make: Callable[[], RateLimiter],
    requests_per_minute: float | None,
    tokens_per_minute: float | None,
) -> RateLimiter:
    """The one limiter of ``key`` in ``registry`` (``make()`` on first use). If the rates differ
    from the ones it has (the spec changed), it is reconfigured rather than replaced, so every
    holder keeps sharing one budget."""
    with _REGISTRY_LOCK:
        limiter = registry.get(key)
        if limiter is None:
            limiter = registry[key] = make()
            return limiter
    if (limiter.requests_per_minute, limiter.tokens_per_minute) != (requests_per_minute, tokens_per_minute):
        limiter.configure(requests_per_minute, tokens_per_minute)
    return limiter


def registered_in_flight(
    registry: dict[str, InFlightLimit], key: str, make: Callable[[], InFlightLimit], limit: int
) -> InFlightLimit:
    """The one in-flight limit of ``key`` in ``registry`` (``make()`` on first use); a changed
    ``limit`` (the spec changed) is applied to it, so every holder keeps sharing one budget."""
    with _REGISTRY_LOCK:
        slots = registry.get(key)
        if slots is None:
            slots = registry[key] = make()
            return slots
    if slots.limit != limit:
        slots.set_limit(limit)
    return slots


def get_limiter(endpoint_name: str, requests_per_minute: float | None, tokens_per_minute: float | None) -> RateLimiter:
    """The process-wide limiter of one endpoint: the same name always gives the same object."""
    return registered_limiter(
        _REGISTRY,
        endpoint_name,
        lambda: RateLimiter(requests_per_minute, tokens_per_minute),
        requests_per_minute,
        tokens_per_minute,
    )


def get_in_flight(endpoint_name: str, limit: int) -> InFlightLimit:
    """The process-wide in-flight limit of one endpoint: the same name always gives the same object."""
    return registered_in_flight(_IN_FLIGHT, endpoint_name, lambda: InFlightLimit(limit), limit)


def reset_limiters() -> None:
    """Forget every endpoint's limiters (tests, or a long-lived process loading a new spec)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()
        _IN_FLIGHT.clear()


def _after_fork_in_child() -> None:
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()
    for limiter in list(_RATE_LIMITERS):
        limiter._lock = threading.Lock()
    for slots in list(_IN_FLIGHT_LIMITS):
        slots._forget_holders()


os.register_at_fork(after_in_child=_after_fork_in_child)
