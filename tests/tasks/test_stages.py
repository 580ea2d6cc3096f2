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
