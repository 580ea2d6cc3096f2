"""The pairs stage streams scored shards: its stored products equal the whole-table functions on
the concatenated scored table (rows, values, order), whatever the shard size; the ordered merge and
the cursor it relies on; multi-chunk tables everywhere."""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from tests.tasks.pairs.scored_data import (  # noqa: E402
    SCHEMA,
    pairs_spec,
    scored_rows,
    shard_tables,
    write_scored_shards,
)
from ultrafeedback.infra.store import Store, arrow_schema  # noqa: E402
from ultrafeedback.records import Pair, ScoredCompletion  # noqa: E402
from ultrafeedback.spec import Spec  # noqa: E402
from ultrafeedback.tasks.pairs.pairs import (  # noqa: E402
    binarize,
    build_pairs,
    latest_rows,
    pairs_frame,
    split_binarized,
    split_test_ids,
)
from ultrafeedback.tasks.pairs.shards import (  # noqa: E402
    ShardStream,
    TableCursor,
    merge_shards,
    scored_shards,
)
from ultrafeedback.tasks.pairs.task import (  # noqa: E402
    iter_binarized,
    iter_pairs,
    pairs_task,
    read_binarized,
    read_binarized_splits,
    read_pairs,
)

ROWS = scored_rows(160, seed=7)


def _spec(tmp_path: Path, **binarize_rule: Any) -> Spec:
    pairs = {"score": binarize_rule.pop("score")} if "score" in binarize_rule else {}
    return pairs_spec(str(tmp_path / "store"), pairs, **binarize_rule)


def _store(spec: Spec) -> Store:
    return Store(spec.store, spec.name)


def _whole(rows: list[dict[str, Any]], spec: Spec) -> tuple[list[Pair], list[dict[str, Any]], dict, Counter]:
    """Today's whole-table products on the concatenated scored table."""
    scored = pd.DataFrame(rows)
    dropped: Counter[str] = Counter()
    rule = spec.binarize
    binarized = binarize(scored, rule.rule, rule.seed, rule.exclude_sources, dropped)
    return (
        build_pairs(scored, spec.pairs.score),
        binarized,
        split_binarized(binarized, rule.test_size, rule.seed),
        dropped,
    )


# --------------------------------------------------------------------------- the stage


@pytest.mark.parametrize(
    ("per_shard", "rule"),
    [
        (1, {}),
        (9, {"rule": "argilla", "test_size": 7.0, "seed": 3, "score": "overall"}),
        (23, {"test_size": 0.25}),
        (1000, {"rule": "argilla"}),  # one shard
    ],
)
def test_streaming_stage_equals_the_whole_table_functions(tmp_path: Path, per_shard: int, rule: dict) -> None:
    spec = _spec(tmp_path, **rule)
    store = _store(spec)
    shards = write_scored_shards(store, ROWS, per_shard)
    assert len(scored_shards(store)) == len(shards)
    pairs, binarized, splits, dropped = _whole(ROWS, spec)

    info = pairs_task.fn(spec)

    assert info == {
        "pairs": len(pairs),
        "binarized": len(binarized),
        "splits": {split: len(rows) for split, rows in splits.items()},
        "binarize_dropped": dict(sorted(dropped.items())),
        "contaminated": 0,
    }
    assert list(info["splits"]) == ["train_prefs", "test_prefs", "train_sft", "test_sft", "train_gen", "test_gen"]
    assert store.read_json("binarized/dropped.json") == dict(sorted(dropped.items()))
    # identical rows, values and order
    assert read_pairs(store).to_dict("records") == [p.model_dump() for p in pairs]
    assert list(read_pairs(store).columns) == list(Pair.model_fields)
    assert read_binarized_splits(store) == splits
    assert read_binarized(store) == splits["train_prefs"] + splits["test_prefs"]
    assert 0 < len(splits["test_prefs"]) < len(binarized)


def test_shard_readers_yield_one_table_per_scored_shard(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    store = _store(spec)
    shards = write_scored_shards(store, ROWS, 20)
    pairs_task.fn(spec)
    pairs, _, splits, _ = _whole(ROWS, spec)

    stored = list(iter_pairs(store))
    assert [shard for shard, _ in stored] == list(range(len(shards)))
    for (_, table), scored in zip(stored, shards, strict=True):
        assert table.schema == arrow_schema(Pair)
        ids = table.column("instruction_id").to_pylist()
        assert ids == sorted(ids) and set(ids) <= set(scored.column("instruction_id").to_pylist())
    assert sorted(p for _, t in stored for p in t.column("pair_id").to_pylist()) == sorted(p.pair_id for p in pairs)

    binarized = list(iter_binarized(store))
    assert [(split, shard) for split, shard, _ in binarized] == [
        (split, shard) for split in ("train_prefs", "test_prefs") for shard in range(len(shards))
    ]
    for split, _, table in binarized:
        assert table.num_rows == 0 or set(table.column("prompt_id").to_pylist()) <= {
            r["prompt_id"] for r in splits[split]
        }
    assert sum(t.num_rows for split, _, t in binarized if split == "test_prefs") == len(splits["test_prefs"])


def test_a_rerun_with_fewer_shards_leaves_no_stale_files(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    store = _store(spec)
    write_scored_shards(store, ROWS, 10)
    pairs_task.fn(spec)
    assert len(store.ls("pairs")) == 16
    # files of the older single-file layout go too
    store.write_table("binarized/train_prefs.parquet", pa.table({"x": [1]}))
    store.write_table("pairs/00001-part-abc.parquet", arrow_schema(Pair).empty_table())

    for name in store.ls("scored"):
        store.delete(f"scored/{name}")
    write_scored_shards(store, ROWS, 50)
    pairs_task.fn(spec)

    names = [f"shard-{n:05d}.parquet" for n in range(4)]
    assert store.ls("pairs") == names
    assert store.ls("binarized") == ["contaminated.json", "dropped.json", "test_prefs", "test_sft", "train_prefs"]
    assert store.ls("binarized/train_prefs") == store.ls("binarized/test_prefs") == names
    assert store.ls("binarized/test_sft") == names
    pairs, _, splits, _ = _whole(ROWS, spec)
    assert len(read_pairs(store)) == len(pairs) and read_binarized_splits(store) == splits


def test_no_scored_rows_give_empty_products(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    store = _store(spec)
    info = pairs_task.fn(spec)
    splits = ("train_prefs", "test_prefs", "train_sft", "test_sft", "train_gen", "test_gen")
    assert info == {
        "pairs": 0,
        "binarized": 0,
        "splits": dict.fromkeys(splits, 0),
        "binarize_dropped": {},
        "contaminated": 0,
    }
    assert read_pairs(store).empty and list(read_pairs(store).columns) == list(Pair.model_fields)
    assert read_binarized_splits(store) == {split: [] for split in splits}
    assert list(iter_pairs(store)) == [] and list(iter_binarized(store)) == []


def test_a_store_with_checkpoint_parts_reads_as_one_shard(tmp_path: Path) -> None:
    """Stores written before the sharded scored layout still build (the same products)."""
    spec = _spec(tmp_path)
    store = _store(spec)
    log = store.results("scored", ScoredCompletion, key="completion_id")
    log.append(ROWS[:300])
    log.append(ROWS[250:])  # overlapping rows: the last write wins, as the whole-table reader does
    pairs_task.fn(spec)
    pairs, _, splits, _ = _whole(ROWS, spec)
    assert read_pairs(store).to_dict("records") == [p.model_dump() for p in pairs]
    assert read_binarized_splits(store) == splits


def test_an_instruction_in_two_shards_is_refused(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    store = _store(spec)
    whole = pa.Table.from_pylist(ROWS[:40], schema=SCHEMA)
    store.write_table("scored/shard-00000.parquet", whole.slice(0, 25))
    store.write_table("scored/shard-00001.parquet", whole.slice(20))
    with pytest.raises(ValueError, match="each scored shard must hold whole instructions"):
        pairs_task.fn(spec)


def _stamps(store: Store) -> dict[str, int]:
    """relpath -> modification time (ns) of every pairs and binarized shard file."""
    folders = ["pairs", "binarized/train_prefs", "binarized/test_prefs"]
    return {f"{d}/{n}": os.stat(store.path(d, n)).st_mtime_ns for d in folders for n in store.ls(d)}


@pytest.fixture
def build_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the shards the pairs stage builds (calls of build_pairs)."""
    import ultrafeedback.tasks.pairs.task as module

    calls: list[int] = []
    real = module.build_pairs

    def counting(frame: pd.DataFrame, score: str = "fine_grained", order: str = "slot") -> list[Pair]:
        calls.append(len(frame))
        return real(frame, score, order)

    monkeypatch.setattr(module, "build_pairs", counting)
    return calls


def test_a_rerun_rebuilds_only_the_shards_whose_inputs_changed(tmp_path: Path, build_calls: list[int]) -> None:
    spec = _spec(tmp_path)
    store = _store(spec)
    tables = write_scored_shards(store, ROWS, 20)
    first = pairs_task.fn(spec)
    assert len(build_calls) == len(tables) == 8
    stamps = _stamps(store)

    build_calls.clear()
    assert pairs_task.fn(spec) == first
    assert build_calls == [] and _stamps(store) == stamps  # nothing rebuilt, nothing rewritten
    assert store.fingerprint("pairs/shard-00003.parquet")  # what the gates key their results on

    # one shard loses an instruction: that shard is rebuilt; the split may move rows elsewhere
    gone = tables[3].column("instruction_id")[0].as_py()
    rows = [r for r in ROWS if r["instruction_id"] != gone]
    store.write_table("scored/shard-00003.parquet", tables[3].filter(pc.field("instruction_id") != gone))
    again = pairs_task.fn(spec)
    assert len(build_calls) == 1
    pairs, binarized, splits, dropped = _whole(rows, spec)
    assert again["pairs"] == len(pairs) and again["binarize_dropped"] == dict(sorted(dropped.items()))
    assert read_pairs(store).to_dict("records") == [p.model_dump() for p in pairs]
    assert read_binarized_splits(store) == splits
    changed = {path for path, stamp in _stamps(store).items() if stamps.get(path) != stamp}
    assert "pairs/shard-00003.parquet" in changed and "pairs/shard-00004.parquet" not in changed


def test_new_rules_rebuild_and_a_new_test_size_only_resplits(tmp_path: Path, build_calls: list[int]) -> None:
    spec = _spec(tmp_path)
    store = _store(spec)
    write_scored_shards(store, ROWS, 20)
    pairs_task.fn(spec)
    build_calls.clear()

    resized = _spec(tmp_path, test_size=0.3)
    pairs_task.fn(resized)
    assert build_calls == []
    assert read_binarized_splits(store) == _whole(ROWS, resized)[2]

    reseeded = _spec(tmp_path, test_size=0.3, seed=5)
    pairs_task.fn(reseeded)
    assert len(build_calls) == 8
    assert read_binarized_splits(store) == _whole(ROWS, reseeded)[2]


def test_a_shard_left_half_written_is_rebuilt(tmp_path: Path, build_calls: list[int]) -> None:
    spec = _spec(tmp_path)
    store = _store(spec)
    write_scored_shards(store, ROWS, 20)
    pairs_task.fn(spec)
    build_calls.clear()
    store.delete("binarized/test_prefs/shard-00002.parquet")  # a crash after the pairs file
    pairs_task.fn(spec)
    assert len(build_calls) == 1
    assert read_binarized_splits(store) == _whole(ROWS, spec)[2]


def test_a_recorded_scored_fingerprint_is_trusted(tmp_path: Path, build_calls: list[int]) -> None:
    """Scored shards written by the score stage carry the fingerprint of their inputs; an unchanged
    fingerprint means an unchanged shard, so the pairs stage reads footers, not the rows."""
    spec = _spec(tmp_path)
    store = _store(spec)
    for shard, table in enumerate(shard_tables(ROWS, 40)):
        store.write_shard(f"scored/shard-{shard:05d}.parquet", table, f"scored-{shard}")
    pairs_task.fn(spec)
    build_calls.clear()
    pairs_task.fn(spec)
    assert build_calls == []
    table = store.read_table("scored/shard-00001.parquet")
    store.write_shard("scored/shard-00001.parquet", table, "scored-1-recomputed")
    pairs_task.fn(spec)
    assert len(build_calls) == 1


# --------------------------------------------------------------------------- the split from keys


@pytest.mark.parametrize("test_size", [0.1, 0.5, 3, 3.0, 0])
def test_split_test_ids_equals_split_binarized(test_size: float) -> None:
    rng = random.Random(5)
    prompts = [f"p{rng.randrange(40)}" for _ in range(90)]  # repeated prompts: tied ranks
    rows = [{"instruction_id": f"i{n:03d}", "prompt_id": p} for n, p in enumerate(prompts)]
    expected = {r["instruction_id"] for r in split_binarized(rows, test_size, seed=9)["test_prefs"]}
    keys = [(r["instruction_id"], r["prompt_id"]) for r in rows]
    rng.shuffle(keys)
    assert split_test_ids(keys, test_size, seed=9) == expected


# --------------------------------------------------------------------------- merge and cursor


def _streams(tables: list[pa.Table], by: list[str], opened: list[int] | None = None) -> list[ShardStream]:
    def opener(i: int, table: pa.Table):  # noqa: ANN202
        def open_():  # noqa: ANN202
            if opened is not None:
                opened.append(i)
            for start in range(0, table.num_rows, 3):  # small, ragged chunks
                yield table.slice(start, 3)

        return open_

    return [ShardStream(t.select(by), opener(i, t)) for i, t in enumerate(tables)]


@pytest.mark.parametrize("chunk_rows", [1, 4, 1000])
def test_merge_shards_gives_the_global_key_order(chunk_rows: int) -> None:
    rng = random.Random(chunk_rows)
    tables = []
    for shard in range(6):
        keys = sorted(rng.choice("abcdefgh") for _ in range(rng.randrange(0, 12)))
        tables.append(pa.table({"k": keys, "shard": [shard] * len(keys), "row": list(range(len(keys)))}))
    opened: list[int] = []
    merged = list(merge_shards(_streams(tables, ["k"], opened), ["k"], chunk_rows))
    assert all(t.num_rows <= chunk_rows for t in merged)
    got = pa.concat_tables(merged).to_pylist()
    expected = sorted((row for t in tables for row in t.to_pylist()), key=lambda r: (r["k"], r["shard"], r["row"]))
    assert got == expected
    assert sorted(opened) == [i for i, t in enumerate(tables) if t.num_rows]  # each opened once, if at all


def test_merge_shards_refuses_an_unsorted_shard() -> None:
    tables = [pa.table({"k": ["b", "a"]}), pa.table({"k": ["c"]})]
    with pytest.raises(ValueError, match="not sorted"):
        list(merge_shards(_streams(tables, ["k"]), ["k"], 10))


def test_merge_opens_a_shard_when_due_and_releases_it_after_its_last_row() -> None:
    """Shards in (source, id) order merged by id: only the shards being merged are open."""
    live: set[int] = set()
    peak = 0

    def opener(i: int, table: pa.Table):  # noqa: ANN202
        def open_():  # noqa: ANN202
            nonlocal peak
            live.add(i)
            peak = max(peak, len(live))
            try:
                for batch in table.to_batches(max_chunksize=2):
                    yield pa.Table.from_batches([batch])
            finally:
                live.discard(i)

        return open_

    # two sources of 5 shards each; ids interleave across the sources
    tables = []
    for source in ("a", "b"):
        ids = [f"{n:03d}" for n in range(0 if source == "a" else 1, 100, 2)]
        for s in range(5):
            part = ids[s * 10 : (s + 1) * 10]
            tables.append(pa.table({"id": part, "source": [source] * len(part)}))
    streams = [ShardStream(t.select(["id"]), opener(i, t)) for i, t in enumerate(tables)]
    merged = pa.concat_tables(merge_shards(streams, ["id"], 7))
    assert merged.column("id").to_pylist() == [f"{n:03d}" for n in range(100)]
    assert peak == 2 and not live


def test_table_cursor_takes_slices_across_chunks() -> None:
    chunks = iter(
        [pa.table({"x": [0, 1]}), pa.table({"x": []}).cast(pa.schema([("x", pa.int64())])), pa.table({"x": [2, 3, 4]})]
    )
    cursor = TableCursor(chunks)
    assert cursor.take(3).column("x").to_pylist() == [0, 1, 2]
    assert not cursor.exhausted()
    assert cursor.take(2).column("x").to_pylist() == [3, 4]
    assert cursor.exhausted()
    with pytest.raises(ValueError, match="expected 1 more rows"):
        cursor.take(1)


# --------------------------------------------------------------------------- multi-chunk inputs


def _chunked_frame(rows: list[dict[str, Any]], pieces: int = 4) -> pd.DataFrame:
    """The rows as pandas reads a table made of several chunks (Arrow-backed string columns)."""
    table = pa.concat_tables(pa.Table.from_pylist(rows[i::pieces], schema=SCHEMA) for i in range(pieces))
    assert table.column("instruction_id").num_chunks == pieces
    return table.to_pandas()


def test_whole_table_functions_accept_multi_chunk_tables() -> None:
    rows = ROWS[:200]
    plain, chunked = pd.DataFrame(rows), _chunked_frame(rows)
    assert build_pairs(chunked) == build_pairs(plain)
    assert build_pairs(chunked, "overall") == build_pairs(plain, "overall")
    assert binarize(chunked, "argilla", 4, ["flan"]) == binarize(plain, "argilla", 4, ["flan"])
    assert binarize(chunked) == binarize(plain)
    columns = ["completion_id", "instruction_id", "position", "response"]
    assert latest_rows(chunked, columns).to_dict("records") == latest_rows(plain, columns).to_dict("records")
    assert pairs_frame(build_pairs(chunked)).equals(pairs_frame(build_pairs(plain)))


def test_stage_reads_multi_chunk_shards(tmp_path: Path) -> None:
    """Shard files in many row groups read back as many chunks; the products are unchanged."""
    spec = _spec(tmp_path)
    store = _store(spec)
    tables = shard_tables(ROWS, 40)
    for shard, table in enumerate(tables):
        chunked = pa.concat_tables([table.slice(0, 5), table.slice(5, 30), table.slice(35)])
        assert chunked.column("response").num_chunks == 3
        store.write_table(f"scored/shard-{shard:05d}.parquet", chunked)
    pairs_task.fn(spec)
    pairs, _, splits, _ = _whole(ROWS, spec)
    assert read_pairs(store).to_dict("records") == [p.model_dump() for p in pairs]
    assert read_binarized_splits(store) == splits


def test_shards_build_on_a_dask_cluster_of_separate_processes_with_the_same_products(
    tmp_path: Path, dask_address: str
) -> None:
    from ultrafeedback.infra.dask_cluster import dask_client

    local = _spec(tmp_path / "local", test_size=0.25)
    write_scored_shards(_store(local), ROWS, 23)
    expected = pairs_task.fn(local)
    remote = _spec(tmp_path / "remote", test_size=0.25)
    remote = remote.model_copy(update={"execution": remote.execution.model_copy(update={"dask_address": dask_address})})
    write_scored_shards(_store(remote), ROWS, 23)
    with dask_client(dask_address) as client:
        before = client.run(lambda dask_worker: dask_worker.state.transition_counter)
        info = pairs_task.fn(remote)
        after = client.run(lambda dask_worker: dask_worker.state.transition_counter)
    assert all(after[w] > before[w] for w in after)  # built by the worker process
    assert info == expected
    assert read_pairs(_store(remote)).equals(read_pairs(_store(local)))
    assert read_binarized_splits(_store(remote)) == read_binarized_splits(_store(local))
    assert pairs_task.fn(remote) == expected  # a rerun finds every shard built
