"""An endpoint's budgets shared by every process on one machine, through files in a local folder.

``infra.llm.limiter`` keeps an endpoint's budgets (requests and tokens per minute, requests in
flight) for one process. Several processes on a machine using one endpoint (Prefect workers,
several builds, the shard processes of a job) would each spend the whole budget. With a budget
folder (``execution.budget_dir`` or ``$ULTRAFEEDBACK_BUDGET_DIR``) every process that names the
same folder shares one budget per endpoint:

- **Rates** (``SharedRateLimiter``): the token buckets' state (level and time stamp per bucket,
  the pause of a 429) lives in ``{folder}/{endpoint}.rate``; each reservation reads, updates and
  writes it under ``flock``, the same reservation scheme as ``RateLimiter`` (a caller books its
  request, the bucket may go into debt, the caller sleeps until its debt is paid). Nothing is held
  between reservations, so a killed process leaves nothing behind. Time is ``CLOCK_MONOTONIC``,
  one clock for every process of the machine (a file from before a reboot is started afresh).
- **In flight** (``SharedInFlight``): slot ``i`` of the endpoint is a POSIX record lock on byte
  ``i`` of ``{folder}/{endpoint}.slots``, held while a request is on the wire. The kernel drops a
  dead process's locks, so a crash frees its slots at once. The process's own waiters queue FIFO
  in the process (``InFlightLimit``); only the oldest looks for a free machine slot, polling
  (1 ms, doubling to 20 ms) while every slot is taken.

Why files and not Prefect's global concurrency and rate limits: those need the Prefect server on
every request (an HTTP round trip per acquisition, two for a concurrency slot), a rate limit counts
request starts only (no tokens), and a flow run from the command line often has only an ephemeral
server. A local file costs a few system calls per request and no server, and holds across every
process of a machine; budgets across machines are not covered (see ``docs/operations.md``). Without
a folder nothing here runs: the single-process path is unchanged.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import re
import struct
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ultrafeedback.infra.llm.limiter import InFlightLimit, RateLimiter, registered_in_flight, registered_limiter

__all__ = ["SharedInFlight", "SharedRateLimiter", "budget_key", "shared_in_flight", "shared_limiter"]

_STATE = struct.Struct("<5d")
"""requests level, requests stamp, tokens level, tokens stamp, paused until (monotonic seconds)."""
_STALE_S = 3600.0
"""A stamp this far in the future is from before a reboot (the monotonic clock started over)."""
_POLL_FIRST_S = 0.001
_POLL_MAX_S = 0.02


def budget_key(name: str, urls: Sequence[str]) -> str:
    """The file name stem of an endpoint's budget: its name and its URLs (two specs naming one
    endpoint alike, at the same URLs, share it)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:60]
    digest = hashlib.sha256("\n".join(sorted(u.rstrip("/") for u in urls)).encode()).hexdigest()[:12]
    return f"{safe}-{digest}"


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


class SharedRateLimiter(RateLimiter):
    """``RateLimiter`` whose buckets live in a file shared by the machine's processes."""

    def __init__(self, path: Path, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        self.path = Path(path)
        self._fd = _open(self.path)
        _SHARED.add(self)
        super().__init__(requests_per_minute, tokens_per_minute)

    @contextmanager
    def _shared(self, now: float) -> Iterator[None]:
        """Under the file's lock: the buckets as the file has them, written back on exit."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(self._fd, _STATE.size, 0)
            if len(raw) == _STATE.size:
                req_level, req_stamp, tok_level, tok_stamp, paused = _STATE.unpack(raw)
                if max(req_stamp, tok_stamp, paused) <= now + _STALE_S:
                    for bucket, level, stamp in (
                        (self._requests, req_level, req_stamp),
                        (self._tokens, tok_level, tok_stamp),
                    ):
                        if bucket is not None and stamp > 0:
                            bucket.level, bucket.stamp = min(level, bucket.capacity), stamp
                    self._paused_until = max(self._paused_until, paused)
            yield
            state = (
                self._requests.level if self._requests else 0.0,
                self._requests.stamp if self._requests else 0.0,
                self._tokens.level if self._tokens else 0.0,
                self._tokens.stamp if self._tokens else 0.0,
                self._paused_until,
            )
            os.pwrite(self._fd, _STATE.pack(*state), 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def reserve(self, tokens: int = 0) -> float:
        now = time.monotonic()
        with self._lock, self._shared(now):
            return self._book(tokens, now)

    def penalize(self, seconds: float) -> None:
        if seconds > 0:
            now = time.monotonic()
            with self._lock, self._shared(now):
                self._pause(now, now + seconds)

    def _reopen(self) -> None:  # in a forked child: flock belongs to the open file, shared with the parent
        os.close(self._fd)
        self._fd = _open(self.path)

    def __repr__(self) -> str:
        return f"SharedRateLimiter({str(self.path)!r}, {self.requests_per_minute}, {self.tokens_per_minute})"


class SharedInFlight(InFlightLimit):
    """``InFlightLimit`` that also holds one of the machine's ``limit`` slots while in use."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = Path(path)
        self._fd = _open(self.path)
        self._held: set[int] = set()
        self._held_lock = threading.Lock()
        self._head: asyncio.Lock | None = None
        self._head_loop: asyncio.AbstractEventLoop | None = None
        self._turn = 0
        _SHARED.add(self)
        super().__init__(limit)

    def _try_slot(self) -> bool:
        limit = self.limit
        with self._held_lock:
            for step in range(limit):
                slot = (self._turn + step) % limit
                if slot in self._held:
                    continue  # record locks are the process's: ours would be granted again
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
                except OSError:
                    continue
                self._held.add(slot)
                self._turn = slot + 1
                return True
        return False

    async def acquire(self) -> None:
        await super().acquire()  # this process's share, FIFO
        try:
            if not self._try_slot():
                loop = asyncio.get_running_loop()
                if self._head is None or self._head_loop is not loop:
                    self._head, self._head_loop = asyncio.Lock(), loop
                async with self._head:  # the oldest waiter polls, the others queue behind it
                    delay = _POLL_FIRST_S
                    while not self._try_slot():
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, _POLL_MAX_S)
        except BaseException:
            super().release()
            raise

    def release(self) -> None:
        with self._held_lock:
            if self._held:
                slot = self._held.pop()
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, slot)
        super().release()

    def _forget_holders(self) -> None:  # a forked child holds none of the parent's record locks
        super()._forget_holders()
        self._held_lock = threading.Lock()
        self._held = set()
        self._head = self._head_loop = None

    def _reopen(self) -> None:
        os.close(self._fd)
        self._fd = _open(self.path)

    def __repr__(self) -> str:
        return f"SharedInFlight({str(self.path)!r}, limit={self.limit}, in_use={self.in_use})"


_SHARED: weakref.WeakSet[SharedRateLimiter | SharedInFlight] = weakref.WeakSet()
_LIMITERS: dict[str, RateLimiter] = {}
_SLOTS: dict[str, InFlightLimit] = {}


def shared_limiter(
    folder: str, key: str, requests_per_minute: float | None, tokens_per_minute: float | None
) -> RateLimiter:
    """The process's one ``SharedRateLimiter`` of ``key`` in ``folder`` (reconfigured if the rates changed)."""
    path = Path(folder) / f"{key}.rate"
    make = lambda: SharedRateLimiter(path, requests_per_minute, tokens_per_minute)  # noqa: E731
    return registered_limiter(_LIMITERS, str(path), make, requests_per_minute, tokens_per_minute)


def shared_in_flight(folder: str, key: str, limit: int) -> InFlightLimit:
    """The process's one ``SharedInFlight`` of ``key`` in ``folder`` (a changed limit applied)."""
    path = Path(folder) / f"{key}.slots"
    return registered_in_flight(_SLOTS, str(path), lambda: SharedInFlight(path, limit), limit)


def _after_fork_in_child() -> None:
    for shared in list(_SHARED):
        shared._reopen()


os.register_at_fork(after_in_child=_after_fork_in_child)
