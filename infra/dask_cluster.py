"""Dask cluster setup: connect to a scheduler, or start an embedded local cluster.

Aggregation runs ``dask.dataframe`` over the stage Parquet (DESIGN §5). On a laptop the embedded
default is an in-process cluster (threads, no extra processes to spawn or to leak); at scale the
spec names a ``distributed`` scheduler address and the same code runs there. The context manager
closes exactly what it started: a client it opened, and a cluster only when it created one, so a
shared remote cluster is never shut down by one run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # distributed is imported lazily: it costs about a second at import time
    from distributed import Client

log = logging.getLogger(__name__)


@contextmanager
def dask_client(
    address: str | None = None,
    workers: int = 1,
    *,
    threads_per_worker: int | None = None,
    processes: bool = False,
    dashboard: bool = False,
    connect_timeout_s: float = 30.0,
) -> Iterator[Client]:
    """Yield a ``distributed.Client``; close what was started here on exit.

    Args:
        address: a scheduler address (``tcp://host:8786``). When given, connect to it and close only
            the client on exit: the cluster belongs to someone else.
        workers: workers of the local cluster started when no address is given.
        threads_per_worker: threads per local worker (default: let Dask pick from the cores).
        processes: run local workers as processes. The default (threads in this process) starts in
            well under a second and cannot leave orphan processes behind; aggregation is mostly
            Arrow/pandas work that releases the GIL.
        dashboard: mount the Bokeh dashboard (on 127.0.0.1 at a free port; ``client.dashboard_link``).
        connect_timeout_s: how long to wait for a remote scheduler.
    """
    from distributed import Client, LocalCluster

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if address:
        client = Client(address, timeout=connect_timeout_s, set_as_default=False)
        log.info("dask: connected to %s", address)
        try:
            yield client
        finally:
            client.close()
        return

    # Threads in this process talk over Dask's in-process transport; worker processes need TCP,
    # bound to loopback on a free port (0) so parallel runs never collide. Every node also serves
    # HTTP (health, metrics, the dashboard): Dask's default for that is 0.0.0.0:8787, so it is
    # pinned to 127.0.0.1 at a free port, and the Bokeh dashboard is only mounted when asked for.
    network = {"host": "127.0.0.1", "scheduler_port": 0, "protocol": "tcp://"} if processes else {}
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=threads_per_worker,
        processes=processes,
        dashboard_address="127.0.0.1:0",
        worker_dashboard_address="127.0.0.1:0",
        scheduler_kwargs={"dashboard": dashboard},
        **network,
    )
    try:
        client = Client(cluster, set_as_default=False)
        try:
            log.info("dask: local cluster with %d worker(s) at %s", workers, cluster.scheduler_address)
            yield client
        finally:
            client.close()
    finally:
        cluster.close()
