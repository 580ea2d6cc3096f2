"""Quota stability under refresh: the latest release's instructions stay, new rows fill free quota
only, and a smaller quota that removes released rows says so."""

from __future__ import annotations

import random
from pathlib import Path

from tests.tasks.ingest.ingest_helpers import make_spec, write_jsonl
from ultrafeedback.tasks.ingest.ingest import ingest
from ultrafeedback.tasks.publish.history import ReleasedInstructions

TOPICS = ["volcanoes", "tides", "bread", "chess", "rivers", "owls", "glass", "comets", "jazz", "maple", "clouds"]


def _prompts(n: int, start: int = 0) -> list[dict[str, str]]:
    return [
        {"prompt": f"Question {i}: what would a {TOPICS[i % len(TOPICS)]} expert say about case number {i * 7919}?"}
        for i in range(start, start + n)
    ]


def _spec(tmp_path: Path, quota: int, **extra: object):
    return make_spec(
        tmp_path,
        [
            {
                "name": "demo",
                "loader": "jsonl",
                "path": "demo.jsonl",
                "fields": {"instruction": "prompt"},
                "quota": quota,
            }
        ],
        seed=7,
        **extra,
    )


def _released(result, version: int = 1) -> ReleasedInstructions:
    ids: dict[str, set[str]] = {}
    for item in result.instructions:
        ids.setdefault(item.source, set()).add(item.id)
    return ReleasedInstructions(version=version, content_hash=f"hash-{version}", ids=ids)


def _ids(result) -> set[str]:
    return {item.id for item in result.instructions}


def test_rows_added_to_a_source_at_its_quota_swap_nothing_out(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "demo.jsonl", _prompts(30))
    v1 = ingest(_spec(tmp_path, 12))
    assert len(v1.instructions) == 12
    write_jsonl(tmp_path / "demo.jsonl", _prompts(40))  # 10 rows added

    plain = ingest(_spec(tmp_path, 12))  # what a sample by rank alone does: released rows swapped out
    assert len(_ids(v1) - _ids(plain)) > 0

    v2 = ingest(_spec(tmp_path, 12), released=_released(v1))
    assert _ids(v2) == _ids(v1)  # the quota is full: the new rows wait
    assert v2.stats["demo"]["over_quota"] == 28 and v2.stats["demo"]["quota_reduced"] == 0
    assert v2.released_removed == [] and v2.notes == []

    grown = ingest(_spec(tmp_path, 16), released=_released(v1))  # a larger quota: new rows fill it
    assert _ids(v1) < _ids(grown) and len(grown.instructions) == 16


def test_a_smaller_quota_removes_released_rows_and_says_so(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "demo.jsonl", _prompts(30))
    v1 = ingest(_spec(tmp_path, 12))
    v2 = ingest(_spec(tmp_path, 8), released=_released(v1))
    assert _ids(v2) < _ids(v1) and len(v2.instructions) == 8
    assert v2.stats["demo"]["quota_reduced"] == 4
    removed = v2.released_removed
    assert {row["id"] for row in removed} == _ids(v1) - _ids(v2)
    assert {row["reason"] for row in removed} == {"quota_reduced"}
    assert [note["removed"] for note in v2.notes] == [4]
    assert "4 of the 12 instructions released in v1 were removed" in v2.notes[0]["text"]
    assert sum(1 for d in v2.dropped if d.reason == "quota_reduced") == 4
    # the rank decides which released rows stay: the same 8 a fresh sample of 8 takes from them
    assert _ids(v2) == _ids(ingest(_spec(tmp_path, 8)))


def test_a_new_near_duplicate_of_a_released_row_is_the_one_dropped(tmp_path: Path) -> None:
    sources = [
        {"name": "first", "loader": "jsonl", "path": "first.jsonl", "fields": {"instruction": "prompt"}},
        {"name": "second", "loader": "jsonl", "path": "second.jsonl", "fields": {"instruction": "prompt"}},
    ]
    write_jsonl(tmp_path / "first.jsonl", _prompts(5))
    write_jsonl(tmp_path / "second.jsonl", _prompts(5, start=100))
    v1 = ingest(make_spec(tmp_path, sources))
    released_text = _prompts(1, start=102)[0]["prompt"]
    # a near copy of a released `second` row lands in `first`, which comes earlier in spec order
    write_jsonl(tmp_path / "first.jsonl", [*_prompts(5), {"prompt": released_text.lower().replace("?", "!")}])
    plain = ingest(make_spec(tmp_path, sources))
    assert {i.instruction for i in plain.instructions} >= {released_text.lower().replace("?", "!")}
    assert released_text not in {i.instruction for i in plain.instructions}

    v2 = ingest(make_spec(tmp_path, sources), released=_released(v1))
    assert _ids(v2) == _ids(v1)
    assert any(d.reason.startswith("near_duplicate_of:") and d.source == "first" for d in v2.dropped)


def test_a_release_inside_the_plain_result_changes_nothing(tmp_path: Path) -> None:
    """What lets a rerun after publishing skip ingest: preferring a subset of the plain result
    gives the plain result."""
    write_jsonl(tmp_path / "demo.jsonl", _prompts(40))
    plain = ingest(_spec(tmp_path, 15))
    rng = random.Random(4)
    for size in (0, 5, 15):
        subset = set(rng.sample(sorted(_ids(plain)), size))
        released = ReleasedInstructions(version=1, content_hash="h", ids={"demo": subset})
        again = ingest(_spec(tmp_path, 15), released=released)
        assert _ids(again) == _ids(plain) and again.released_removed == []


def test_a_released_row_gone_from_its_file_is_listed(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "demo.jsonl", _prompts(10))
    v1 = ingest(_spec(tmp_path, 10))
    write_jsonl(tmp_path / "demo.jsonl", _prompts(9))
    v2 = ingest(_spec(tmp_path, 10), released=_released(v1))
    assert [row["reason"] for row in v2.released_removed] == ["missing_from_source"]
