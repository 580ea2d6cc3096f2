"""The process's I/O loop: one loop on one daemon thread, jobs submitted from any thread, cancelled
promptly, shared sessions, a restart after a shutdown or a fork, a clean interpreter exit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.infra.llm.forking import fork_and_report
from ultrafeedback.infra.llm import loop as io_loop

ROOT = Path(__file__).resolve().parents[3]


def test_the_loop_runs_on_one_daemon_thread_shared_by_every_caller():
    seen: list[tuple[asyncio.AbstractEventLoop, threading.Thread]] = []
    lock = threading.Lock()

    async def where() -> None:
        with lock:
            seen.append((asyncio.get_running_loop(), threading.current_thread()))

    def caller() -> None:
        job = io_loop.submit(where())
        assert job.wait(5)
        job.result()

    threads = [threading.Thread(target=caller) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    loops = {id(loop) for loop, _ in seen}
    runners = {thread for _, thread in seen}
    assert len(seen) == 6 and len(loops) == 1 and len(runners) == 1
    (runner,) = runners
    assert runner.daemon and runner is not threading.current_thread()
    assert seen[0][0] is io_loop.get_loop()
    assert not io_loop.in_loop_thread()


def test_a_job_gives_its_result_or_raises_its_exception_in_the_caller():
    async def answer() -> int:
        await asyncio.sleep(0.01)
        return 42

    async def fail() -> None:
        raise ValueError("boom")

    job = io_loop.submit(answer())
    assert job.wait(5) and job.done() and job.result() == 42
    job = io_loop.submit(fail())
    assert job.wait(5)
    with pytest.raises(ValueError, match="boom"):
        job.result()


def test_cancelling_a_job_stops_it_and_calls_on_done():
    finished = threading.Event()
    stopped = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            stopped.set()

    job = io_loop.submit(forever(), on_done=finished.set)
    time.sleep(0.05)
    started = time.monotonic()
    job.cancel()
    assert job.wait(5) and finished.is_set() and stopped.is_set()
    assert time.monotonic() - started < 1.0
    with pytest.raises(asyncio.CancelledError):
        job.result()


def test_a_job_cancelled_before_it_started_never_runs_but_still_finishes():
    ran = threading.Event()
    finished = threading.Event()
    gate = threading.Event()

    async def occupy() -> None:  # holds the loop's thread so the next job cannot start yet
        gate.wait(5)

    async def work() -> None:
        ran.set()

    blocker = io_loop.submit(occupy())
    job = io_loop.submit(work(), on_done=finished.set)
    job.cancel()
    gate.set()
    assert blocker.wait(5) and job.wait(5) and finished.is_set()
    assert not ran.is_set()


def test_submitting_or_blocking_from_the_loop_thread_is_refused():
    async def inside() -> str:
        assert io_loop.in_loop_thread()

        async def nothing() -> None:
            return None

        try:
            io_loop.submit(nothing())
        except RuntimeError as exc:
            return str(exc)
        return "accepted"

    job = io_loop.submit(inside())
    assert job.wait(5)
    assert "already on the I/O loop" in job.result()


def test_shutdown_cancels_runs_closes_sessions_and_the_next_use_restarts_the_loop():
    import aiohttp

    async def hold_a_session() -> None:
        async with io_loop.shared_session("http://test.invalid/shutdown", aiohttp.ClientSession):
            await asyncio.sleep(60)

    first = io_loop.get_loop()
    job = io_loop.submit(hold_a_session())
    time.sleep(0.05)
    session = io_loop.open_sessions()["http://test.invalid/shutdown"]
    io_loop.shutdown()
    assert job.done() and first.is_closed() and session.closed
    with pytest.raises(RuntimeError, match="shut down"):
        job.result()
    second = io_loop.get_loop()
    assert second is not first and second.is_running()
    assert "http://test.invalid/shutdown" not in io_loop.open_sessions()


def test_a_shared_session_is_reused_and_a_retired_one_closes_when_its_last_user_leaves():
    import aiohttp

    key = "http://test.invalid/reuse"
    release = asyncio.Event()
    got: list[aiohttp.ClientSession] = []

    async def use(wait: bool) -> None:
        async with io_loop.shared_session(key, aiohttp.ClientSession) as session:
            got.append(session)
            if wait:
                await release.wait()

    assert io_loop.submit(use(False)).wait(5)
    assert io_loop.submit(use(False)).wait(5)
    assert got[0] is got[1] and not got[0].closed
    holder = io_loop.submit(use(True))
    time.sleep(0.05)
    io_loop.retire_session(key)
    time.sleep(0.05)
    assert not got[0].closed  # a run still uses it
    assert io_loop.submit(use(False)).wait(5)
    assert got[3] is not got[0]  # later runs got a fresh one
    io_loop.get_loop().call_soon_threadsafe(release.set)
    assert holder.wait(5)
    deadline = time.monotonic() + 5
    while not got[0].closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got[0].closed and not got[3].closed


def test_host_names_resolve_on_the_loops_own_threads():
    async def resolve() -> list:
        return await asyncio.get_running_loop().getaddrinfo("localhost", 80)

    job = io_loop.submit(resolve())
    assert job.wait(10)
    assert any(info[4][0] in ("127.0.0.1", "::1") for info in job.result())


def test_a_forked_child_starts_a_loop_of_its_own():
    parent_loop = io_loop.get_loop()
    parent_thread = next(t for t in threading.enumerate() if t.name == "llm-io-loop")

    def child() -> dict:
        async def where() -> int:
            await asyncio.sleep(0.01)
            return threading.get_ident()

        job = io_loop.submit(where())
        assert job.wait(5)
        return {
            "ident": job.result(),
            "same_loop": io_loop.get_loop() is parent_loop,
            "running": io_loop.get_loop().is_running(),
        }

    answer = fork_and_report(child)
    assert answer.get("error") is None, answer
    assert answer["same_loop"] is False and answer["running"] is True
    assert parent_loop.is_running() and parent_thread.is_alive()  # the parent's goes on


_EXIT_SCRIPT = """
import sys, threading, time
sys.path.insert(0, {root!r})
from ultrafeedback.infra.llm.base import LLMRequest
from ultrafeedback.infra.llm.openai_compat import OpenAICompatBackend
from ultrafeedback.infra.simulator import Simulator, SimulatorConfig

def request(i):
    return LLMRequest(key=f"k{{i}}", model="m", messages=[{{"role": "user", "content": f"hi {{i}}"}}])

slow = Simulator(SimulatorConfig(latency_ms=3000)).start()
fast = Simulator(SimulatorConfig(latency_ms=20)).start()
stuck = OpenAICompatBackend("stuck", slow.url, max_retries=0)

def daemon() -> None:
    # a daemon thread's run still in flight when the interpreter exits: cancelled at exit
    try:
        stuck.run([request(i) for i in range(5)], lambda r: None)
    except RuntimeError as exc:
        print("daemon:", exc, flush=True)

threading.Thread(target=daemon, daemon=True).start()

def late() -> None:
    # still running after the main thread ended: the interpreter has begun to exit and the
    # default executor refuses work; the host name must still resolve
    time.sleep(0.5)
    results = []
    OpenAICompatBackend("late", f"http://localhost:{{fast.port}}/v1", max_retries=0).run(
        [request(i) for i in range(3)], results.append
    )
    print("late:", sorted(r.ok for r in results), [r.error for r in results if not r.ok], flush=True)

threading.Thread(target=late).start()
time.sleep(0.2)
print("main: done", flush=True)
"""


def test_the_interpreter_exits_cleanly_with_runs_in_flight():
    script = _EXIT_SCRIPT.format(root=str(ROOT))
    process = subprocess.run(
        [sys.executable, "-X", "dev", "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert process.returncode == 0, process.stderr
    assert "late: [True, True, True] []" in process.stdout, (process.stdout, process.stderr)
    for bad in ("Traceback", "atexit", "Unclosed", "destroyed", "Exception ignored", "Error"):
        assert bad not in process.stderr, process.stderr
