"""CLI progress bars that shard tasks can update from their threads.

The flow opens a bar per stage (``stage_bar``); a task running in the same process gets a
callback for it (``progress_callback``). In another process (a Dask or remote worker) the
callback is a no-op and progress shows in the Prefect UI instead.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_BARS: dict[str, Any] = {}
_LOCK = threading.Lock()


def enabled() -> bool:
    return os.environ.get("ULTRAFEEDBACK_PROGRESS", "1") != "0"


@contextmanager
def stage_bar(stage: str, total: int | None) -> Iterator[None]:
    """Show a bar for ``stage`` while the block runs (nothing when disabled or total is 0; a
    counter without a total when ``total`` is None)."""
    if not enabled() or (total is not None and total <= 0):
        yield
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=f"{stage:>12}", unit="call", file=sys.stderr, leave=True, dynamic_ncols=True)
    with _LOCK:
        _BARS[stage] = bar
    try:
        yield
    finally:
        with _LOCK:
            _BARS.pop(stage, None)
        bar.close()


def progress_callback(stage: str) -> Callable[[int], None]:
    def update(n: int) -> None:
        with _LOCK:
            bar = _BARS.get(stage)
            if bar is not None:
                bar.update(n)

    return update
