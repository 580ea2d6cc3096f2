"""The process's stop switch: once a run is asked to stop (Ctrl-C, SIGTERM, a cancel from the
Prefect UI, a lost lease), no new request starts anywhere in the process, the requests on the wire
get a short grace period to answer, and then they are abandoned.

- ``request(reason)`` turns it on (from any thread, also from a signal handler); ``requested()``
  and ``reason()`` read it. Listeners (``add_listener``) hear of it at once: the I/O loop of
  ``infra.llm.loop`` halts every run's requests that are not on the wire yet and, at the
  ``deadline()``, those that are.
- Work that does not start because of it raises :class:`Stopped` (``unsent``: how many requests
  were never sent), so a shard can report exactly the calls it made and checkpoint what arrived.
- ``install_signal_handlers()`` (command-line processes): the first SIGINT or SIGTERM stops the
  run gracefully while a pipeline of shards runs (``graceful()``) and interrupts at once
  otherwise (``KeyboardInterrupt``: no request is in flight then); a second one interrupts at once.
- ``reset()`` turns it off again for the next build in the same process.

The grace period is ``execution.stop_grace_s`` of the spec being built (``configure``), default
``DEFAULT_GRACE_S``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 5.0

_lock = threading.RLock()  # re-entrant: a signal handler may run while the main thread holds it
_requested = threading.Event()
_reason: str | None = None
_deadline: float | None = None
_grace_s = DEFAULT_GRACE_S
_listeners: list[Callable[[], None]] = []
_graceful = 0
_handlers_installed = False


class Stopped(Exception):
    """Work that did not start, or was abandoned, because the run is stopping.

    Attributes:
        unsent: requests of the interrupted call that were never sent.
        replayed: requests of it answered from the journal (no call made).
    """

    def __init__(self, message: str | None = None, unsent: int = 0) -> None:
        super().__init__(message or f"stopped: {reason() or 'the run is stopping'}")
        self.unsent = unsent
        self.replayed = 0


def configure(grace_s: float) -> None:
    """Set the grace period of requests on the wire (seconds) for the next stop."""
    global _grace_s
    if grace_s < 0:
        raise ValueError(f"grace period must be >= 0, got {grace_s}")
    _grace_s = float(grace_s)


def grace_s() -> float:
    return _grace_s


def request(why: str) -> bool:
    """Stop the run: no new request starts; True the first time (later calls change nothing)."""
    global _reason, _deadline
    with _lock:
        if _requested.is_set():
            return False
        _reason, _deadline = why, time.monotonic() + _grace_s
        _requested.set()
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener()
        except Exception as exc:  # noqa: BLE001 - a listener must never keep the others from hearing it
            log.warning("stop: a listener failed: %r", exc)
    return True


def requested() -> bool:
    return _requested.is_set()


def reason() -> str | None:
    return _reason


def deadline() -> float | None:
    """When requests still on the wire are abandoned (``time.monotonic()``), None before a stop."""
    return _deadline


def remaining() -> float:
    """Seconds of the grace period left (0 when none is running)."""
    return max(0.0, _deadline - time.monotonic()) if _deadline is not None else 0.0


def check(unsent: int = 0) -> None:
    """Raise :class:`Stopped` when the run is stopping."""
    if _requested.is_set():
        raise Stopped(unsent=unsent)


def reset() -> None:
    """Turn the switch off (a new build starts in this process)."""
    global _reason, _deadline
    with _lock:
        _requested.clear()
        _reason = _deadline = None


def add_listener(listener: Callable[[], None]) -> None:
    """Call ``listener()`` (from the thread that stops the run; it must not block) on each stop."""
    with _lock:
        _listeners.append(listener)


@contextmanager
def graceful() -> Iterator[None]:
    """While the block runs, a first signal stops the run gracefully instead of interrupting it:
    the block is expected to notice (``requested()``) and wind down within the grace period."""
    global _graceful
    _graceful += 1
    try:
        yield
    finally:
        _graceful -= 1


def _on_signal(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    first = request(f"interrupted ({name})")
    if first and _graceful:
        # os.write, not print: the main thread may be inside a write to stderr right now
        message = (
            f"\n{name}: stopping: no new request; the requests on the wire get up to {_grace_s:g} s "
            f"({name} again: stop at once)\n"
        )
        os.write(2, message.encode())
        return
    raise KeyboardInterrupt(f"signal {name}")


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM stop the run (see the module doc); main thread only, else a no-op."""
    global _handlers_installed
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    _handlers_installed = True


@contextmanager
def own_sigterm() -> Iterator[None]:
    """Keep this module's SIGTERM handler for the block where a command-line process installed it
    (Prefect's flow engine replaces it with one that raises at once); elsewhere (a deployment
    run, whose SIGTERM is Prefect's cancel) nothing changes."""
    if not _handlers_installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def shield_local_prefect_server() -> None:
    """Keep a terminal's Ctrl-C away from the temporary Prefect server that a command-line run
    without ``PREFECT_API_URL`` starts as a child process. The terminal signals the whole process
    group: the server would stop at once, and the run, stopping gracefully, could no longer record
    its shards' states or its own (it would hang on retries). Started with SIGINT blocked (the mask
    is inherited through ``exec``), the server still stops with the run (SIGTERM at exit)."""
    if threading.current_thread() is not threading.main_thread():
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the process's one temporary server (started on first use)
    launch = server._run_uvicorn_command
    if getattr(launch, "shielded", False):
        return

    def launch_shielded() -> Any:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return launch()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    launch_shielded.shielded = True  # type: ignore[attr-defined]
    server._run_uvicorn_command = launch_shielded  # type: ignore[method-assign]


def fast_exit() -> None:
    """Skip the full garbage collection at this process's exit: with Prefect, pandas, pyarrow and
    Great Expectations loaded it takes seconds and frees nothing the operating system does not.
    Everything alive is frozen (``gc.freeze``) by an exit handler that runs after the others (it is
    registered first; call this early): they still run, as do ``weakref.finalize`` callbacks."""
    import atexit
    import gc

    atexit.register(gc.freeze)


__all__ = [
    "DEFAULT_GRACE_S",
    "Stopped",
    "add_listener",
    "check",
    "configure",
    "deadline",
    "fast_exit",
    "grace_s",
    "graceful",
    "install_signal_handlers",
    "own_sigterm",
    "reason",
    "remaining",
    "request",
    "requested",
    "reset",
    "shield_local_prefect_server",
]
