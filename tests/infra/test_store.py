"""The store: atomic writes, result logs (parts, key index, reads by key, compaction), shard files."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from ultrafeedback.infra.store import Store, StoreUnavailable


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


def _log(tmp_path):
    return Store(str(tmp_path), "d").results("stage", Row, key="key")


def test_the_index_maps_each_key_to_the_part_with_its_latest_row(tmp_path):
    log = _log(tmp_path)
    first = log.append([Row(key="a", value=1), Row(key="b", value=1)], label="s00000").rsplit("/", 1)[1]
    second = log.append([Row(key="a", value=2)], label="s00001").rsplit("/", 1)[1]
    assert log.index() == {"a": second, "b": first}
    third = log.append([Row(key="c", value=3)], label="s00001").rsplit("/", 1)[1]
    assert log.index()["c"] == third  # kept current by this object's appends
    assert _log(tmp_path).index() == log.index()  # and a fresh reader builds the same from key columns


def test_read_keys_reads_only_the_parts_that_hold_them(tmp_path, monkeypatch):
    log = _log(tmp_path)
    log.append([Row(key="a", value=1), Row(key="b", value=1)], label="s00000")
    log.append([Row(key="c", value=2)], label="s00001")
    log.append([Row(key="a", value=3)], label="s00002")
    opened: list[str] = []
    real_open = log.store.fs.open
    monkeypatch.setattr(log.store.fs, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    log.index()
    opened.clear()
    table = log.read_keys(["a", "zzz"])
    assert table.to_pylist() == [{"key": "a", "value": 3}]  # the latest row; unknown keys skipped
    assert len(opened) == 1 and "s00002" in opened[0]
    assert log.read_keys([]).num_rows == 0
    assert log.read_keys(["b"], columns=["key"]).column_names == ["key"]


def test_compact_by_label_merges_one_shards_parts_and_keeps_the_index(tmp_path):
    log = _log(tmp_path)
    for value in range(3):
        log.append([Row(key=f"a{value}", value=value)], label="s00000")
    log.append([Row(key="b", value=1)], label="s00001")
    log.index()
    assert log.compact(min_parts=2, label="s00000") == 3
    labels = sorted(log.label_of(p) for p in log.parts())
    assert labels == ["s00000", "s00001"]
    assert log.read_keys(["a0", "a2", "b"]).num_rows == 3  # the index followed the merged rows
    assert log.compact(min_parts=2, label="s00001") == 0


def test_a_shard_file_records_the_fingerprint_of_its_inputs(tmp_path):
    import pyarrow as pa

    store = Store(str(tmp_path), "d")
    assert store.fingerprint("scored/shard-00000.parquet") is None
    store.write_shard("scored/shard-00000.parquet", pa.table({"x": [1, 2]}), "abc")
    assert store.fingerprint("scored/shard-00000.parquet") == "abc"
    assert store.num_rows("scored/shard-00000.parquet") == 2
    store.write_table("plain.parquet", pa.table({"x": [1]}))
    assert store.fingerprint("plain.parquet") is None


def test_store_log_uses_the_registry(tmp_path):
    from ultrafeedback.outputs import OUTPUTS

    store = Store(str(tmp_path), "d")
    completions = store.log("completions")
    assert (completions.stage, completions.key, completions.model) == (
        "completions",
        "request_id",
        OUTPUTS["completions"].record,
    )
    failures = store.log("failures/annotations")
    assert (failures.stage, failures.key) == ("failures/annotations", "key")
    with pytest.raises(KeyError, match="unknown stage output 'completion'"):
        store.log("completion")
    with pytest.raises(KeyError, match="records no failures"):
        store.log("failures/scored")


def test_read_located_needs_no_index_and_read_keys_survives_a_compaction_in_between(tmp_path):
    log = _log(tmp_path)
    for value in range(3):
        log.append([Row(key=f"k{value}", value=value)], label="s00000")
    located = log.locate(["k0", "k2", "missing"])
    assert sorted(k for keys in located.values() for k in keys) == ["k0", "k2"]
    # another process (no index) reads what this one located
    other = Store(str(tmp_path), "d").results("stage", Row, key="key")
    assert sorted(other.read_located(located).column("value").to_pylist()) == [0, 2]
    # ... and another process compacts the parts away: the located parts are gone
    Store(str(tmp_path), "d").results("stage", Row, key="key").compact(min_parts=2, label="s00000")
    with pytest.raises(FileNotFoundError):
        other.read_located(located)
    assert sorted(log.read_keys(["k0", "k2"]).column("value").to_pylist()) == [0, 2]  # re-lists the parts


def test_probe_writes_and_removes_a_file(tmp_path):
    store = Store(str(tmp_path / "store"), "ds")
    store.probe()
    assert list((tmp_path / "store" / "ds").iterdir()) == []


def test_probe_of_an_unwritable_store_names_store_and_the_cause(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    store = Store(str(tmp_path / "a-file" / "store"), "ds")  # root ignores permission bits; this it cannot write
    with pytest.raises(StoreUnavailable) as caught:
        store.probe()
    message = str(caught.value)
    assert message.startswith(f"store: cannot write to {tmp_path}/a-file/store/ds: ")
    assert "Error" in message and "\n" not in message
