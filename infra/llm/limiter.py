"""A per-endpoint rate limiter for requests and tokens per minute, shared by every thread.

Shards run in several threads, each with its own asyncio loop, and an endpoint's rate budget
belongs to the endpoint, not to a shard (DESIGN §5). So the limiter holds no asyncio objects: its
state sits behind a ``threading.Lock`` and waiters sleep on their own loop.

It is a pair of continuously refilling token buckets (the scheme of the OpenAI cookbook's parallel
processor), implemented by *reservation*: a caller takes its request and tokens at once, the
bucket may go into debt, and the caller sleeps until the debt it joined is paid off. That makes
waiting FIFO and O(1) (no thundering herd of pollers), and a request larger than the bucket still
goes through at the configured rate instead of deadlocking. Buckets hold one second's worth (at
least 1), so a fresh limiter does not fire a whole minute's budget in the first instant.
"""

from __future__ import annotations

import asyncio
import threading
import time

__all__ = ["RateLimiter", "get_limiter", "reset_limiters"]


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
        until = time.monotonic() + seconds
        with self._lock:
            if until <= self._paused_until:
                return
            self._paused_until = until
            for bucket in (self._requests, self._tokens):
                if bucket is not None:
                    bucket.refill(until - seconds)
                    bucket.hold_until(until)

    @property
    def paused_for(self) -> float:
        """Seconds left of the current penalty pause (0 when none)."""
        return max(0.0, self._paused_until - time.monotonic())

    def __repr__(self) -> str:
        return (
            f"RateLimiter(requests_per_minute={self.requests_per_minute}, "
            f"tokens_per_minute={self.tokens_per_minute})"
        )


_REGISTRY: dict[str, RateLimiter] = {}
_REGISTRY_LOCK = threading.Lock()


def get_limiter(
    endpoint_name: str, requests_per_minute: float | None, tokens_per_minute: float | None
) -> RateLimiter:
    """The process-wide limiter of one endpoint: the same name always gives the same object.

    If the rates differ from the ones it was created with (the spec changed), the existing
    limiter is reconfigured rather than replaced, so every holder keeps sharing one budget.
    """
    with _REGISTRY_LOCK:
        limiter = _REGISTRY.get(endpoint_name)
        if limiter is None:
            limiter = _REGISTRY[endpoint_name] = RateLimiter(requests_per_minute, tokens_per_minute)
            return limiter
    if (limiter.requests_per_minute, limiter.tokens_per_minute) != (
        requests_per_minute,
        tokens_per_minute,
    ):
        limiter.configure(requests_per_minute, tokens_per_minute)
    return limiter


def reset_limiters() -> None:
    """Forget every endpoint's limiter (tests, or a long-lived process loading a new spec)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()
