"""``kill -9`` during generation and during annotation, several times: no answer the simulator
delivered is requested again (only requests still unanswered at the kill may be), and the release
the last run publishes is the one an uninterrupted build publishes.

Checkpoints are made rare (``checkpoint_every`` 1,000), so every answer that arrived before a kill
survives only through the result journal (``infra/journal.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.test_build_simulator import SECRET, run_build, spec_data, write_sources, write_spec
from tests.golden.golden import diff_releases, read_release
from ultrafeedback.infra.simulator.config import SimulatorConfig
from ultrafeedback.infra.simulator.server import Simulator

pytestmark = pytest.mark.e2e

GRACE_S = 1.0
"""An answer the simulator finished writing less than this before a kill may still have been on
its way to the client (in the socket, or read but not yet journalled): asking for it again is not
counted as paying twice. Every other answer must never be asked for again."""
ARRIVAL_S = 1.0
"""The simulator stamps a request when its handler runs, which on a loaded machine can be after a
kill that came once the killed client had written it (seen: 0.1 s after). A kill up to this long
before a request's stamp still counts as coming after the request (a restarted build takes
seconds to start, so its own requests cannot arrive that soon)."""

KILLS = (("generation", 20), ("generation", 60), ("judge", 40), ("judge", 120))
"""Kill the build once the simulator has answered this many requests of this kind (counted over
the whole test), in this order."""


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    monkeypatch.setenv("UF_E2E_KEY", SECRET)
    config = SimulatorConfig(latency_ms=150, jitter_ms=50, seed=3, api_key=SECRET, record_bodies=True)
    with Simulator(config) as simulator:
        yield simulator


PROMPTS = [f"Give {n} practical tips for {topic}." for n in (2, 3) for topic in (
    "learning a language", "baking bread", "saving money", "running a meeting", "writing tests",
    "planting tomatoes", "sleeping better", "reading more", "cycling in winter", "cooking rice", "moving house",
)]  # fmt: skip
"""22 instructions (and write_sources' 2 TruthfulQA rows): 96 completions, 96 aspect calls, 96 critiques."""


def _spec(folder: Path, url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_sources(folder)
    (folder / "instructions.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    data = spec_data(folder, url)
    data["endpoints"]["sim"]["max_in_flight"] = 4  # slow enough to be killed midway
    data["execution"] = {"shard_size": 4, "checkpoint_every": 1000, "parallel_shards": 2}
    return write_spec(folder, data)


def _bodies(sim: Simulator) -> dict[str, list[list[float | int | None]]]:
    with urllib.request.urlopen(f"{sim.root_url}/stats/bodies") as response:
        return json.loads(response.read())["bodies"]


def _answered(sim: Simulator, kind: str) -> int:
    stats = sim.stats()
    kinds = ("judge_aspect", "critique") if kind == "judge" else (kind,)
    # answered = received minus still in flight is not per kind: count 200s by kind from the counters
    return sum(stats["by_kind"].get(k, 0) for k in kinds) - stats["in_flight"]


def _start(spec: Path, folder: Path, n: int) -> subprocess.Popen[str]:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "ULTRAFEEDBACK_LEASE_TTL_S": "3"}
    command = [sys.executable, "-m", "ultrafeedback.cli", "build", str(spec), "--wait", "--wait-timeout", "120"]
    err = (folder / f"stderr-{n}.txt").open("w")
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=err, text=True)


def _kill_when(process: subprocess.Popen[str], ready: Callable[[], bool], timeout_s: float = 240) -> float:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.poll() is not None:
            raise AssertionError(f"the build ended (exit {process.returncode}) before the kill point")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the kill point was not reached in time")
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    killed = time.time()
    process.wait(timeout=30)
    return killed


def paid_twice(bodies: dict[str, list[list[float | int | None]]], kills: list[float]) -> list[str]:
    """Bodies requested again after an answer to them was delivered, unless a kill came while that
    answer was on its way: after its request arrived and no later than ``GRACE_S`` after the answer
    was written (a kill before the answer was written is also such a kill: the killed process's
    socket may still take the answer, and no one reads it). "After its request arrived" allows the
    simulator's late stamp (``ARRIVAL_S``)."""
    found = []
    for digest, entries in bodies.items():
        entries = sorted(entries, key=lambda entry: entry[0])
        delivered = [(came, answered) for came, answered, status in entries if status == 200 and answered is not None]
        for came, _, _ in entries:
            for asked, answered in delivered:
                if answered >= came:
                    continue
                if not any(asked - ARRIVAL_S <= k <= came and k <= answered + GRACE_S for k in kills):
                    found.append(f"{digest[:12]}: answered at {answered:.3f}, asked again at {came:.3f}")
    return found


def test_killed_builds_never_ask_for_a_delivered_answer_again(prefect_harness, sim: Simulator, tmp_path: Path):
    reference_uri = run_build(_spec(tmp_path / "reference", sim.url))
    expected = read_release(reference_uri)
    sim.reset()  # counters and recorded bodies: from here on, the killed builds only

    folder = tmp_path / "killed"
    spec = _spec(folder, sim.url)
    kills: list[float] = []
    journalled: list[int] = []  # answers in the journals after each kill (not yet checkpointed)
    journals = folder / "store" / "e2e" / "journal"
    for n, (kind, count) in enumerate(KILLS):
        process = _start(spec, folder, n)
        kills.append(_kill_when(process, lambda kind=kind, count=count: _answered(sim, kind) >= count))
        journalled.append(sum(len(p.read_text().splitlines()) for p in journals.rglob("*.jsonl")))
    process = _start(spec, folder, len(KILLS))
    out, _ = process.communicate(timeout=600)
    log = (folder / f"stderr-{len(KILLS)}.txt").read_text()
    assert process.returncode == 0, log[-3000:]

    bodies = _bodies(sim)
    assert not paid_twice(bodies, kills), paid_twice(bodies, kills)[:10]
    again = sum(1 for entries in bodies.values() if sum(1 for e in entries if e[2] == 200) > 1)
    print(f"{len(bodies)} bodies, {again} answered twice (within {GRACE_S} s of a kill); journalled {journalled}")
    assert sum(journalled) > 0  # the kills did land between checkpoints: the journal answered for them
    assert not diff_releases(expected, read_release(out.strip().splitlines()[-1]))
    assert not list((folder / "store" / "e2e" / "journal").rglob("*.jsonl"))  # folded and removed


def test_paid_twice_counts_only_answers_delivered_well_before_a_kill():
    bodies = {
        "a" * 64: [[0.0, 1.0, 200], [5.5, 6.0, 200]],  # delivered 4 s before the kill at 5.0: paid twice
        "b" * 64: [[0.0, 4.5, 200], [5.5, 6.0, 200]],  # delivered 0.5 s before it: in transit
        "c" * 64: [[0.0, 1.0, 500], [2.0, 3.0, 200]],  # a failure retried: not an answer
        "d" * 64: [[0.0, 1.0, 200], [2.0, 3.0, 200]],  # asked again with no kill in between
        "e" * 64: [[4.0, 5.2, 200], [5.5, 6.0, 200]],  # written after the kill, to a dead client
        "f" * 64: [[6.5, 6.7, 200], [7.0, 8.0, 200]],  # asked after the kill, answered, asked again
        "g" * 64: [[5.1, 5.2, 200], [7.0, 8.0, 200]],  # stamped 0.1 s after the kill: sent before it
    }
    assert [line[:1] for line in paid_twice(bodies, [5.0])] == ["a", "d", "f"]
