"""A build whose endpoint has two simulator replicas, one stopped midway: nothing lost, nothing that
had an answer asked for again."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from tests.e2e.sim_spec import sim_endpoint
from tests.e2e.test_build_simulator import SECRET, K, run_build, spec_data, write_sources, write_spec
from ultrafeedback.infra.simulator.config import SimulatorConfig
from ultrafeedback.infra.simulator.server import Simulator

pytestmark = pytest.mark.e2e


def _answered(sim: Simulator) -> Counter[str]:
    """Per request body, how often the replica answered it with 200 (its ``/stats/bodies`` record,
    read directly: a stopped replica serves nothing)."""
    state = sim._state
    assert state is not None
    with state.lock:
        return Counter(
            {body: sum(1 for *_, status in entries if status == 200) for body, entries in state.bodies.items()}
        )


def _every_completion_rated(uri: str) -> None:
    """The release holds every instruction with its ``K`` completions, each rated and critiqued."""
    import datasets

    completions = datasets.load_dataset(uri, name="completions", split="train")
    assert len(completions) == 9
    for row in completions:
        assert len(row["completions"]) == K
        for completion in row["completions"]:
            assert completion["response"] and completion["critique"]
            assert all(rating["Rating"] for rating in completion["annotations"].values())


def test_a_build_over_two_replicas_survives_one_stopped_midway(prefect_harness, tmp_path, monkeypatch):
    monkeypatch.setenv("UF_E2E_KEY", SECRET)
    config = SimulatorConfig(latency_ms=5, seed=3, api_key=SECRET, record_bodies=True)
    with Simulator(config) as a, Simulator(config) as b:
        endpoint = {**sim_endpoint(a.url, "UF_E2E_KEY"), "replica_max_failures": 2}
        del endpoint["base_url"]
        endpoint["base_urls"] = [a.url, b.url]
        write_sources(tmp_path)
        spec = write_spec(tmp_path, spec_data(tmp_path, a.url, endpoints={"sim": endpoint}))
        stopped = threading.Event()

        def stop_a_midway() -> None:
            while a.stats()["total"] < 40:
                if stopped.wait(0.005):
                    return
            a.stop()
            stopped.set()

        watcher = threading.Thread(target=stop_a_midway, daemon=True)
        watcher.start()
        try:
            uri = run_build(spec)
        finally:
            stopped.set()
            watcher.join(10)
        assert a.port is None  # A was stopped during the build
        _every_completion_rated(uri)  # nothing lost
        a_answered, b_answered = _answered(a), _answered(b)
    assert sum(a_answered.values()) >= 20 and sum(b_answered.values()) > 0
    both = a_answered + b_answered
    assert set(both.values()) == {1}, [body for body, n in both.items() if n > 1]  # none answered twice
