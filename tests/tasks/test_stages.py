"""``tasks/stages.py``: the run's worker processes do not outlive the run's process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

POOL = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from ultrafeedback.tasks.stages import _init_worker

pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)
print(pool.submit(os.getpid).result(), flush=True)
time.sleep(600)
"""


def _gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_a_worker_exits_when_the_run_process_is_killed():
    run = subprocess.Popen([sys.executable, "-c", POOL], stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        worker = int(run.stdout.readline())
        assert psutil.pid_exists(worker)
        os.kill(run.pid, signal.SIGKILL)  # no exit handler, no pool shutdown
        run.wait(timeout=30)
        assert _gone(worker, 15), "the worker process outlived the killed run process"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=30)
        if worker is not None and not _gone(worker, 0.1):
            os.kill(worker, signal.SIGKILL)  # the orphan of a failed test


def _run(tmp_path, **execution):
    from ultrafeedback.spec import validate_dict
    from ultrafeedback.tasks.stages import Run

    spec = validate_dict(
        {
            "name": "w",
            "store": str(tmp_path / "store"),
            "sources": [{"name": "s", "loader": "jsonl", "path": "x.jsonl"}],
            "endpoints": {"sim": {"base_url": "http://127.0.0.1:9/v1"}},
            "models": [{"id": "m", "backend": "openai", "endpoint": "sim", "model": "m"}],
            "completions_per_instruction": 1,
            "execution": execution,
        }
    )
    from ultrafeedback.tasks.common import store_for

    return Run(spec, store_for(spec), "test-run")


def test_unset_worker_processes_start_a_worker_from_2000_instructions_up(tmp_path):
    from ultrafeedback.tasks.stages import AUTO_WORKER_MIN_INSTRUCTIONS

    run = _run(tmp_path, shard_size=500)
    assert run.spec.execution.worker_processes is None
    run.set_shards([])  # before ingest: small
    assert run.worker_pool() is None
    run.set_shards(list(range(AUTO_WORKER_MIN_INSTRUCTIONS // 500 - 1)))  # 1,500 instructions at most
    assert run.worker_pool() is None
    assert run.offload(os.getpid) == os.getpid()
    run.set_shards(list(range(AUTO_WORKER_MIN_INSTRUCTIONS // 500)))
    try:
        assert run.worker_pool() is not None
        assert run.offload(os.getpid) != os.getpid()
    finally:
        run.close()


def test_an_explicit_worker_count_holds_whatever_the_size(tmp_path):
    run = _run(tmp_path, worker_processes=0, shard_size=1000)
    run.set_shards(list(range(64)))
    assert run.worker_pool() is None
    run = _run(tmp_path, worker_processes=1, shard_size=4)
    run.set_shards([0])
    try:
        assert run.offload(os.getpid) != os.getpid()
    finally:
        run.close()
