"""Two ``ultrafeedback build`` processes of one spec and store, started at the same moment against
the simulator, under a real Prefect API: the dataset's lease lets one write it; the other stops
with the lease message and code 4, or (``--wait``) waits and then sends nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_build_simulator import SECRET, check_release, releases, spec_data, write_sources, write_spec
from ultrafeedback.cli import EXIT_LEASE, EXIT_OK
from ultrafeedback.infra.simulator.config import SimulatorConfig
from ultrafeedback.infra.simulator.server import Simulator

pytestmark = pytest.mark.e2e

ONE_BUILD = {"generation": 36, "judge_aspect": 36, "critique": 36}
"""What one build of this spec sends: 9 instructions x 4 completions, 9 x 4 aspect calls, 36 critiques."""


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    monkeypatch.setenv("UF_E2E_KEY", SECRET)
    with Simulator(SimulatorConfig(latency_ms=2, seed=3, api_key=SECRET)) as simulator:
        yield simulator


def start_builds(spec: Path, extra: list[str], folder: Path) -> list[tuple[subprocess.Popen[str], Path]]:
    """Two CLI builds, started back to back, on the session's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "ULTRAFEEDBACK_LEASE_TTL_S": "6"}
    runs = []
    for name in ("a", "b"):
        err = folder / f"stderr-{name}.txt"
        command = [sys.executable, "-m", "ultrafeedback.cli", "build", str(spec), *extra]
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=err.open("w"), text=True)
        runs.append((process, err))
    return runs


def finish(runs: list[tuple[subprocess.Popen[str], Path]]) -> list[tuple[int, str, str]]:
    results = []
    for process, err in runs:
        out, _ = process.communicate(timeout=600)
        results.append((process.returncode, out, err.read_text()))
    return results


def test_a_second_build_exits_naming_the_lease_holder(prefect_harness, sim: Simulator, tmp_path: Path) -> None:
    write_sources(tmp_path)
    spec = write_spec(tmp_path, spec_data(tmp_path, sim.url))
    runs = start_builds(spec, [], tmp_path)
    results = finish(runs)
    codes = sorted(code for code, _, _ in results)
    assert codes == [EXIT_OK, EXIT_LEASE], results
    won = 0 if results[0][0] == EXIT_OK else 1
    winner_pid, winner_out, message = runs[won][0].pid, results[won][1], results[1 - won][2]
    assert "is being written by another run " in message and f"pid {winner_pid}, since " in message, message
    assert "nothing was done" in message
    uri = winner_out.strip().splitlines()[-1]
    check_release(uri)
    assert releases(tmp_path) == ["v1"]
    stats = sim.stats()
    assert stats["by_kind"] == ONE_BUILD and stats["total"] == sum(ONE_BUILD.values()), stats
    assert not (tmp_path / "store" / "e2e" / "lease.json").exists()


def test_a_waiting_build_runs_after_the_first_and_sends_nothing(
    prefect_harness, sim: Simulator, tmp_path: Path
) -> None:
    write_sources(tmp_path)
    spec = write_spec(tmp_path, spec_data(tmp_path, sim.url))
    started = time.monotonic()
    results = finish(start_builds(spec, ["--wait", "--wait-timeout", "500"], tmp_path))
    elapsed = time.monotonic() - started
    assert [code for code, _, _ in results] == [EXIT_OK, EXIT_OK], results
    waited = [r for r in results if "lease: waiting for" in r[2]]
    assert len(waited) == 1, results
    uris = {out.strip().splitlines()[-1] for _, out, _ in results}
    assert len(uris) == 1  # the waiting build published nothing new: the same release
    check_release(uris.pop())
    assert releases(tmp_path) == ["v1"]
    stats = sim.stats()
    assert stats["by_kind"] == ONE_BUILD and stats["total"] == sum(ONE_BUILD.values()), stats
    assert "calls:     none" in waited[0][2]  # its summary: no request sent
    assert not (tmp_path / "store" / "e2e" / "lease.json").exists()
    print(f"two builds with --wait: {elapsed:.1f} s")


def test_the_build_flow_stops_before_any_work_when_another_run_holds_the_lease(
    prefect_harness, sim: Simulator, tmp_path: Path
) -> None:
    """The flow itself (what deployment runs call) takes the lease, not only the CLI."""
    from ultrafeedback.flows.build import build
    from ultrafeedback.infra.lease import Lease, LeaseHeld
    from ultrafeedback.infra.store import Store

    write_sources(tmp_path)
    spec = write_spec(tmp_path, spec_data(tmp_path, sim.url))
    other = Lease(Store(str(tmp_path / "store"), "e2e"), run_id="run-elsewhere", ttl_s=30).acquire()
    try:
        with pytest.raises(LeaseHeld, match="by another run run-elsewhere on host "):
            build(spec_path=str(spec))
    finally:
        other.release()
    assert sorted(p.name for p in (tmp_path / "store" / "e2e").iterdir()) == [".lease.lock"]  # no work done
    assert sim.stats()["total"] == 0
