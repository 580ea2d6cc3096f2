"""Releases streamed from the store's shard files: identical to the whole-table release (files,
order, card, manifest), a no-op rerun on unchanged inputs that serialises nothing, and every table
builder fed with multi-chunk tables (the ``Expected Array, got ChunkedArray`` crash at scale)."""

from __future__ import annotations

import hashlib
import io
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from tests.tasks.pairs.scored_data import SCHEMA, pairs_spec, scored_rows, write_scored_shards  # noqa: E402
from ultrafeedback.infra.store import Store  # noqa: E402
from ultrafeedback.spec import Spec  # noqa: E402
from ultrafeedback.tasks.pairs.pairs import binarize, build_pairs, split_binarized  # noqa: E402
from ultrafeedback.tasks.pairs.task import pairs_task  # noqa: E402
from ultrafeedback.tasks.publish import publish as publish_module  # noqa: E402
from ultrafeedback.tasks.publish.features import completions_features  # noqa: E402
from ultrafeedback.tasks.publish.publish import (  # noqa: E402
    ReleaseTables,
    ShardedTables,
    _ArrowSize,
    list_releases,
    publish_release,
)
from ultrafeedback.tasks.publish.tables import (  # noqa: E402
    COMPLETION_SOURCES,
    _struct,
    binarized_table,
    completion_records,
    completions_table,
    conform,
    pairs_table,
)

ROWS = scored_rows(150, seed=11)
AGGREGATE = {"stats": {"prompts": 150, "completions": len(ROWS)}}
CARD_INFO: dict[str, Any] = {"spec_hash": "0123456789abcdef", "pairs_score": "fine_grained", "binarize_rule": "h4"}
MAX_ROWS = 50


def _spec(root: Path) -> Spec:
    return pairs_spec(str(root / "store"), test_size=0.2)


def _built(root: Path, per_shard: int = 13) -> Store:
    """A store with scored shards (several sources per shard order) and the pairs stage's output."""
    spec = _spec(root)
    store = Store(spec.store, spec.name)
    write_scored_shards(store, ROWS, per_shard)
    pairs_task.fn(spec)
    return store


def _whole(rows: list[dict[str, Any]] = ROWS) -> ReleaseTables:
    scored = pd.DataFrame(rows)
    binarized = binarize(scored, "h4", 42, ["truthful_qa"])
    return ReleaseTables(scored, build_pairs(scored), split_binarized(binarized, 0.2, 42), AGGREGATE)


def _todays_files(tables: ReleaseTables, max_rows: int, row_group_rows: int) -> dict[str, str]:
    """relpath -> sha256 of the release files as the whole-table publish wrote them: each split as
    one table, cut in equal slices, each slice ``pq.write_table`` in row groups."""
    split_tables = {
        ("completions", "train"): completions_table(tables.scored),
        ("pairs", "train"): pairs_table(tables.pairs),
        **{("binarized", s): binarized_table(rows) for s, rows in tables.binarized.items()},
    }
    files = {}
    for (config, split), table in split_tables.items():
        if not table.num_rows:
            continue
        n = max(1, math.ceil(table.num_rows / max_rows))
        size = math.ceil(table.num_rows / n)
        for i in range(n):
            sink = io.BytesIO()
            pq.write_table(table.slice(i * size, size), sink, compression="zstd", row_group_size=row_group_rows)
            files[f"{config}/{split}-{i:05d}-of-{n:05d}.parquet"] = hashlib.sha256(sink.getvalue()).hexdigest()
    return files


def _data_files(manifest: dict[str, Any]) -> dict[str, str]:
    return {path: info["sha256"] for path, info in manifest["files"].items() if path.endswith(".parquet")}


# --------------------------------------------------------------------------- identical releases


def test_release_from_shards_is_identical_to_the_whole_table_release(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(publish_module, "ROW_GROUP_ROWS", 8)  # several row groups per file
    store = _built(tmp_path)
    tables = _whole()
    sharded = publish_release(store, "unit", ShardedTables(AGGREGATE), {}, CARD_INFO, max_shard_rows=MAX_ROWS)
    whole = publish_release(
        store, "unit", tables, {}, CARD_INFO, target_uri=str(tmp_path / "whole"), max_shard_rows=MAX_ROWS
    )

    files = _data_files(sharded.manifest)
    assert files == _data_files(whole.manifest) == _todays_files(tables, MAX_ROWS, 8)
    assert (
        sum(path.startswith("pairs/") for path in files) > 2 and sum(p.startswith("completions/") for p in files) == 3
    )
    assert sharded.manifest["content_hash"] == whole.manifest["content_hash"]
    for key in ("counts", "configs", "judges", "statistics", "gates", "spec_hash"):
        assert sharded.manifest[key] == whole.manifest[key], key
    assert sharded.manifest["input_fingerprint"] and whole.manifest["input_fingerprint"] is None
    card = (Path(sharded.uri) / "README.md").read_text().replace(sharded.uri, "URI")
    assert card == (Path(whole.uri) / "README.md").read_text().replace(whole.uri, "URI")

    # the records, in order: completions by (source, id), pairs and binarized rows by instruction id
    released = pa.concat_tables(pq.read_table(Path(sharded.uri) / p) for p in sorted(files) if "completions/" in p)
    assert released.to_pylist() == completion_records(tables.scored)
    keys = [(r["source"], r["id"]) for r in released.select(["source", "id"]).to_pylist()]
    assert keys == sorted(keys) and len(set(keys)) == 150
    pairs = pa.concat_tables(pq.read_table(Path(sharded.uri) / p) for p in sorted(files) if p.startswith("pairs/"))
    assert pairs.column("pair_id").to_pylist() == [p.pair_id for p in tables.pairs]


def test_release_does_not_depend_on_the_shard_size(tmp_path: Path) -> None:
    one = publish_release(_built(tmp_path / "a", per_shard=1), "unit", ShardedTables(AGGREGATE), {}, CARD_INFO)
    big = publish_release(_built(tmp_path / "b", per_shard=1000), "unit", ShardedTables(AGGREGATE), {}, CARD_INFO)
    assert one.manifest["content_hash"] == big.manifest["content_hash"]
    assert one.manifest["input_fingerprint"] != big.manifest["input_fingerprint"]  # other input files
    assert one.manifest["configs"] == big.manifest["configs"]


def test_loads_with_datasets_in_the_whole_table_order(tmp_path: Path) -> None:
    import datasets

    store = _built(tmp_path)
    release = publish_release(store, "unit", ShardedTables(AGGREGATE), {}, CARD_INFO, max_shard_rows=MAX_ROWS)
    tables = _whole()
    completions = datasets.load_dataset(release.uri, name="completions", split="train")
    assert completions.features == completions_features()
    assert completions["id"] == [r["id"] for r in completion_records(tables.scored)]
    binarized = datasets.load_dataset(release.uri, name="binarized")
    for split, rows in tables.binarized.items():
        assert binarized[split]["instruction_id"] == [r["instruction_id"] for r in rows]


# --------------------------------------------------------------------------- the fast no-op


def test_unchanged_inputs_return_the_release_without_serialising(tmp_path: Path, monkeypatch) -> None:
    store = _built(tmp_path)
    first = publish_release(store, "unit", ShardedTables(AGGREGATE), {"run": 1}, CARD_INFO)
    assert first.created and len(first.manifest["input_fingerprint"]) == 64

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a no-op rerun serialised the release")

    with monkeypatch.context() as patch:
        patch.setattr(publish_module, "_stored_splits", refuse)
        patch.setattr(publish_module, "_serialise", refuse)
        again = publish_release(store, "unit", ShardedTables(AGGREGATE), {"run": 2}, CARD_INFO)
    assert (again.version, again.uri, again.created, again.manifest) == (1, first.uri, False, first.manifest)

    # other bytes, same rows (a shard rewritten in other row groups): serialised, found identical
    shard = store.read_table("scored/shard-00000.parquet")
    sink = pa.BufferOutputStream()
    pq.write_table(shard, sink, row_group_size=3)
    store.write_bytes("scored/shard-00000.parquet", sink.getvalue().to_pybytes())
    third = publish_release(store, "unit", ShardedTables(AGGREGATE), {}, CARD_INFO)
    assert (third.version, third.created) == (1, False)

    # new card inputs, or a changed input file: a new release with its own fingerprint
    fourth = publish_release(store, "unit", ShardedTables(AGGREGATE), {}, {**CARD_INFO, "spec_hash": "f" * 16})
    assert (fourth.version, fourth.created) == (2, True)
    assert fourth.manifest["input_fingerprint"] != first.manifest["input_fingerprint"]
    pairs = store.read_table("pairs/shard-00001.parquet")
    store.write_table("pairs/shard-00001.parquet", pairs.slice(1))
    fifth = publish_release(store, "unit", ShardedTables(AGGREGATE), {}, {**CARD_INFO, "spec_hash": "f" * 16})
    assert (fifth.version, fifth.manifest["counts"]["pairs"]["train"]) == (
        3,
        pairs.num_rows - 1 + _pairs_elsewhere(store),
    )
    assert [r["version"] for r in list_releases(store)] == [1, 2, 3]


def _pairs_elsewhere(store: Store) -> int:
    return sum(store.read_table(f"pairs/{n}").num_rows for n in store.ls("pairs") if n != "shard-00001.parquet")


def test_object_store_target_streams_and_a_rerun_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    import fsspec

    store = _built(tmp_path)
    calls: list[str] = []
    real_put = publish_module._put

    def recording_put(fs, path, data, local):  # noqa: ANN001, ANN202
        calls.append(path)
        return real_put(fs, path, data, local)

    monkeypatch.setattr(publish_module, "_put", recording_put)
    uri = "memory://bucket-stream/releases"
    try:
        release = publish_release(store, "unit", ShardedTables(AGGREGATE), {}, CARD_INFO, uri, max_shard_rows=MAX_ROWS)
        fs = fsspec.filesystem("memory")
        folder = "/bucket-stream/releases/v1"
        assert calls[-1].endswith("v1/manifest.json") and calls[-2].endswith("v1/README.md")
        for relpath, info in release.manifest["files"].items():
            assert hashlib.sha256(fs.cat_file(f"{folder}/{relpath}")).hexdigest() == info["sha256"]
        local = publish_release(
            store, "unit", _whole(), {}, CARD_INFO, str(tmp_path / "local"), max_shard_rows=MAX_ROWS
        )
        assert _data_files(release.manifest) == _data_files(local.manifest)

        calls.clear()
        monkeypatch.setattr(publish_module, "_serialise", lambda *a, **k: pytest.fail("serialised"))
        again = publish_release(store, "unit", ShardedTables(AGGREGATE), {}, CARD_INFO, uri, max_shard_rows=MAX_ROWS)
        assert (again.version, again.created, calls) == (1, False, [])
    finally:
        fsspec.filesystem("memory").rm("/bucket-stream", recursive=True)


def test_a_store_without_shards_publishes_an_empty_release(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    store = Store(spec.store, spec.name)
    pairs_task.fn(spec)
    release = publish_release(store, "unit", ShardedTables(None), {}, CARD_INFO)
    assert release.manifest["counts"] == {
        "completions": {"train": 0},
        "pairs": {"train": 0},
        "binarized": dict.fromkeys(
            ("train_prefs", "test_prefs", "train_sft", "test_sft", "train_gen", "test_gen"), 0
        ),
    }
    assert set(release.manifest["files"]) == {"README.md"}


# --------------------------------------------------------------------------- multi-chunk tables


def _chunked(table: pa.Table, pieces: int = 3) -> pa.Table:
    step = math.ceil(table.num_rows / pieces)
    chunked = pa.concat_tables([table.slice(i * step, step) for i in range(pieces)])
    assert all(column.num_chunks == pieces for column in chunked.columns)
    return chunked


def test_every_table_builder_accepts_multi_chunk_tables() -> None:
    tables = _whole(ROWS[:300])
    scored = pa.Table.from_pylist(ROWS[:300], schema=SCHEMA)
    expected = completions_table(tables.scored)
    assert expected.num_rows > 0
    # the scale crash: pandas' Arrow-backed columns of a multi-chunk table are ChunkedArrays
    frame = _chunked(scored).to_pandas()
    assert completions_table(frame).equals(expected)
    assert completions_table(_chunked(scored)).equals(expected)
    assert completion_records(_chunked(scored)) == expected.to_pylist()
    struct_type = completions_features().arrow_schema.field("completions").type.value_type
    assert len(_struct(frame, struct_type, COMPLETION_SOURCES)) == len(frame)

    pairs = pairs_table(tables.pairs)
    assert pairs_table(_chunked(pairs)).equals(pairs)
    assert pairs_table(_chunked(pairs).to_pandas()).equals(pairs)
    binarized = binarized_table(tables.binarized["train_prefs"])
    assert binarized_table(_chunked(binarized)).equals(binarized)
    assert conform(_chunked(binarized), binarized.schema).equals(binarized)

    sizes = [_ArrowSize(), _ArrowSize()]
    sizes[0].add(expected)
    sizes[1].add(_chunked(expected, 5))
    assert sizes[0].total() == sizes[1].total() > 0


def test_whole_table_release_from_multi_chunk_frames(tmp_path: Path) -> None:
    plain = _whole(ROWS[:300])
    scored = _chunked(pa.Table.from_pylist(ROWS[:300], schema=SCHEMA), 4).to_pandas()
    chunked = ReleaseTables(
        scored=scored,
        pairs=_chunked(pairs_table(plain.pairs)).to_pandas(),
        binarized={s: _chunked(binarized_table(rows)) for s, rows in plain.binarized.items()},
        aggregate=AGGREGATE,
    )
    store = Store(str(tmp_path / "store"), "unit")
    first = publish_release(store, "unit", plain, {}, CARD_INFO, max_shard_rows=7)
    again = publish_release(store, "unit", chunked, {}, CARD_INFO, max_shard_rows=7)
    assert (again.version, again.created) == (1, False)
    assert again.manifest["content_hash"] == first.manifest["content_hash"]
