"""ResultLog.compact: many checkpoint parts become one, with the same rows (last write wins)."""

from __future__ import annotations

from pydantic import BaseModel

from infra.store import Store


class Row(BaseModel):
    key: str
    value: int


def test_compact_merges_parts_and_keeps_the_latest_rows(tmp_path):
    log = Store(str(tmp_path), "d").results("stage", Row, key="key")
    for value in range(5):
        log.append([Row(key="a", value=value), Row(key=f"k{value}", value=value)])
    before = sorted(log.rows(), key=lambda r: r["key"])
    assert log.compact(min_parts=10) == 0 and len(log.parts()) == 5
    assert log.compact(min_parts=5) == 5
    assert len(log.parts()) == 1
    assert sorted(log.rows(), key=lambda r: r["key"]) == before
    assert {r["key"]: r["value"] for r in before}["a"] == 4
    log.append([Row(key="a", value=9)])  # a part written after compaction still wins
    assert {r["key"]: r["value"] for r in log.rows()}["a"] == 9
