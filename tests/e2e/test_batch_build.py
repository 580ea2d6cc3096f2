"""Builds through the provider Batch API against the simulator: killed after its batches were
submitted and started again, expired batches, failed lines and unparseable answers re-asked in a
second batch; every release is the one the online build publishes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.e2e.test_build_simulator import SECRET, run_build, spec_data, write_sources, write_spec
from tests.e2e.test_kill_resume import _kill_when, _start
from tests.golden.golden import diff_releases, read_release
from ultrafeedback.infra.simulator.config import SimulatorConfig
from ultrafeedback.infra.simulator.server import Simulator

pytestmark = pytest.mark.e2e

SEED = 3


def batch_spec(folder: Path, url: str, batch: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_sources(folder)
    data = spec_data(folder, url)
    data["endpoints"]["sim"]["batch_api"] = batch
    data["execution"].update(batch_poll_s=0.2, worker_processes=0)
    return write_spec(folder, data)


@pytest.fixture(scope="module")
def online_release(tmp_path_factory, prefect_harness) -> dict:
    """The release of the same spec built online (no faults)."""
    os.environ["UF_E2E_KEY"] = SECRET
    with Simulator(SimulatorConfig(seed=SEED, api_key=SECRET)) as sim:
        uri = run_build(batch_spec(tmp_path_factory.mktemp("online"), sim.url, batch=False))
    return read_release(uri)


def test_a_batch_build_killed_after_submitting_resumes_its_batches_and_pays_each_key_once(
    online_release, tmp_path, monkeypatch
):
    monkeypatch.setenv("UF_E2E_KEY", SECRET)
    config = SimulatorConfig(seed=SEED, api_key=SECRET, batch_delay_s=3.0)
    with Simulator(config) as sim:
        folder = tmp_path / "killed"
        spec = batch_spec(folder, sim.url)
        registry = folder / "store" / "e2e" / "batches"
        # kill right after batches were submitted: the first generation batches (one per shard and model),
        # then the first judge batch
        kill_points = (
            lambda: sim.batch_stats()["created"] >= 3,
            lambda: any((registry / "annotations").glob("*.json")) and sim.batch_stats()["created"] > 3,
        )
        for n, ready in enumerate(kill_points):
            process = _start(spec, folder, n)
            _kill_when(process, ready)
            assert list(registry.rglob("*.json")), "the batches were not in the store's registry"
            if n == 0:  # killed right after its generation batches were created: they were still running
                stats = sim.batch_stats()
                assert stats["by_status"].get("completed", 0) < stats["created"]
        process = _start(spec, folder, 2)
        out, _ = process.communicate(timeout=600)
        assert process.returncode == 0, (folder / "stderr-2.txt").read_text()[-3000:]
        stats = sim.batch_stats()
    submitted = stats["submitted"]
    assert len(submitted) == 36 + 36 + 36  # completions, aspect calls, critiques
    assert set(submitted.values()) == {1}, [k for k, n in submitted.items() if n > 1]
    assert stats["by_status"] == {"completed": stats["created"]}  # none failed, none was left behind
    assert sim.stats()["by_endpoint"] == {"batch": 108}  # nothing went online
    assert not diff_releases(online_release, read_release(out.strip().splitlines()[-1]))
    assert not list(registry.rglob("*.json"))  # every shard's batches were collected


FAULTS = {
    "expired": {"batch_expire_first": 2, "batch_expire_fraction": 0.5},
    "failed_lines": {"batch_line_error_rate": 0.25, "max_faults_per_body": 1},
    "unparseable": {"rate_unparseable": 0.25, "max_faults_per_body": 1},
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_batch_build_with_faults_sends_only_the_unanswered_keys_again_and_publishes_the_online_release(
    online_release, tmp_path, monkeypatch, fault
):
    monkeypatch.setenv("UF_E2E_KEY", SECRET)
    config = SimulatorConfig(seed=SEED, api_key=SECRET, batch_delay_s=0.2, **FAULTS[fault])
    with Simulator(config) as sim:
        uri = run_build(batch_spec(tmp_path, sim.url))
        stats, faults = sim.batch_stats(), sim.stats()["faults"]
    assert not diff_releases(online_release, read_release(uri))
    again = {key for key, count in stats["submitted"].items() if count > 1}
    assert again, "no key went into a second batch"
    if fault == "expired":
        assert stats["by_status"]["expired"] == 2
        rows = _batches_artifact()  # the batches, as the Prefect UI shows them
        assert [r["status"] for r in rows].count("expired") == 2 and len(rows) == stats["created"]
        assert all(r["batch"].startswith("batch_") and r["requests"] > 0 for r in rows)
        assert sum(r["completed"] for r in rows) == len(stats["submitted"])  # each key answered once
        # exactly the keys the expired batches did not answer (half of each) were sent again
        assert len(again) == sum(stats["submitted"].values()) - len(stats["submitted"])
    elif fault == "failed_lines":
        assert len(again) == faults["batch_line_500"]
    else:
        assert len(again) == faults["unparseable"]
        summary = json.loads((tmp_path / "store" / "e2e" / "runs" / "last.json").read_text())
        assert summary["requests_sent"]["annotations"] == 72 + len(again)
    assert max(stats["submitted"].values()) == 2
    assert not list((tmp_path / "store" / "e2e" / "failures").rglob("*.parquet")) or _no_open_failures(tmp_path)


def _no_open_failures(folder: Path) -> bool:
    from ultrafeedback.infra.store import Store

    store = Store(str(folder / "store"), "e2e")
    return all(
        store.log(f"failures/{name}").read().num_rows == 0 for name in ("completions", "annotations", "critiques")
    )


def _batches_artifact() -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["batches-e2e"])), sort=ArtifactSort.CREATED_DESC
        )
    data = found[0].data
    return json.loads(data) if isinstance(data, str) else data
