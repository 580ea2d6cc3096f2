"""Run a function in a forked child of the test process (which has threads) and get its answer."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable

import pytest


def _in_child(report_to: int, body: Callable[[], dict]) -> None:
    """Run ``body()`` in a forked child and write its JSON answer to ``report_to``; never returns."""
    try:
        answer = body()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        answer = {"error": repr(exc)}
    try:
        os.write(report_to, json.dumps(answer).encode())
    finally:
        os._exit(0)


def fork_and_report(body: Callable[[], dict]) -> dict:
    """``body()`` in a forked child of this (multi-threaded) process; its answer."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: we mean it
        pid = os.fork()
    if pid == 0:
        os.close(read)
        _in_child(write, body)
    os.close(write)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.02)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return json.loads(data)
