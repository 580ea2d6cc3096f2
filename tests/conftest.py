"""Test-session settings: offline, no analytics, a private Prefect home; shared fixtures."""

from __future__ import annotations

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="uf-test-prefect-")
os.environ.update(
    {
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": _HOME,
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "GX_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "ULTRAFEEDBACK_PROGRESS": "0",
        "TOKENIZERS_PARALLELISM": "false",
        # one PyTorch thread for the embedded model: three test processes share two cores, and
        # OpenMP threads of one process spin waiting for each other
        "ULTRAFEEDBACK_EMBEDDED_THREADS": "1",
    }
)
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """A real Prefect API (the test harness: a temporary server with SQLite), once per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def dask_address(tmp_path_factory):
    """A Dask cluster of separate processes (``dask scheduler`` and one ``dask worker`` on 127.0.0.1),
    once per test file, stopped at its end (idle Dask processes tick for the rest of a session):
    what ``execution.dask_address`` names at scale."""
    from tests.dask_processes import dask_processes

    with dask_processes(tmp_path_factory.mktemp("dask"), workers=1) as address:
        yield address
