"""What a killed publish leaves behind is removed at the next run's start."""

from __future__ import annotations

from pathlib import Path

from ultrafeedback.spec import validate_dict
from ultrafeedback.tasks.publish.task import remove_leftovers


def spec_with_target(tmp_path: Path, target: Path):
    return validate_dict(
        {
            "name": "left",
            "store": str(tmp_path / "store"),
            "sources": [{"name": "s", "loader": "jsonl", "path": str(tmp_path / "in.jsonl")}],
            "endpoints": {"sim": {"base_url": "http://127.0.0.1:1/v1", "api_key_env": "UF_NONE"}},
            "models": [{"id": "m", "backend": "openai", "endpoint": "sim"}],
            "completions_per_instruction": 1,
            "judge": {"backend": "heuristic"},
            "publish": {"targets": [{"kind": "store"}, {"kind": "local", "uri": str(target)}]},
        },
        origin="test",
    )


def test_staging_folders_of_a_killed_publish_are_removed_and_releases_kept(tmp_path):
    target = tmp_path / "elsewhere"
    spec = spec_with_target(tmp_path, target)
    releases = tmp_path / "store" / "left" / "releases"
    for folder in (releases / "v1", releases / ".staging-v2-0123456789ab", target / ".staging-v1-ba9876543210"):
        folder.mkdir(parents=True)
        (folder / "part.parquet").write_bytes(b"x")
    removed = remove_leftovers(spec)
    assert sorted(Path(p).name for p in removed) == [".staging-v1-ba9876543210", ".staging-v2-0123456789ab"]
    assert [p.name for p in releases.iterdir()] == ["v1"] and not list(target.iterdir())


def test_nothing_to_remove_when_nothing_was_published(tmp_path):
    assert remove_leftovers(spec_with_target(tmp_path, tmp_path / "none")) == []
