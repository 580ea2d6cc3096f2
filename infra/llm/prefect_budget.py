"""An endpoint's budgets held by the Prefect server: shared by every process on every machine that
talks to the same Prefect API (``execution.budget_dir: prefect``, or ``$ULTRAFEEDBACK_BUDGET_DIR=prefect``).

``infra.llm.shared_budget`` shares budgets through files, which only the processes of one machine
see. A build spread over machines (a CPU worker, GPU workers, several builds on one API key)
already has a Prefect server in common, so its global concurrency limits hold the budgets:

- **Rates** (``PrefectRateLimiter``): one rate-limit GCL per budget, ``{prefix}-requests`` and
  ``{prefix}-tokens``, whose slots decay at the budget's rate (``slot_decay_per_second`` = per
  minute / 60) and whose size is one second's worth (the burst). A process does not ask the server
  for every request: it takes half the burst at a time and spends it locally, asking for the next
  half before the last one is spent (so the server's latency does not stall requests). Over any
  minute the requests started are at most the budget plus the burst plus what each process took
  and had not spent (at most a burst each).
- **In flight** (``PrefectInFlight``): one concurrency GCL ``{prefix}-in-flight`` of the endpoint's
  ``max_in_flight`` slots. A process holds server slots in leases of an eighth of the limit: a
  caller takes one of the process's free server slots, or a new lease when none is free; every
  ``IDLE_S`` the leases beyond that time's peak use plus a lease's worth go back (all of them when
  nothing was on the wire). A lease is renewed every ``lease_s / 3``
  by a background thread; a process that dies stops renewing, and the server frees its slots when
  the lease runs out (``lease_s``, 60 s), so a crash cannot keep the budget.

The server's ``Retry-After`` for a denied take counts every take denied lately, and each denial
moves the limit's decay clock (decay is applied in whole slots since the last update), so callers
that obey it and poll often use half the budget or less. A denied take here waits the time its
slots need to decay (slots / rate, with jitter) and takes half a second's worth at a time, which
keeps the polling down to a few calls a second per process.

Tokens are booked at the request's estimate when it starts, as the in-process limiter does; a 429's
``Retry-After`` pauses this process only (the server's rate limit is what keeps the others under
the budget). Calls to the server run in worker threads (``asyncio.to_thread``), never on the I/O
loop. The limits are created on first use, and updated when a process brings other rates (the
last process to start decides); ``prefect gcl ls`` shows them.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import random
import threading
import time
import weakref
from typing import TYPE_CHECKING

from ultrafeedback.infra.llm.limiter import InFlightLimit, RateLimiter, registered_in_flight, registered_limiter

if TYPE_CHECKING:
    from uuid import UUID

__all__ = ["PREFECT", "PrefectInFlight", "PrefectRateLimiter", "prefect_in_flight", "prefect_limiter"]

log = logging.getLogger(__name__)

PREFECT = "prefect"
"""The ``budget_dir`` value that keeps budgets on the Prefect server instead of in a folder."""
LIMIT_PREFIX = "ultrafeedback-budget"
BURST_S = 1.0
"""A rate limit's size: this many seconds of its rate (at least one unit)."""
LEASE_S = 60.0
IDLE_S = 2.0
"""Every this often a process gives back the in-flight leases this time did not need (beyond its
peak of requests on the wire plus a lease's worth; all of them when none was on the wire)."""
_LOCKED = 423


class _Server:
    """The Prefect API's global concurrency limits, through the synchronous client (thread-safe;
    called from worker threads)."""

    def __init__(self) -> None:
        from prefect.client.orchestration import get_client

        self._client = get_client(sync_client=True)
        self._client.__enter__()
        self._lock = threading.Lock()

    def ensure(self, name: str, limit: int, decay: float | None) -> None:
        """Create the limit, or set its size and decay when they differ. Processes starting together
        may race to create it: the loser (a 409, or a 500 from SQLite's unique constraint) reads it."""
        import httpx
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
        from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

        with self._lock:
            for attempt in range(5):
                try:
                    current = self._client.read_global_concurrency_limit_by_name(name)
                except ObjectNotFound:
                    try:
                        self._client.create_global_concurrency_limit(
                            GlobalConcurrencyLimitCreate(name=name, limit=limit, slot_decay_per_second=decay or 0.0)
                        )
                        return
                    except (ObjectAlreadyExists, httpx.HTTPStatusError):
                        if attempt == 4:
                            raise
                        time.sleep(0.1 * (attempt + 1))
                        continue
                stale = current.limit != limit or (current.slot_decay_per_second or 0.0) != (decay or 0.0)
                if stale or not current.active:
                    self._client.update_global_concurrency_limit(
                        name,
                        GlobalConcurrencyLimitUpdate(limit=limit, slot_decay_per_second=decay or 0.0, active=True),
                    )
                return

    def take(self, name: str, slots: int) -> bool:
        """Occupy ``slots`` of a rate limit; False when the limit has not that many free (the caller
        waits for them to decay, not for the server's ``Retry-After``: see the module's note)."""
        import httpx

        try:
            self._client.increment_concurrency_slots(names=[name], slots=slots, mode="rate_limit")
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != _LOCKED:
                raise
            return False
        return True

    def lease(self, name: str, slots: int, lease_s: float) -> UUID | float:
        """Hold ``slots`` of a concurrency limit under a lease: its id, or the seconds to wait."""
        import httpx

        try:
            response = self._client.increment_concurrency_slots_with_lease(
                names=[name], slots=slots, mode="concurrency", lease_duration=lease_s
            )
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != _LOCKED:
                raise
            return max(float(exc.response.headers.get("Retry-After", 0.05)), 0.01)
        from uuid import UUID

        return UUID(str(response.json()["lease_id"]))

    def renew(self, lease_id: UUID, lease_s: float) -> None:
        self._client.renew_concurrency_lease(lease_id, lease_s)

    def release(self, lease_id: UUID) -> None:
        self._client.release_concurrency_slots_with_lease(lease_id)


_SERVER: _Server | None = None
_SERVER_LOCK = threading.Lock()


def _server() -> _Server:
    global _SERVER
    with _SERVER_LOCK:
        if _SERVER is None:
            _SERVER = _Server()
        return _SERVER


def limit_name(key: str, budget: str) -> str:
    """The GCL of one budget (``requests``, ``tokens``, ``in-flight``) of an endpoint key."""
    return f"{LIMIT_PREFIX}-{key}-{budget}"


class _Credit:
    """One rate budget on the server, taken in batches and spent here. A take runs ahead of the
    spending (when less than a batch is left, the next batch is asked for in the background), so
    the server's latency does not stall the requests."""

    def __init__(self, server: _Server, name: str, per_minute: float) -> None:
        self.server, self.name = server, name
        self.size = max(1, math.ceil(per_minute / 60.0 * BURST_S))
        self.batch = max(1, self.size // 2)
        self.rate = per_minute / 60.0
        self.left = 0
        self._wanted = 0  # the units a waiting caller needs
        self._filler: asyncio.Task[None] | None = None
        self._credited: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        server.ensure(name, self.size, self.rate)

    async def draw(self, amount: int) -> None:
        """Wait until ``amount`` units are ours, then spend them (an amount over the limit's size is
        taken in several batches)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (a new run): its own event and filler
            self._loop, self._credited, self._filler = loop, asyncio.Event(), None
        assert self._credited is not None
        while self.left < amount:
            self._wanted = amount
            self._fill()
            self._credited.clear()
            await self._credited.wait()
        self._wanted = 0
        self.left -= amount
        self._fill()  # ask for the next batch before this one runs out

    def _fill(self) -> None:
        if self.left < max(self.batch, self._wanted) and (self._filler is None or self._filler.done()):
            self._filler = asyncio.get_running_loop().create_task(self._take())

    async def _take(self) -> None:
        assert self._credited is not None
        while self.left < max(self.batch, self._wanted):
            slots = min(self.size, max(self.batch, self._wanted - self.left))
            if await asyncio.to_thread(self.server.take, self.name, slots):
                self.left += slots
                self._credited.set()
            else:  # the time for that many slots to decay, with jitter (see the module's note on Retry-After)
                await asyncio.sleep(slots / self.rate * random.uniform(0.8, 1.2))


class PrefectRateLimiter(RateLimiter):
    """``RateLimiter`` whose requests and tokens per minute are rate limits on the Prefect server."""

    def __init__(self, key: str, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        self.key = key
        self._credits: dict[str, _Credit] = {}
        self._queue: asyncio.Lock | None = None
        self._queue_loop: asyncio.AbstractEventLoop | None = None
        super().__init__(requests_per_minute, tokens_per_minute)

    def configure(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        super().configure(requests_per_minute, tokens_per_minute)
        server = _server()
        credits = {}
        for budget, rate in (("requests", requests_per_minute), ("tokens", tokens_per_minute)):
            if rate:
                credits[budget] = _Credit(server, limit_name(self.key, budget), rate)
        self._credits = credits

    async def acquire(self, tokens: int = 0) -> None:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._queue_loop is not loop:
            self._queue, self._queue_loop = asyncio.Lock(), loop
        async with self._queue:  # FIFO: one caller draws at a time
            if "requests" in self._credits:
                await self._credits["requests"].draw(1)
            if "tokens" in self._credits and tokens > 0:
                await self._credits["tokens"].draw(int(tokens))
        while (delay := self._paused_until - time.monotonic()) > 0:  # a 429's Retry-After
            await asyncio.sleep(delay)

    def __repr__(self) -> str:
        return f"PrefectRateLimiter({self.key!r}, {self.requests_per_minute}, {self.tokens_per_minute})"


class PrefectInFlight(InFlightLimit):
    """``InFlightLimit`` that also holds the requests on the wire in server leases of a
    concurrency GCL shared by every process using the endpoint."""

    def __init__(self, key: str, limit: int, lease_s: float = LEASE_S) -> None:
        self.key, self.name, self.lease_s = key, limit_name(key, "in-flight"), lease_s
        self._server = _server()
        self._leases: list[tuple[UUID, int]] = []
        self._held = 0
        self._on_wire = 0  # callers holding one of this process's server slots
        self._peak = 0  # the most on the wire since the renewer last looked
        self._lease_lock = threading.Lock()
        self._grow: asyncio.Lock | None = None
        self._grow_loop: asyncio.AbstractEventLoop | None = None
        self._renewer: threading.Thread | None = None
        super().__init__(limit)
        self._server.ensure(self.name, limit, None)
        _IN_FLIGHT.add(self)

    @property
    def chunk(self) -> int:
        return max(1, self.limit // 8)

    def set_limit(self, limit: int) -> None:
        super().set_limit(limit)
        self._server.ensure(self.name, limit, None)

    async def acquire(self) -> None:
        await super().acquire()  # this process's share, FIFO
        try:
            loop = asyncio.get_running_loop()
            if self._grow is None or self._grow_loop is not loop:
                self._grow, self._grow_loop = asyncio.Lock(), loop
            async with self._grow:
                while True:
                    with self._lease_lock:
                        if self._on_wire < self._held:  # a server slot this process holds is free
                            self._on_wire += 1
                            self._peak = max(self._peak, self._on_wire)
                            return
                    slots = max(1, min(self.chunk, self.limit - self._held))
                    got = await asyncio.to_thread(self._server.lease, self.name, slots, self.lease_s)
                    if isinstance(got, float):
                        await asyncio.sleep(got)
                        continue
                    with self._lease_lock:
                        self._leases.append((got, slots))
                        self._held += slots
                    self._start_renewer()
        except BaseException:
            super().release()
            raise

    def release(self) -> None:
        with self._lease_lock:
            self._on_wire = max(0, self._on_wire - 1)
        super().release()

    def _give_back(self, lease_id: UUID) -> None:
        try:
            self._server.release(lease_id)
        except Exception as exc:  # noqa: BLE001 - the lease runs out by itself
            log.warning(
                "in-flight budget %s: could not release a lease (%s); it expires in %.0f s", self.key, exc, self.lease_s
            )

    def _start_renewer(self) -> None:
        if self._renewer is not None and self._renewer.is_alive():
            return
        self._renewer = threading.Thread(target=self._renew_forever, name=f"lease-{self.key}", daemon=True)
        self._renewer.start()

    def _renew_forever(self) -> None:
        """Every ``IDLE_S``: give back the leases that time did not need (beyond its peak of requests
        on the wire plus a lease's worth; all of them when none was on the wire); renew the others
        every ``lease_s / 3``. Keeping leases while busy saves a server round trip per request;
        giving the excess back lets the other processes have it."""
        renewed = checked = time.monotonic()
        while True:
            time.sleep(min(IDLE_S / 2, self.lease_s / 3))
            now = time.monotonic()
            spare: list[UUID] = []
            with self._lease_lock:
                if now - checked >= IDLE_S:
                    keep = self._peak + self.chunk if self._peak else 0
                    while self._leases and self._held - self._leases[-1][1] >= keep:
                        lease_id, slots = self._leases.pop()
                        self._held -= slots
                        spare.append(lease_id)
                    self._peak, checked = self._on_wire, now
                leases = [lease_id for lease_id, _ in self._leases]
            for lease_id in spare:
                self._give_back(lease_id)
            if now - renewed < self.lease_s / 3:
                continue
            renewed = now
            for lease_id in leases:
                try:
                    self._server.renew(lease_id, self.lease_s)
                except Exception as exc:  # noqa: BLE001 - logged; the next round tries again
                    log.warning("in-flight budget %s: lease renewal failed (%s)", self.key, exc)

    def close(self) -> None:
        """Give every lease back (at exit; a killed process's leases run out instead)."""
        with self._lease_lock:
            leases, self._leases, self._held = [lease for lease, _ in self._leases], [], 0
        for lease_id in leases:
            self._give_back(lease_id)

    def __repr__(self) -> str:
        return f"PrefectInFlight({self.key!r}, limit={self.limit}, in_use={self.in_use}, held={self._held})"


_IN_FLIGHT: weakref.WeakSet[PrefectInFlight] = weakref.WeakSet()
_LIMITERS: dict[str, RateLimiter] = {}
_SLOTS: dict[str, InFlightLimit] = {}


def prefect_limiter(key: str, requests_per_minute: float | None, tokens_per_minute: float | None) -> RateLimiter:
    """The process's one ``PrefectRateLimiter`` of ``key`` (reconfigured if the rates changed)."""
    make = lambda: PrefectRateLimiter(key, requests_per_minute, tokens_per_minute)  # noqa: E731
    return registered_limiter(_LIMITERS, key, make, requests_per_minute, tokens_per_minute)


def prefect_in_flight(key: str, limit: int) -> InFlightLimit:
    """The process's one ``PrefectInFlight`` of ``key`` (a changed limit applied)."""
    return registered_in_flight(_SLOTS, key, lambda: PrefectInFlight(key, limit), limit)


@atexit.register
def _release_at_exit() -> None:
    for slots in list(_IN_FLIGHT):
        slots.close()
