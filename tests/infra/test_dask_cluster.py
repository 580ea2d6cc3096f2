"""The Dask client context: an embedded loopback-only cluster, or a connection to a scheduler."""

from __future__ import annotations

import pytest

from ultrafeedback.infra.dask_cluster import dask_client


@pytest.fixture(scope="module")
def outside_cluster():
    """A cluster owned by someone else (the 'remote' scheduler a spec may name)."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, processes=False, dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0"
    ) as cluster:
        yield cluster


def test_embedded_cluster_runs_work_and_is_closed_on_exit() -> None:
    with dask_client(None, 1) as client:
        assert client.submit(sum, [1, 2, 3]).result() == 6
        cluster = client.cluster
        assert len(cluster.workers) == 1
        # every HTTP endpoint (health, metrics) is bound to loopback, never 0.0.0.0:8787
        assert cluster.scheduler.http_server.address == "127.0.0.1"
        assert all(w.http_server.address == "127.0.0.1" for w in cluster.workers.values())
        assert cluster.scheduler.http_server.port != 8787
    assert client.status == "closed"
    assert cluster.status.name == "closed"


def test_embedded_cluster_with_dashboard_on_loopback() -> None:
    with dask_client(None, 2, dashboard=True) as client:
        assert len(client.cluster.workers) == 2
        assert client.dashboard_link.endswith("/status")
        assert client.cluster.scheduler.http_server.address == "127.0.0.1"


def test_address_connects_and_leaves_the_cluster_running(outside_cluster) -> None:
    with dask_client(outside_cluster.scheduler_address, 1) as client:
        assert client.submit(lambda x: x * 2, 21).result() == 42
        assert client.cluster is None  # not ours to manage
    assert client.status == "closed"
    assert outside_cluster.status.name == "running"
    with dask_client(outside_cluster.scheduler_address) as again:
        assert again.submit(lambda: "still up").result() == "still up"


def test_cluster_is_closed_when_the_body_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with dask_client(None, 1) as client:
            cluster = client.cluster
            raise RuntimeError("boom")
    assert cluster.status.name == "closed"


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="workers"):
        with dask_client(None, 0):
            pass
