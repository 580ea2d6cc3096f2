"""The process's one asyncio event loop for API I/O, on a daemon thread, shared by every shard.

Prefect runs a process's shards in several threads; each calls a backend's synchronous ``run``.
All of their HTTP requests run here, on one loop (DESIGN §5), so an endpoint's budgets
(``infra.llm.limiter``) are plain loop-confined objects, and each base URL has one aiohttp session
(one connector, keep-alive connections) reused by every run in the process.

- ``submit(coro)`` runs a coroutine on the loop from any other thread and returns a ``Job``
  (cancel it, wait for it, read its outcome).
- ``shared_session(key, factory)`` (on the loop) leases the session of one base URL, creating it
  on first use; ``retire_session(key)`` makes later runs open a fresh one and closes the old one
  once its current runs end.
- The loop starts on first use. A forked child starts its own on first use (the parent's thread
  does not exist there, and its sockets are the parent's: they are left alone, never closed). At
  interpreter exit, after every non-daemon thread has ended, the runs still going (daemon
  threads') are cancelled, the sessions closed and the thread joined; ``shutdown()`` does the
  same on demand, and the next use starts a fresh loop.
- When the run stops (``infra.stop``), the loop tells every subscriber (``on_stop``, on the loop):
  a backend's run then starts no new request and abandons those on the wire at the stop's deadline.
- Host names are resolved on threads of our own, not the default executor: once the interpreter
  begins to exit, the default executor refuses new work ("cannot schedule new futures after
  interpreter shutdown"), while non-daemon shard threads may still be sending requests.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ultrafeedback.infra import stop

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "Job",
    "get_loop",
    "in_loop_thread",
    "on_stop",
    "open_sessions",
    "retire_session",
    "shared_session",
    "shutdown",
    "submit",
]

log = logging.getLogger(__name__)

_THREAD_NAME = "llm-io-loop"
_SHUTDOWN_TIMEOUT_S = 10.0


class _IOEventLoop(asyncio.SelectorEventLoop):
    """The selector loop, resolving host names on daemon threads of its own (see the module doc)."""

    io: _IOThread

    async def getaddrinfo(  # type: ignore[override]
        self, host: Any, port: Any, *, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list[Any]:
        future: asyncio.Future[list[Any]] = self.create_future()

        def settle(outcome: Any, failed: bool) -> None:
            if not future.done():
                (future.set_exception if failed else future.set_result)(outcome)

        def lookup() -> None:
            try:
                outcome, failed = socket.getaddrinfo(host, port, family, type, proto, flags), False
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
                outcome, failed = exc, True
            try:
                self.call_soon_threadsafe(settle, outcome, failed)
            except RuntimeError:  # the loop closed meanwhile: nobody waits any more
                pass

        threading.Thread(target=lookup, name=f"{_THREAD_NAME}-resolve", daemon=True).start()
        return await future


class _Lease:
    """One base URL's session and how many runs use it now."""

    __slots__ = ("retired", "session", "users")

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.users = 0
        self.retired = False


class _IOThread:
    """The loop, its thread, the process it belongs to and (touched only on the loop) its sessions."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = _IOEventLoop()
        self.loop.io = self
        self.sessions: dict[str, _Lease] = {}
        self.closing: set[asyncio.Task[None]] = set()
        self.stop_callbacks: set[Callable[[], None]] = set()
        self.stopping = False
        started = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(started,), name=_THREAD_NAME, daemon=True)
        self.thread.start()
        started.wait()

    @property
    def alive(self) -> bool:
        return not self.stopping and self.thread.is_alive() and not self.loop.is_closed()

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(started.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

    # ------------------------------------------------------------------ on the loop
    def lease(self, key: str, factory: Callable[[], aiohttp.ClientSession]) -> _Lease:
        lease = self.sessions.get(key)
        if lease is None or lease.session.closed:
            lease = self.sessions[key] = _Lease(factory())
        lease.users += 1
        return lease

    def unlease(self, lease: _Lease) -> None:
        lease.users -= 1
        if lease.retired and lease.users == 0:
            self._close_later(lease)

    def retire(self, key: str | None) -> None:
        keys = list(self.sessions) if key is None else [key]
        for name in keys:
            lease = self.sessions.pop(name, None)
            if lease is not None:
                lease.retired = True
                if lease.users == 0:
                    self._close_later(lease)

    def _close_later(self, lease: _Lease) -> None:
        task = self.loop.create_task(lease.session.close())
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    def run_stopped(self) -> None:
        for callback in list(self.stop_callbacks):
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - the other subscribers must hear of it too
                log.warning("LLM I/O loop: a stop callback failed: %r", exc)

    async def drain(self) -> None:
        """Cancel every run still going, then close every session."""
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me and t not in self.closing]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.retire(None)
        await asyncio.gather(*self.closing, return_exceptions=True)


_LOCK = threading.Lock()
_CURRENT: _IOThread | None = None
_EXITING = False
_FORKED_AWAY: list[_IOThread] = []
"""A parent's loop as a forked child inherited it: kept referenced, so that no finalizer ever
closes (or warns about) sockets and a selector that belong to the parent."""


def _io() -> _IOThread:
    """This process's I/O thread, started (or restarted after a fork or a shutdown) if need be."""
    global _CURRENT
    io = _CURRENT
    if io is not None and io.pid == os.getpid() and io.alive:
        return io
    with _LOCK:
        io = _CURRENT
        if io is not None and io.pid != os.getpid():
            _FORKED_AWAY.append(io)
            io = _CURRENT = None
        if io is None or not io.alive:
            if _EXITING:
                raise RuntimeError("the interpreter is exiting: no new API requests can start")
            io = _CURRENT = _IOThread()
        return io


def _running_io_loop() -> _IOEventLoop | None:
    """The I/O loop if it runs the caller (also while it shuts down), else None."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop if isinstance(loop, _IOEventLoop) else None


def get_loop() -> asyncio.AbstractEventLoop:
    """The process's I/O loop, started on first use."""
    return _io().loop


def in_loop_thread() -> bool:
    """Whether the caller runs on the I/O loop's thread (where blocking on a run would deadlock)."""
    return _running_io_loop() is not None


class Job:
    """A coroutine running on the I/O loop, seen from another thread.

    ``on_done`` is called on the loop once the coroutine has finished (also when it was cancelled
    before it started); it must not block.
    """

    def __init__(
        self, io: _IOThread, coro: Coroutine[Any, Any, Any], on_done: Callable[[], None] | None
    ) -> None:
        self._loop = io.loop
        self._coro: Coroutine[Any, Any, Any] | None = coro
        self._task: asyncio.Task[Any] | None = None
        self._cancelled = False
        self._finished = threading.Event()
        self._on_done = on_done
        try:
            self._loop.call_soon_threadsafe(self._start)
        except RuntimeError:  # the loop closed between the lookup and now
            coro.close()
            raise RuntimeError("the I/O loop shut down; submit again") from None

    # on the loop
    def _start(self) -> None:
        coro, self._coro = self._coro, None
        assert coro is not None
        if self._cancelled:
            coro.close()
            self._finish()
            return
        self._task = self._loop.create_task(coro)
        self._task.add_done_callback(lambda _: self._finish())

    def _finish(self) -> None:
        self._finished.set()
        if self._on_done is not None:
            self._on_done()

    def _cancel(self) -> None:
        self._cancelled = True
        if self._task is not None:
            self._task.cancel()

    # from any thread
    def cancel(self) -> None:
        """Ask the loop to cancel the coroutine (its requests stop); ``wait`` for it to have stopped."""
        if in_loop_thread():
            self._cancel()
            return
        try:
            self._loop.call_soon_threadsafe(self._cancel)
        except RuntimeError:  # the loop is gone, and the coroutine with it
            pass

    def done(self) -> bool:
        return self._finished.is_set()

    def lost(self) -> bool:
        """The loop closed before the coroutine finished (a shutdown raced the submission)."""
        return not self._finished.is_set() and self._loop.is_closed()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the coroutine has finished; False if ``timeout`` passed first."""
        return self._finished.wait(timeout)

    def result(self) -> Any:
        """The coroutine's result, or its exception raised here, once ``done``."""
        task = self._task
        if task is None or task.cancelled() or not task.done():
            if self._cancelled:
                raise asyncio.CancelledError()
            raise RuntimeError("the I/O loop shut down before this work finished")
        return task.result()


def submit(coro: Coroutine[Any, Any, Any], on_done: Callable[[], None] | None = None) -> Job:
    """Run ``coro`` on the I/O loop (started if need be); call from any thread but the loop's."""
    if in_loop_thread():
        coro.close()
        raise RuntimeError("already on the I/O loop: await the coroutine instead of submitting it")
    return Job(_io(), coro, on_done)


@asynccontextmanager
async def shared_session(
    key: str, factory: Callable[[], aiohttp.ClientSession]
) -> AsyncIterator[aiohttp.ClientSession]:
    """On the I/O loop: the session of ``key`` (a base URL), made by ``factory`` on first use."""
    loop = _running_io_loop()
    if loop is None:
        raise RuntimeError("shared sessions live on the process's I/O loop (infra.llm.loop.submit)")
    io = loop.io
    lease = io.lease(key, factory)
    try:
        yield lease.session
    finally:
        io.unlease(lease)


def on_stop(callback: Callable[[], None]) -> Callable[[], None]:
    """On the I/O loop: call ``callback`` (on the loop; it must not block) when the run stops
    (``infra.stop.request``). Returns the function that unsubscribes it. A stop requested before
    the subscription is not replayed: check ``infra.stop.requested()`` after subscribing."""
    loop = _running_io_loop()
    if loop is None:
        raise RuntimeError("on_stop() subscribes on the process's I/O loop (infra.llm.loop.submit)")
    callbacks = loop.io.stop_callbacks
    callbacks.add(callback)
    return lambda: callbacks.discard(callback)


def _run_stopped() -> None:
    """``infra.stop``'s listener: tell the loop's subscribers, on the loop (from any thread)."""
    io = _CURRENT
    if io is None or io.pid != os.getpid() or not io.alive:
        return
    if in_loop_thread():
        io.run_stopped()
        return
    try:
        io.loop.call_soon_threadsafe(io.run_stopped)
    except RuntimeError:  # closed meanwhile: nothing runs on it any more
        pass


def retire_session(key: str | None = None) -> None:
    """Later runs of ``key`` (of every key when None) open a fresh session; the current one is
    closed as soon as no run uses it. A no-op where no loop runs."""
    io = _CURRENT
    if io is None or io.pid != os.getpid() or not io.alive:
        return
    if in_loop_thread():
        io.retire(key)
        return
    try:
        io.loop.call_soon_threadsafe(io.retire, key)
    except RuntimeError:
        pass


def open_sessions() -> dict[str, aiohttp.ClientSession]:
    """The sessions open now, by key (a snapshot)."""
    io = _CURRENT
    if io is None or io.pid != os.getpid():
        return {}
    return {key: lease.session for key, lease in dict(io.sessions).items()}


def shutdown(timeout: float = _SHUTDOWN_TIMEOUT_S) -> None:
    """Cancel the runs still going, close every session and stop the loop's thread.

    Blocks for at most about ``timeout`` seconds; the next use starts a fresh loop.
    """
    global _CURRENT
    with _LOCK:
        io, _CURRENT = _CURRENT, None
        if io is None:
            return
        if io.pid != os.getpid():
            _FORKED_AWAY.append(io)
            return
        io.stopping = True
    if threading.current_thread() is io.thread:
        raise RuntimeError("shutdown() cannot run on the I/O loop it stops")
    if io.loop.is_closed():
        return
    try:
        asyncio.run_coroutine_threadsafe(io.drain(), io.loop).result(timeout)
    except Exception as exc:  # noqa: BLE001 - stopping anyway
        log.warning("LLM I/O loop: runs or sessions did not close cleanly: %r", exc)
    try:
        io.loop.call_soon_threadsafe(io.loop.stop)
    except RuntimeError:  # closed already
        return
    io.thread.join(timeout)
    if io.thread.is_alive():
        log.warning("LLM I/O loop: its thread did not stop within %.0f s", timeout)


def _at_exit() -> None:
    global _EXITING
    _EXITING = True
    shutdown()


def _after_fork_in_child() -> None:
    global _CURRENT, _LOCK
    _LOCK = threading.Lock()  # another thread of the parent may have held it
    if _CURRENT is not None:
        _FORKED_AWAY.append(_CURRENT)
        _CURRENT = None


# registered at import, early in a process's life, so never "after shutdown"; atexit runs after
# the interpreter has joined every non-daemon thread, so no shard thread is still waiting on a run
atexit.register(_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
stop.add_listener(_run_stopped)
