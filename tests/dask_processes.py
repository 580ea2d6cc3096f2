"""A Dask cluster of separate processes, as a user's would be: ``dask scheduler`` and ``dask worker``
on 127.0.0.1 (free ports, no dashboard), stopped by the caller."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DASK = str(Path(sys.executable).with_name("dask"))


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # both shut down cleanly on SIGINT
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextmanager
def dask_processes(folder: Path, workers: int = 1, timeout_s: float = 60.0) -> Iterator[str]:
    """Yield the scheduler's address once ``workers`` workers have joined; stop them all on exit."""
    scheduler_file = folder / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    common = ["--host", "127.0.0.1", "--no-dashboard"]
    processes = [
        subprocess.Popen(
            [DASK, "scheduler", *common, "--port", "0", "--scheduler-file", str(scheduler_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=folder,
        )
    ]  # fmt: skip
    try:
        for _ in range(workers):  # a worker waits for the scheduler file: start them together
            processes.append(
                subprocess.Popen(
                    [DASK, "worker", "--scheduler-file", str(scheduler_file), *common,
                     "--nthreads", "1", "--no-nanny", "--local-directory", str(folder)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=folder,
                )
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not scheduler_file.exists():
            if processes[0].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dask scheduler did not start")
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        from distributed import Client

        with Client(address, timeout=timeout_s, set_as_default=False) as client:
            client.wait_for_workers(workers, timeout=timeout_s)
        yield address
    finally:
        for process in reversed(processes):
            _stop(process)
