"""Refreshes of a published dataset against the simulator, under a real Prefect API: released
instructions stay when rows are added to a source at its quota, each release's changelog matches
its data, a test row never moves to train, and a smaller quota says what it removed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.sim_spec import SIM_JUDGE, sim_endpoint, sim_models
from tests.tasks.publish.changelog_check import check_changelog, read_split
from ultrafeedback.infra.simulator.config import SimulatorConfig
from ultrafeedback.infra.simulator.server import Simulator

pytestmark = pytest.mark.e2e

KEY = "sk-refresh-test-0000"
TOPICS = ["volcanoes", "tides", "bread", "chess", "rivers", "owls", "glass", "comets", "jazz", "maple", "clouds"]


def _prompts(n: int) -> list[str]:
    return [f"Question {i}: what would a {TOPICS[i % len(TOPICS)]} expert say about case {i * 7919}?" for i in range(n)]


def _write_source(folder: Path, n: int, extra: int = 3) -> None:
    (folder / "demo.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in _prompts(n)))
    other = [f"Extra {i}: name {i + 2} uses of copper in a {TOPICS[i]} workshop." for i in range(extra)]
    (folder / "extra.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in other))


def _spec(folder: Path, url: str, quota: int, models: int = 5) -> Path:
    data: dict[str, Any] = {
        "name": "refresh",
        "seed": 7,
        "store": str(folder / "store"),
        "sources": [
            {
                "name": "demo",
                "loader": "jsonl",
                "path": "demo.jsonl",
                "fields": {"instruction": "prompt"},
                "quota": quota,
            },
            {"name": "extra", "loader": "jsonl", "path": "extra.jsonl", "fields": {"instruction": "prompt"}},
        ],
        "endpoints": {"sim": sim_endpoint(url, "UF_REFRESH_KEY")},
        "models": sim_models(models),
        "completions_per_instruction": 4,
        "sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 32},
        "judge": dict(SIM_JUDGE),
        "binarize": {"rule": "h4", "test_size": 0.25, "seed": 1},
        "gates": {"data_docs": False},
        "execution": {"shard_size": 5, "checkpoint_every": 8, "worker_processes": 0},
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _build(spec_path: Path) -> str:
    from ultrafeedback.flows.build import build

    return build(spec_path=str(spec_path), overrides=[])


def _ids(uri: str, source: str = "demo") -> set[str]:
    return {row["id"] for row in read_split(Path(uri), "completions", "train") if row["source"] == source}


def _prompt_ids(uri: str, split: str) -> set[str]:
    return {row["prompt_id"] for row in read_split(Path(uri), "binarized", split)}


def _manifest(uri: str) -> dict[str, Any]:
    return json.loads((Path(uri) / "manifest.json").read_text())


def test_refreshes_keep_released_rows_and_state_their_changes(prefect_harness, tmp_path, monkeypatch):
    monkeypatch.setenv("UF_REFRESH_KEY", KEY)
    with Simulator(SimulatorConfig(latency_ms=1, seed=4, api_key=KEY)) as sim:
        _write_source(tmp_path, 20)
        v1 = _build(_spec(tmp_path, sim.url, quota=12))
        assert v1.endswith("/v1") and len(_ids(v1)) == 12 and len(_ids(v1, "extra")) == 3
        released = _ids(v1)

        # 10 rows added to `demo`, at its quota, and 2 to `extra`: every released instruction is in
        # v2 and no demo row is swapped in (before, 4 of the 12 were), so only `extra`'s are asked for
        _write_source(tmp_path, 30, extra=5)
        sim.reset()
        v2 = _build(_spec(tmp_path, sim.url, quota=12))
        assert v2.endswith("/v2")
        assert _ids(v2) == released and _ids(v1, "extra") < _ids(v2, "extra")
        assert sim.stats()["by_kind"]["generation"] == 2 * 4
        manifest = _manifest(v2)
        check_changelog(Path(v1), Path(v2), manifest)
        completions = manifest["changes"]["configs"]["completions"]["train"]
        assert (completions["added"], completions["removed"], completions["changed"]) == (2, 0, 0)
        assert completions["reasons"]["added"] == {"new_instruction": 2}

        # a larger quota and a new model: the released instructions stay, new ones fill the free quota
        sim.reset()
        v3 = _build(_spec(tmp_path, sim.url, quota=16, models=6))
        assert v3.endswith("/v3")
        assert released <= _ids(v3) and len(_ids(v3)) == 16
        manifest = _manifest(v3)
        check_changelog(Path(v2), Path(v3), manifest)
        completions = manifest["changes"]["configs"]["completions"]["train"]
        assert completions["added"] == 4 and completions["removed"] == 0
        assert completions["reasons"]["added"] == {"new_instruction": 4}
        assert set(completions["reasons"]["changed"]) <= {"new_model"}
        # a test row never moves to train (nor a train row to test)
        for old, new in ((v1, v2), (v2, v3)):
            assert not _prompt_ids(old, "test_prefs") & _prompt_ids(new, "train_prefs")
            assert not _prompt_ids(old, "train_prefs") & _prompt_ids(new, "test_prefs")
            assert _prompt_ids(old, "test_sft") <= _prompt_ids(new, "test_sft")

        # a smaller quota removes released rows: the summary, the manifest and the card say so
        sim.reset()
        v4 = _build(_spec(tmp_path, sim.url, quota=10, models=6))
        assert v4.endswith("/v4") and _ids(v4) < _ids(v3) and len(_ids(v4)) == 10
        assert sim.stats()["total"] == 0  # nothing new to ask
        manifest = _manifest(v4)
        check_changelog(Path(v3), Path(v4), manifest)
        completions = manifest["changes"]["configs"]["completions"]["train"]
        assert completions["removed"] == 6 and completions["reasons"]["removed"] == {"quota_reduced": 6}
        assert any("6 of the 16 instructions released in v3 were removed" in n for n in manifest["changes"]["notes"])
        card = (Path(v4) / "README.md").read_text()
        assert "## Changes since v3" in card and "quota_reduced 6" in card
        summary = json.loads((tmp_path / "store" / "refresh" / "runs" / "last.json").read_text())
        assert summary["counts"]["released_removed:quota_reduced"] == 6
        assert any("quota is now 10" in note for note in summary["notes"])
        assert not _prompt_ids(v3, "test_prefs") & _prompt_ids(v4, "train_prefs")
