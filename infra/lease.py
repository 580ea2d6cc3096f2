"""One run writes a dataset at a time: a lease object in the store, ``{store}/{dataset}/lease.json``.

Every run that writes a dataset (build, refresh, retry-failed, deployment runs) takes the lease
before any work and releases it on the way out (also on an exception, Ctrl-C or SIGTERM). A second
run finds the holder and either stops with :class:`LeaseHeld` (naming the run id, host, pid and
since when) or waits for it (``wait_s``). The holder renews the lease from a daemon thread every
``ttl_s / 3``; a lease not renewed for ``ttl_s`` (its holder was killed) is stale and the next run
takes it over, saying so. A holder whose renewal finds another holder has lost the lease: the run is
interrupted and stops with :class:`LeaseLost`.

What guarantees it:

- **Local folder**: every change (create, renew, take over, release) happens under an exclusive
  ``flock`` of ``.lease.lock`` beside the lease, as a compare-and-swap on the holder's token; the
  lease is created with ``os.link`` (exclusive, and never seen half-written) and replaced with
  ``os.replace``. This holds between processes on one machine (and on file systems with working
  ``flock``, such as NFSv4).
- **S3**: a conditional put: created with ``If-None-Match: *``, renewed and taken over with
  ``If-Match: <ETag>``, released with a conditional delete. AWS S3, SeaweedFS and moto honour
  these (checked by the tests). A server that ignores them is detected once (a probe object written
  twice, the second time with ``If-None-Match``) and then gets a weaker protocol: look, write,
  wait ``settle_s``, read back. Two runs can then both believe they hold the lease only when one's
  write lands more than ``settle_s`` after its look; the next renewal of the other (within
  ``ttl_s / 3``) then finds the changed lease and stops it.
- **Expiry** compares the holder's ``expires`` (its wall clock) with the reader's wall clock: the
  machines' clocks must agree to well within ``ttl_s``.
- A lost lease interrupts the thread that took it (the main thread gets ``KeyboardInterrupt``,
  another an asynchronous :class:`LeaseLost`); shard work already running in other threads ends
  with its current step, so a loss stops new work, not every write in flight.

Settings: ``ULTRAFEEDBACK_LEASE_TTL_S`` (default 60) and, for runs that do not say how long to
wait (deployment runs), ``ULTRAFEEDBACK_LEASE_WAIT_S`` (default 0: stop at once).
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic import BaseModel

from ultrafeedback.infra.store import Store

LEASE_NAME = "lease.json"
DEFAULT_TTL_S = 60.0
TTL_ENV, WAIT_ENV = "ULTRAFEEDBACK_LEASE_TTL_S", "ULTRAFEEDBACK_LEASE_WAIT_S"

log = logging.getLogger("ultrafeedback.lease")


class LeaseInfo(BaseModel):
    """Who holds a dataset's lease, and until when (renewals move ``expires``)."""

    token: str
    run_id: str
    host: str
    pid: int
    command: str
    started: datetime
    expires: datetime
    ttl_s: float

    def expired(self, now: datetime | None = None) -> bool:
        return (now or _now()) >= self.expires

    def describe(self) -> str:
        return (
            f"run {self.run_id} on host {self.host}, pid {self.pid}, since {self.started:%Y-%m-%d %H:%M:%S} UTC "
            f"(lease expires {self.expires:%H:%M:%S} UTC unless renewed; command: {self.command})"
        )


class LeaseError(RuntimeError):
    """The lease could not be read or written."""


class LeaseHeld(LeaseError):
    """Another run holds the dataset's lease (and this one did not wait, or waited in vain)."""

    def __init__(self, where: str, holder: LeaseInfo, waited_s: float | None = None) -> None:
        self.holder = holder
        waited = "" if not waited_s else f" (still held after waiting {waited_s:.0f} s)"
        super().__init__(
            f"the dataset {where} is being written by another {holder.describe()}{waited}; "
            "nothing was done. Wait for it with --wait (deployment runs: ULTRAFEEDBACK_LEASE_WAIT_S); if that "
            f"run is gone, its lease expires {holder.ttl_s:.0f} s after its last renewal and the next run takes it over"
        )


class LeaseLost(LeaseError):
    """Renewal found another holder (or could not renew before expiry): this run must stop."""


def _now() -> datetime:
    return datetime.now(UTC)


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


# --------------------------------------------------------------------------- backends


class _Backend(Protocol):
    """Compare-and-swap on one lease object; ``version`` is what the next change must match."""

    def read(self) -> tuple[LeaseInfo | None, str | None]: ...
    def create(self, info: LeaseInfo) -> str | None: ...
    def replace(self, info: LeaseInfo, version: str) -> str | None: ...
    def delete(self, version: str) -> bool: ...


class _LocalBackend:
    """A file; every change under an exclusive ``flock`` of ``.lease.lock`` (version = token)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.folder = os.path.dirname(path)
        self.lock_path = os.path.join(self.folder, ".lease.lock")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> LeaseInfo | None:
        try:
            with open(self.path, "rb") as handle:
                return _parse(handle.read(), self.path)
        except FileNotFoundError:
            return None

    def _write_tmp(self, info: LeaseInfo) -> str:
        tmp = os.path.join(self.folder, f".lease-{uuid.uuid4().hex}")
        with open(tmp, "wb") as handle:
            handle.write(info.model_dump_json(indent=1).encode())
            handle.flush()
            os.fsync(handle.fileno())
        return tmp

    def read(self) -> tuple[LeaseInfo | None, str | None]:
        with self._locked():
            info = self._read()
        return info, None if info is None else info.token

    def create(self, info: LeaseInfo) -> str | None:
        with self._locked():
            tmp = self._write_tmp(info)
            try:
                os.link(tmp, self.path)  # exclusive like O_CREAT|O_EXCL, and never half-written
                return info.token
            except FileExistsError:
                return None
            finally:
                os.unlink(tmp)

    def replace(self, info: LeaseInfo, version: str) -> str | None:
        with self._locked():
            current = self._read()
            if current is None or current.token != version:
                return None
            os.replace(self._write_tmp(info), self.path)
            return info.token

    def delete(self, version: str) -> bool:
        with self._locked():
            current = self._read()
            if current is None or current.token != version:
                return False
            os.unlink(self.path)
            return True


_CONDITIONAL: dict[tuple[str, str], bool] = {}
"""(endpoint, bucket) -> whether the server honours conditional writes (probed once per process)."""


class _S3Backend:
    """An object; conditional puts and deletes (version = ETag), or look-write-settle-read-back."""

    def __init__(self, fs: Any, path: str, conditional: bool | None = None, settle_s: float = 2.0) -> None:
        self.fs, self.path, self.settle_s = fs, path, settle_s
        self.bucket, self.key = fs.split_path(path)[:2]
        if conditional is None:
            where = (str(getattr(fs, "endpoint_url", None)), self.bucket)
            if where not in _CONDITIONAL:
                _CONDITIONAL[where] = self._probe()
            conditional = _CONDITIONAL[where]
        self.conditional = conditional

    def _put(self, key: str, body: bytes, **condition: str) -> str:
        return self.fs.call_s3("put_object", Bucket=self.bucket, Key=key, Body=body, **condition)["ETag"]

    def _probe(self) -> bool:
        key = f"{self.key.rsplit('/', 1)[0]}/.lease-probe-{uuid.uuid4().hex}"
        self._put(key, b"probe")
        try:
            self._put(key, b"probe again", IfNoneMatch="*")
        except OSError as exc:
            return _precondition_failed(exc)
        finally:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=key)
        log.warning("the S3 server ignores conditional writes: the lease uses write, settle, read back")
        return False

    def read(self) -> tuple[LeaseInfo | None, str | None]:
        from fsspec.asyn import sync

        async def get() -> tuple[bytes, str] | None:
            try:
                response = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            except FileNotFoundError:
                return None
            try:
                return await response["Body"].read(), response["ETag"]
            finally:
                response["Body"].close()

        got = sync(self.fs.loop, get)
        if got is None:
            return None, None
        return _parse(got[0], self.path), got[1]

    def create(self, info: LeaseInfo) -> str | None:
        body = info.model_dump_json(indent=1).encode()
        if self.conditional:
            try:
                return self._put(self.key, body, IfNoneMatch="*")
            except OSError as exc:
                if _precondition_failed(exc):
                    return None
                raise
        if self.read()[0] is not None:
            return None
        self._put(self.key, body)
        time.sleep(self.settle_s)  # a racing writer that looked before our put has written by now
        current, version = self.read()
        return version if current is not None and current.token == info.token else None

    def replace(self, info: LeaseInfo, version: str) -> str | None:
        body = info.model_dump_json(indent=1).encode()
        if self.conditional:
            try:
                return self._put(self.key, body, IfMatch=version)
            except OSError as exc:  # FileNotFoundError too: the lease was released or removed
                if _precondition_failed(exc) or isinstance(exc, FileNotFoundError):
                    return None
                raise
        if self.read()[1] != version:
            return None
        return self._put(self.key, body)

    def delete(self, version: str) -> bool:
        if self.conditional:
            try:
                self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=version)
                return True
            except OSError as exc:
                if _precondition_failed(exc) or isinstance(exc, FileNotFoundError):
                    return False
                # a server without conditional deletes: check, then delete (a takeover can slip in between)
                log.warning("lease: conditional delete refused (%s); checking the lease, then deleting it", exc)
        if self.read()[1] != version:
            return False
        self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key)
        return True


def _precondition_failed(exc: BaseException) -> bool:
    """s3fs's error for a failed ``If-None-Match``/``If-Match`` (412, or 409 for a racing one)."""
    if isinstance(exc, FileExistsError):
        return True
    response = getattr(exc.__cause__, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


def _parse(data: bytes, where: str) -> LeaseInfo:
    try:
        return LeaseInfo.model_validate_json(data)
    except ValueError as exc:
        raise LeaseError(f"the lease {where} is unreadable ({exc}); remove it if no run is writing") from exc


def backend_for(store: Store, **options: Any) -> _Backend:
    path = store.path(LEASE_NAME)
    return _LocalBackend(path) if store.local else _S3Backend(store.fs, path, **options)


# --------------------------------------------------------------------------- the lease


class Lease:
    """A dataset's lease for one run: ``acquire``, renewed by a daemon thread, ``release``."""

    def __init__(
        self,
        store: Store,
        run_id: str | None = None,
        ttl_s: float | None = None,
        notify: Callable[[str], None] | None = None,
        backend: _Backend | None = None,
    ) -> None:
        self.where = store.uri()
        self.run_id = run_id or new_run_id()
        self.ttl_s = ttl_s if ttl_s is not None else _env_seconds(TTL_ENV, DEFAULT_TTL_S)
        self.notify = notify or log.warning
        self.backend = backend or backend_for(store)
        self.info: LeaseInfo | None = None
        self.version: str | None = None
        self.lost: LeaseLost | None = None
        self._owner: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def held(self) -> bool:
        return self.version is not None and self.lost is None

    def _fresh_info(self) -> LeaseInfo:
        now = _now()
        return LeaseInfo(
            token=uuid.uuid4().hex,
            run_id=self.run_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            command=" ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])[:300],
            started=now,
            expires=now + timedelta(seconds=self.ttl_s),
            ttl_s=self.ttl_s,
        )

    def acquire(self, wait_s: float = 0.0, poll_s: float | None = None) -> Lease:
        """Take the lease, waiting up to ``wait_s`` seconds (``inf``: as long as it takes) for a
        holder to finish; a stale lease is taken over. Raises :class:`LeaseHeld` otherwise."""
        poll = poll_s if poll_s is not None else min(5.0, max(0.2, self.ttl_s / 6))
        started_wait = time.monotonic()
        said_waiting = False
        while True:
            holder, version = self.backend.read()
            if holder is None:
                info = self._fresh_info()
                version = self.backend.create(info)
                if version is not None:
                    return self._hold(info, version)
                continue  # another run created it first: look at who
            assert version is not None
            if holder.expired():
                info = self._fresh_info()
                new_version = self.backend.replace(info, version)
                if new_version is not None:
                    self.notify(
                        f"lease: took over the stale lease of {self.where}: {holder.describe()} stopped renewing it "
                        f"(expired {(_now() - holder.expires).total_seconds():.0f} s ago; that run was killed or hung)"
                    )
                    return self._hold(info, new_version)
                continue  # someone else changed it meanwhile: look again
            waited = time.monotonic() - started_wait
            if waited >= wait_s:
                raise LeaseHeld(self.where, holder, waited if wait_s else None)
            if not said_waiting:
                self.notify(f"lease: waiting for {self.where}, held by {holder.describe()}")
                said_waiting = True
            time.sleep(min(poll, wait_s - waited))

    def _hold(self, info: LeaseInfo, version: str) -> Lease:
        self.info, self.version, self.lost = info, version, None
        self._owner = threading.get_ident()
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="ultrafeedback-lease", daemon=True)
        self._thread.start()
        return self

    def renew(self) -> None:
        """Move ``expires`` on; raises :class:`LeaseLost` when another run holds the lease now."""
        assert self.info is not None and self.version is not None
        info = self.info.model_copy(update={"expires": _now() + timedelta(seconds=self.ttl_s)})
        version = self.backend.replace(info, self.version)
        if version is None:
            holder, _ = self.backend.read()
            now = "nobody holds it now" if holder is None else f"it is held by {holder.describe()}"
            raise LeaseLost(
                f"lease lost: this run's lease of {self.where} was taken or removed ({now}); the run stopped"
            )
        self.info, self.version = info, version

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            with self._lock:  # release() sets _stop under it: no interrupt once the run is leaving
                if self._stop.is_set():
                    return
                try:
                    self.renew()
                except LeaseLost as exc:
                    self._lose(exc)
                    return
                except Exception as exc:  # noqa: BLE001 - a blip: the next beat tries again, until expiry
                    assert self.info is not None
                    if self.info.expired():
                        self._lose(LeaseLost(f"lease lost: could not renew {self.where} before it expired: {exc}"))
                        return
                    log.warning("lease: renewal failed, will retry: %s", exc)

    def _lose(self, exc: LeaseLost) -> None:
        self.lost = exc
        self.notify(str(exc))
        if self._owner == threading.main_thread().ident:
            # a real signal at the main thread: unlike _thread.interrupt_main() it also ends a
            # blocking wait (sleep, lock, select), and Python's SIGINT handler raises KeyboardInterrupt
            signal.pthread_kill(self._owner, signal.SIGINT)
        elif self._owner is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._owner), ctypes.py_object(LeaseLost))

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still this run's."""
        with self._lock:
            self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        version, self.version = self.version, None
        if version is not None and self.lost is None:
            try:
                self.backend.delete(version)
            except Exception as exc:  # noqa: BLE001 - it expires by itself; never mask why the run stopped
                log.warning("lease: could not release %s (it expires in %.0f s): %s", self.where, self.ttl_s, exc)


_HELD: dict[str, Lease] = {}
"""Leases this process holds, by lease URI: a run inside a run that holds it (the CLI, then the
flow it starts) reuses it."""


@contextmanager
def dataset_lease(
    store: Store,
    wait_s: float | None = None,
    run_id: str | None = None,
    notify: Callable[[str], None] | None = None,
    ttl_s: float | None = None,
) -> Iterator[Lease]:
    """Hold the dataset's lease for the ``with`` block (re-entrant within a process).

    ``wait_s`` None: ``ULTRAFEEDBACK_LEASE_WAIT_S`` (default 0). Raises :class:`LeaseHeld` when
    another run holds it, and :class:`LeaseLost` from the block when the lease is lost.
    """
    key = store.uri(LEASE_NAME)
    held = _HELD.get(key)
    if held is not None and held.held:
        yield held
        return
    lease = Lease(store, run_id=run_id, ttl_s=ttl_s, notify=notify)
    lease.acquire(wait_s if wait_s is not None else _env_seconds(WAIT_ENV, 0.0))
    _HELD[key] = lease
    try:
        yield lease
    except BaseException as exc:
        if lease.lost is not None and exc is not lease.lost:
            raise lease.lost from exc
        raise
    finally:
        _HELD.pop(key, None)
        try:
            lease.release()
        except KeyboardInterrupt as exc:  # the loss's interrupt, landing while the run was leaving
            if lease.lost is None:
                raise
            raise lease.lost from exc


def stop_on_sigterm() -> None:
    """In a command-line process: SIGTERM raises ``KeyboardInterrupt`` (like Ctrl-C), so ``finally``
    blocks run and the lease is released. Leaves a handler someone else installed alone."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, interrupt)


__all__ = [
    "DEFAULT_TTL_S",
    "LEASE_NAME",
    "Lease",
    "LeaseError",
    "LeaseHeld",
    "LeaseInfo",
    "LeaseLost",
    "dataset_lease",
    "new_run_id",
    "stop_on_sigterm",
]
