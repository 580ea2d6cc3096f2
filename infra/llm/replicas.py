"""Several replicas of one endpoint (``base_urls``): which one the next request goes to.

An endpoint may be served by several copies of one model (``vllm serve`` on several GPUs or
machines). ``ReplicaSet`` spreads requests over them, least in flight first (ties in turn), and
keeps each replica's health from what its requests met:

- ``max_failures`` consecutive failures that are the replica's (it cannot be reached, it answers
  5xx, it times out) set it aside for ``backoff_s`` seconds; a 429 or a 4xx is about the request
  or the endpoint's budget, not the replica, and does not count. A success clears the count.
- When its time is up, one request probes it (no other is sent there meanwhile). A good answer
  brings it back; a failure sets it aside again for twice as long (up to 64 times ``backoff_s``).
- While every replica is set aside, requests go to the one due first: with no replica to fall back
  on, the endpoint behaves as a single URL does (the request's own retries and back-off apply).

The caller retries a replica failure on another replica (``pick(avoid=...)``); the endpoint's
budgets (in flight, requests and tokens per minute) stay the endpoint's, whichever replica serves.
All methods run on the process's I/O loop (``infra.llm.loop``), so nothing here needs a lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

__all__ = ["REPLICA_FAILURES", "Replica", "ReplicaSet", "is_replica_failure"]

log = logging.getLogger(__name__)

MAX_BACKOFF_DOUBLINGS = 6
"""A replica failing every probe is probed at most every ``backoff_s * 2**6`` seconds."""


REPLICA_FAILURES: frozenset[str] = frozenset({"connection", "timeout"})
"""Reasons (``LLMResult.reason``) that count against a replica, besides every ``http_5xx``."""


def is_replica_failure(reason: str) -> bool:
    """A failure that says the replica is unwell, not the request: unreachable, 5xx, timeout."""
    return reason in REPLICA_FAILURES or (reason.startswith("http_5") and len(reason) == 8)


class Replica:
    """One replica's URL and health."""

    __slots__ = ("aside_until", "doublings", "failures", "in_flight", "index", "probing", "url")

    def __init__(self, url: str, index: int) -> None:
        self.url = url
        self.index = index
        self.in_flight = 0
        self.failures = 0  # consecutive
        self.aside_until = 0.0  # 0: in service
        self.doublings = -1  # how often its back-off doubled (-1: never set aside since it last served)
        self.probing = False

    def __repr__(self) -> str:
        state = "in service" if not self.aside_until else f"set aside until {self.aside_until:.1f}"
        return f"Replica({self.url!r}, {state}, in_flight={self.in_flight}, failures={self.failures})"


class ReplicaSet:
    """The replicas of one endpoint; ``pick`` one per attempt and report the outcome with ``done``."""

    def __init__(
        self, urls: Sequence[str], max_failures: int = 3, backoff_s: float = 5.0, clock=time.monotonic
    ) -> None:
        if not urls:
            raise ValueError("a replica set needs at least one URL")
        if max_failures < 1 or backoff_s <= 0:
            raise ValueError("max_failures must be >= 1 and backoff_s > 0")
        self.replicas = [Replica(url, i) for i, url in enumerate(urls)]
        self.max_failures = max_failures
        self.backoff_s = backoff_s
        self._clock = clock
        self._turn = 0

    def __len__(self) -> int:
        return len(self.replicas)

    def pick(self, avoid: Replica | None = None) -> Replica:
        """The replica for the next attempt (counted in flight until ``done``).

        A replica due for its probe comes first; otherwise the one in service with the fewest in
        flight, ties in turn. ``avoid`` (the replica the previous attempt failed on) is taken only
        when no other can serve.
        """
        now = self._clock()
        best: Replica | None = None
        count = len(self.replicas)
        start = self._turn
        self._turn = (self._turn + 1) % count
        for step in range(count):
            replica = self.replicas[(start + step) % count]
            if replica is avoid:
                continue
            if replica.aside_until:
                if replica.probing or replica.aside_until > now:
                    continue
                replica.probing = True  # its time is up: this request probes it
                return self._take(replica)
            if best is None or replica.in_flight < best.in_flight:
                best = replica
        if best is None:
            if avoid is not None and not avoid.aside_until:
                best = avoid
            else:  # every replica is set aside (or probing): the one due first, as a single URL would
                best = min(self.replicas, key=lambda r: r.aside_until)
        return self._take(best)

    @staticmethod
    def _take(replica: Replica) -> Replica:
        replica.in_flight += 1
        return replica

    def done(self, replica: Replica, reason: str | None) -> None:
        """Report an attempt's outcome: ``reason`` None for an answer, else its failure reason;
        ``""`` for an attempt that ended without a verdict (cancelled)."""
        replica.in_flight -= 1
        probe, replica.probing = replica.probing, False
        if reason is None:
            if replica.aside_until:
                log.warning("replica %s answers again: back in service", replica.url)
            replica.failures = 0
            replica.aside_until = 0.0
            replica.doublings = -1
            return
        if not reason or not is_replica_failure(reason):
            return
        replica.failures += 1
        if probe or (not replica.aside_until and replica.failures >= self.max_failures):
            replica.doublings = min(replica.doublings + 1, MAX_BACKOFF_DOUBLINGS)
            pause = self.backoff_s * (2**replica.doublings)
            replica.aside_until = self._clock() + pause
            log.warning(
                "replica %s set aside after %d failures in a row (last: %s); probed again in %.0f s",
                replica.url, replica.failures, reason, pause,
            )  # fmt: skip

    def available(self, avoid: Replica | None = None) -> bool:
        """Whether a replica other than ``avoid`` is in service (a failover need not wait)."""
        return any(r is not avoid and not r.aside_until for r in self.replicas)
