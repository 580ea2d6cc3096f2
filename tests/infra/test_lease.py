"""infra.lease: one run writes a dataset at a time, on a local folder and on real S3-compatible
servers (moto's and SeaweedFS, both of which honour conditional writes)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3_server import MotoS3Server, SeaweedS3Server, new_bucket, set_credentials
from ultrafeedback.infra.lease import (
    LEASE_NAME,
    Lease,
    LeaseHeld,
    LeaseInfo,
    LeaseLost,
    _S3Backend,
    dataset_lease,
)
from ultrafeedback.infra.store import Store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3Server]:
    with MotoS3Server() as server:
        yield server


@pytest.fixture(scope="module")
def seaweed() -> Iterator[SeaweedS3Server]:
    with SeaweedS3Server() as server:
        yield server


@pytest.fixture(params=["local", "moto", "seaweed"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    if request.param == "local":
        return Store(str(tmp_path / "store"), "ds")
    server = request.getfixturevalue(request.param)
    set_credentials(monkeypatch)
    bucket = new_bucket(server.endpoint_url)
    return Store(f"s3://{bucket}/prefix", "ds", {"endpoint_url": server.endpoint_url})


def holder(store: Store) -> LeaseInfo | None:
    """The lease as stored, read fresh."""
    if not store.exists(LEASE_NAME):
        return None
    return LeaseInfo.model_validate_json(store.fs.cat_file(store.path(LEASE_NAME)))


def killed(lease: Lease) -> None:
    """Stop a lease's heartbeat without releasing it: what SIGKILL leaves behind."""
    lease._stop.set()
    assert lease._thread is not None
    lease._thread.join()


def test_acquire_records_the_holder_and_release_removes_it(store: Store) -> None:
    lease = Lease(store, run_id="run-a", ttl_s=30).acquire()
    info = holder(store)
    assert info is not None
    assert (info.run_id, info.host, info.pid) == ("run-a", socket.gethostname(), os.getpid())
    assert info.command and 29 <= (info.expires - info.started).total_seconds() <= 30
    lease.release()
    assert holder(store) is None


def test_a_second_run_is_refused_naming_the_holder(store: Store) -> None:
    first = Lease(store, run_id="run-a", ttl_s=30).acquire()
    try:
        with pytest.raises(LeaseHeld) as refused:
            Lease(store, run_id="run-b", ttl_s=30).acquire()
        message = str(refused.value)
        assert f"run run-a on host {socket.gethostname()}, pid {os.getpid()}, since " in message
        assert holder(store).run_id == "run-a"  # the refused run changed nothing
    finally:
        first.release()


def test_runs_starting_together_get_one_lease(store: Store) -> None:
    barrier = threading.Barrier(6)
    winners: list[str] = []
    refused: list[str] = []

    def contend(name: str) -> None:
        lease = Lease(store, run_id=name, ttl_s=30)
        barrier.wait()
        try:
            lease.acquire()
            winners.append(name)
        except LeaseHeld:
            refused.append(name)

    threads = [threading.Thread(target=contend, args=(f"run-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1 and len(refused) == 5
    assert holder(store).run_id == winners[0]


def test_a_stale_lease_is_taken_over_with_a_message(store: Store) -> None:
    dead = Lease(store, run_id="run-dead", ttl_s=1).acquire()
    killed(dead)
    with pytest.raises(LeaseHeld):  # not yet expired
        Lease(store, run_id="run-b", ttl_s=1).acquire()
    time.sleep(1.2)
    said: list[str] = []
    lease = Lease(store, run_id="run-b", ttl_s=30, notify=said.append).acquire()
    try:
        assert holder(store).run_id == "run-b"
        assert len(said) == 1 and "took over the stale lease" in said[0] and "run run-dead" in said[0]
    finally:
        lease.release()


def test_the_heartbeat_keeps_a_live_lease(store: Store) -> None:
    lease = Lease(store, run_id="run-a", ttl_s=0.9).acquire()
    try:
        first_expiry = holder(store).expires
        deadline = time.monotonic() + 2.5  # almost three TTLs: without renewal it would be stale
        while time.monotonic() < deadline:
            with pytest.raises(LeaseHeld):
                Lease(store, run_id="run-b", ttl_s=0.9).acquire()
            time.sleep(0.3)
        assert holder(store).expires > first_expiry
    finally:
        lease.release()
    assert holder(store) is None


def test_renewal_after_a_takeover_reports_the_lease_lost(store: Store) -> None:
    lease = Lease(store, run_id="run-a", ttl_s=1).acquire()
    killed(lease)  # paused past its expiry, e.g. a suspended laptop
    time.sleep(1.2)
    other = Lease(store, run_id="run-b", ttl_s=30, notify=lambda _: None).acquire()
    try:
        with pytest.raises(LeaseLost, match="held by run run-b"):
            lease.renew()
    finally:
        other.release()


def test_wait_takes_the_lease_when_the_holder_releases_it(store: Store) -> None:
    first = Lease(store, run_id="run-a", ttl_s=30).acquire()
    threading.Timer(1.0, first.release).start()
    said: list[str] = []
    started = time.monotonic()
    second = Lease(store, run_id="run-b", ttl_s=30, notify=said.append).acquire(wait_s=20, poll_s=0.2)
    try:
        assert 0.9 <= time.monotonic() - started < 10
        assert holder(store).run_id == "run-b"
        assert len(said) == 1 and said[0].startswith("lease: waiting for") and "run run-a" in said[0]
    finally:
        second.release()


def test_wait_gives_up_after_its_timeout(store: Store) -> None:
    first = Lease(store, run_id="run-a", ttl_s=30).acquire()
    try:
        with pytest.raises(LeaseHeld, match=r"still held after waiting 1 s"):
            Lease(store, run_id="run-b", ttl_s=30, notify=lambda _: None).acquire(wait_s=1, poll_s=0.2)
    finally:
        first.release()


def test_a_nested_hold_in_one_process_reuses_the_lease(tmp_path: Path) -> None:
    store = Store(str(tmp_path), "ds")
    with dataset_lease(store, run_id="run-a", ttl_s=30) as outer:
        with dataset_lease(Store(str(tmp_path), "ds"), run_id="run-b") as inner:
            assert inner is outer
        assert holder(store).run_id == "run-a"  # the inner block did not release it
    assert holder(store) is None


# --------------------------------------------------------------------------- S3 without conditional writes


def test_without_conditional_writes_racing_runs_still_get_one_lease(
    moto: MotoS3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look-write-settle-read-back protocol, on a server whose conditional writes are not used."""
    set_credentials(monkeypatch)
    store = Store(f"s3://{new_bucket(moto.endpoint_url)}/p", "ds", {"endpoint_url": moto.endpoint_url})
    barrier = threading.Barrier(4)
    winners: list[Lease] = []

    def contend(name: str) -> None:
        lease = Lease(store, run_id=name, ttl_s=30, backend=_S3Backend(store.fs, store.path(LEASE_NAME), False, 0.5))
        barrier.wait()
        try:
            winners.append(lease.acquire())
        except LeaseHeld:
            pass

    threads = [threading.Thread(target=contend, args=(f"run-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1 and holder(store).run_id == winners[0].run_id
    winners[0].release()
    assert holder(store) is None


# --------------------------------------------------------------------------- a holder process

HOLDER = textwrap.dedent(
    """
    import sys, time
    from ultrafeedback.infra.lease import dataset_lease, stop_on_sigterm
    from ultrafeedback.infra.store import Store

    stop_on_sigterm()
    try:
        with dataset_lease(Store(sys.argv[1], "ds"), run_id="run-holder", ttl_s=float(sys.argv[2])):
            print("held", flush=True)
            time.sleep(60)
    except BaseException as exc:
        print(f"stopped: {type(exc).__name__}: {exc}", flush=True)
        sys.exit(9)
    """
)


def start_holder(folder: Path, ttl_s: float) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), str(ttl_s)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_sigterm_releases_the_lease(tmp_path: Path) -> None:
    process = start_holder(tmp_path, 30)
    store = Store(str(tmp_path), "ds")
    assert holder(store).run_id == "run-holder"
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 9 and "KeyboardInterrupt" in out
    assert holder(store) is None


def test_a_lost_lease_stops_the_holding_process(tmp_path: Path) -> None:
    process = start_holder(tmp_path, 1.5)
    store = Store(str(tmp_path), "ds")
    try:
        # another run rewrites the lease (as a takeover after a long pause would)
        info = holder(store).model_copy(update={"token": "someone-else", "run_id": "run-other"})
        (tmp_path / "ds" / LEASE_NAME).write_text(info.model_dump_json())
        out, _ = process.communicate(timeout=10)  # the next renewal (every 0.5 s) finds it
    finally:
        process.kill()
    assert process.returncode == 9
    assert "stopped: LeaseLost: lease lost:" in out and "held by run run-other" in out
    assert holder(store).run_id == "run-other"  # the lost run did not remove the other's lease
