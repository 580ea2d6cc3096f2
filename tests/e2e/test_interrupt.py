"""Ctrl-C during generation stops the spending: a command-line build against the simulator (slow
answers) gets SIGINT at its whole process group, as a terminal sends it, once some answers have
arrived. It exits within 10 s with code 130 and no traceback, the simulator hears no request after
the grace period, the summary's call count is the simulator's, every answer that arrived is stored,
and the next run sends exactly what is still missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_build_simulator import SECRET, run_build, spec_data, write_sources, write_spec
from tests.e2e.test_kill_resume import PROMPTS
from ultrafeedback.infra.simulator.config import SimulatorConfig
from ultrafeedback.infra.simulator.server import Simulator
from ultrafeedback.infra.store import Store

pytestmark = pytest.mark.e2e

GRACE_S = 2.0
"""``execution.stop_grace_s``: the requests on the wire get this long after the signal."""
LATENCY_MS = 800
"""Each answer takes this long (less than the grace period: what is on the wire at the signal answers)."""
EXIT_WITHIN_S = 10.0
INSTRUCTIONS = PROMPTS[:10]
COMPLETIONS = 4 * (len(INSTRUCTIONS) + 2)  # k=4; write_sources adds 2 TruthfulQA rows


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    monkeypatch.setenv("UF_E2E_KEY", SECRET)
    config = SimulatorConfig(latency_ms=LATENCY_MS, seed=3, api_key=SECRET, record_bodies=True)
    with Simulator(config) as simulator:
        yield simulator


def _spec(folder: Path, url: str) -> Path:
    write_sources(folder)
    (folder / "instructions.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in INSTRUCTIONS))
    data = spec_data(folder, url)
    data["endpoints"]["sim"]["max_in_flight"] = 4
    data["execution"] = {"shard_size": 4, "checkpoint_every": 1000, "parallel_shards": 2, "stop_grace_s": GRACE_S}
    data["execution"]["worker_processes"] = 1  # a worker the Ctrl-C reaches too (it must ignore it)
    return write_spec(folder, data)


def _arrivals(sim: Simulator) -> list[float]:
    """When each request reached the simulator (wall clock), in order."""
    with urllib.request.urlopen(f"{sim.root_url}/stats/bodies") as response:
        bodies = json.loads(response.read())["bodies"]
    return sorted(entry[0] for entries in bodies.values() for entry in entries)


def test_ctrl_c_during_generation_stops_spending_and_reports_what_was_spent(prefect_harness, sim, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from ultrafeedback.status import collect_status

    spec = _spec(tmp_path, sim.url)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    log = tmp_path / "stderr.txt"
    with log.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "ultrafeedback.cli", "build", str(spec)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,  # its own process group, which the test signals as a terminal would
        )
    try:
        deadline = time.monotonic() + 240
        while sim.stats()["by_kind"].get("generation", 0) - sim.stats()["in_flight"] < 8:
            assert process.poll() is None, f"the build ended before the signal:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "generation did not start in time"
            time.sleep(0.02)
        signalled, started = time.time(), time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        try:
            code = process.wait(timeout=EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the build did not exit within {EXIT_WITHIN_S:g} s of SIGINT:\n{log.read_text()[-3000:]}")
        took = time.monotonic() - started
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    err = log.read_text()
    assert code == 130, err[-3000:]
    assert "Traceback" not in err and "atexit" not in err, err[-3000:]
    assert "interrupted (SIGINT)" in err

    stats = sim.stats()
    late = [round(came - signalled, 3) for came in _arrivals(sim) if came > signalled + GRACE_S]
    assert not late, f"requests reached the simulator this long after SIGINT: {late}"
    assert stats["in_flight"] == 0 and stats["statuses"] == {"200": stats["total"]}, stats
    summary = json.loads((tmp_path / "store" / "e2e" / "runs" / "last.json").read_text())
    assert sum(summary["requests_sent"].values()) == stats["total"], (summary["requests_sent"], stats)
    assert summary["release"] is None and summary["stopped"] == "interrupted (SIGINT)"
    assert f"calls:     completions {stats['total']}" in err
    # every answer that arrived (those on the wire at the signal too) is stored
    stored = collect_status(Store(str(tmp_path / "store"), "e2e"))["counts"]
    assert stored["completions"] == stats["by_kind"]["generation"] < COMPLETIONS, (stored, stats)
    print(f"exit {took:.1f} s after SIGINT; {stats['total']} calls, all stored")

    # the next run pays only for what is missing
    sim.update(latency_ms=2)
    sim.reset()
    uri = run_build(spec)
    assert uri.endswith("/e2e/releases/v1")
    assert sim.stats()["by_kind"]["generation"] == COMPLETIONS - stored["completions"]
