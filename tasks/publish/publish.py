"""Publish a numbered, immutable Hugging Face dataset release (DESIGN §1 step 8, §4).

Layout of one release, a Hugging Face dataset repository as a folder::

    {root}/v{N}/README.md                                   dataset card, YAML ``configs``
    {root}/v{N}/completions/train-00000-of-00001.parquet    openbmb/UltraFeedback schema (+ judge fields, id)
    {root}/v{N}/pairs/train-00000-of-00001.parquet          every non-tied pair (Pair records)
    {root}/v{N}/binarized/{split}-00000-of-00001.parquet    the six HuggingFaceH4 splits: train_prefs,
                                                            test_prefs, train_sft, test_sft, train_gen, test_gen
    {root}/v{N}/plots/*.png                                 ratings, overall score, leaderboard, sources
    {root}/v{N}/manifest.json                               written last: a release exists iff it has one

``{root}`` is ``{store}/{dataset}/releases`` by default, or any local folder / fsspec URL given as
``target_uri`` (each root numbers its own releases). ``datasets.load_dataset("{root}/v{N}",
name="binarized")`` loads a config straight from the folder.

Atomicity: on a local file system the release is written into ``{root}/.staging-v{N}-{uuid}/`` and
renamed to ``v{N}`` in one step, manifest included; on an object store (no rename) the files go to
``v{N}/`` with ``manifest.json`` last, and readers ignore a folder without a manifest. Any error
removes what this call wrote, so a failed publish leaves neither a half release nor a staging folder.

Streaming: a release built from the store (``ShardedTables``) never holds a whole config. Row counts
come from key columns and Parquet footers, so each file's name (``{split}-{i:05d}-of-{n:05d}``) is
known up front; completions are built one scored shard at a time, pairs and binarized rows are
merged from their shard files, and each file is written with ``pq.ParquetWriter`` as tables arrive.
The files are byte-identical to serialising the whole table (``ReleaseTables``, the in-memory path).

Idempotence: the content hash covers the bytes of every data file and the card inputs (not the
version, not the time). When the latest complete release has the same hash, publishing returns it
instead of creating v{N+1}: rerunning a finished build never duplicates a release. A stored
release also records its input fingerprint (the sha256 of the input shard files, the card inputs,
the shard size and the writer version); a rerun whose fingerprint matches the latest release's
returns it before serialising anything.

Changelog: a new release's card and manifest (``changes``) say what changed from its parent (the
latest complete release of the same root): rows added, removed and changed per config and split,
with the reasons (``tasks.publish.changelog``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import posixpath
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ultrafeedback.infra.store import Store
from ultrafeedback.records import Pair
from ultrafeedback.tasks.pairs.pairs import H4_SPLITS
from ultrafeedback.tasks.pairs.shards import TableCursor, file_sha256
from ultrafeedback.tasks.publish.card import render_card, scrub
from ultrafeedback.tasks.publish.changelog import Digests, diff_releases
from ultrafeedback.tasks.publish.features import binarized_features, completions_features, pairs_features
from ultrafeedback.tasks.publish.plots import render_plots
from ultrafeedback.tasks.publish.tables import (
    as_frame,
    binarized_table,
    completions_table,
    conform,
    gen_table,
    pairs_table,
)

if TYPE_CHECKING:
    from ultrafeedback.tasks.aggregate.aggregate import AggregateResult

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CARD = "README.md"
FORMAT = "ultrafeedback-release/1"
ROW_GROUP_ROWS = 2_000
"""Parquet row groups small enough for the Hub viewer's random access, large enough to compress."""
WRITER = 3
"""The release writer's version, part of a stored release's input fingerprint: bump it when a code
change alters the files written for the same inputs, so that a rerun publishes the new output."""

CONFIG_SPLITS: dict[str, tuple[str, ...]] = {
    "completions": ("train",),
    "pairs": ("train",),
    "binarized": H4_SPLITS,
}


# --------------------------------------------------------------------------- inputs and results


@dataclass
class ReleaseTables:
    """What a release is built from, held in memory (small data, tests).

    Attributes:
        scored: the ScoredCompletion rows (the ``completions`` config is built from them).
        pairs: ``build_pairs`` output (Pair records, or a DataFrame or Arrow table of them).
        binarized: split name -> ``binarize`` rows (or a table): the six H4 splits as
            ``split_binarized`` returns them, or some of them: ``train_sft`` defaults to
            ``train_prefs``, ``test_sft`` to no rows, ``*_gen`` to ``*_sft`` with the final assistant
            message cut.
        aggregate: the ``aggregate`` result (or its ``to_dict()``), shown on the card.
        completion_order: ``slot`` or ``model`` (the spec's ``completion_order``).
    """

    scored: pd.DataFrame | pa.Table
    pairs: Sequence[Pair] | pd.DataFrame | pa.Table
    binarized: Mapping[str, Sequence[Mapping[str, Any]] | pa.Table]
    aggregate: AggregateResult | Mapping[str, Any] | None = None
    completion_order: str = "slot"


@dataclass
class ShardedTables:
    """Build the release from the stage shard files in the store given to ``publish_release``
    (``scored/``, ``pairs/``, ``binarized/{split}/``; layout in ``tasks.pairs.shards``).

    Nothing is held whole: row counts and the record order come from key columns and Parquet
    footers, and each release file is written as shard tables arrive. The input files' sha256 is the
    release's input fingerprint: a rerun on unchanged inputs returns the latest release at once.
    """

    aggregate: AggregateResult | Mapping[str, Any] | None = None
    completion_order: str = "slot"
    _file_hashes: dict[str, dict[str, str]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def file_hashes(self, store: Store) -> dict[str, str]:
        """relpath -> sha256 of every input file (computed once per store)."""
        key = store.path()
        if key not in self._file_hashes:
            self._file_hashes[key] = {relpath: file_sha256(store, relpath) for relpath in _input_files(store)}
        return self._file_hashes[key]


@dataclass(frozen=True)
class PublishedRelease:
    """A complete release: where it is, its number and its manifest.

    ``created`` is False when an identical release already existed and was returned instead.
    """

    uri: str
    version: int
    manifest: dict[str, Any] = field(repr=False)
    created: bool = True


@dataclass(frozen=True)
class _Split:
    """One split of a config: its row count (known before writing) and its tables, in order.
    ``tables`` may be called more than once (an object-store publish serialises twice)."""

    config: str
    split: str
    rows: int
    schema: pa.Schema
    tables: Callable[[], Iterator[pa.Table]]


def _memory_splits(tables: ReleaseTables) -> list[_Split]:
    unknown = set(tables.binarized) - set(CONFIG_SPLITS["binarized"])
    if unknown:
        raise ValueError(f"binarized splits must be {CONFIG_SPLITS['binarized']}, got extra {sorted(unknown)}")
    given = {split: binarized_table(rows) for split, rows in tables.binarized.items()}
    for split in ("train_prefs", "test_prefs", "test_sft"):
        given.setdefault(split, binarized_table([]))
    given.setdefault("train_sft", given["train_prefs"])
    given.setdefault("train_gen", gen_table(given["train_sft"]))
    given.setdefault("test_gen", gen_table(given["test_sft"]))
    whole = {
        ("completions", "train"): completions_table(tables.scored, tables.completion_order),
        ("pairs", "train"): pairs_table(tables.pairs),
        **{("binarized", split): given[split] for split in CONFIG_SPLITS["binarized"]},
    }
    return [
        _Split(config, split, table.num_rows, table.schema, lambda table=table: iter([table]))
        for (config, split), table in whole.items()
    ]


def _input_files(store: Store) -> list[str]:
    """The stage files a stored release is built from (what its fingerprint hashes)."""
    from ultrafeedback.tasks.pairs.shards import BINARIZED, PAIRS, STORED_SPLITS, scored_shards, shard_files

    files = [relpath for shard in scored_shards(store) for relpath in shard.files]
    for folder in (PAIRS, *(f"{BINARIZED}/{split}" for split in STORED_SPLITS)):
        files += [relpath for _, relpath in shard_files(store, folder)]
    return files


def _stored_splits(store: Store, order: str = "slot") -> tuple[list[_Split], Counter[tuple[str, str]]]:
    """The splits of a release built from the store's shard files, and the judge counts.

    Completions: one record per instruction, by (source, instruction id), built from one scored
    shard at a time (completions in ``order``). Pairs and binarized rows: merged from their shard
    files into instruction-id order, the order of the whole-table functions; ``train_sft`` and
    ``train_gen`` stream the ``train_prefs`` files, ``test_gen`` the ``test_sft`` ones, the ``*_gen``
    splits with the final assistant message cut. Only key columns are read up front.
    """
    from ultrafeedback.tasks.pairs.shards import (
        BINARIZED,
        PAIRS,
        ShardStream,
        check_whole_instructions,
        merge_shards,
        scored_shards,
        shard_files,
        stored_streams,
    )

    record_keys = ["source", "instruction_id"]
    judges: Counter[tuple[str, str]] = Counter()
    streams: list[ShardStream] = []
    instructions: list[tuple[int, pa.Array]] = []
    for shard in scored_shards(store):
        keys = shard.read(store, ["completion_id", *record_keys, "judge_model", "judge_kind"])
        judges.update(_judge_counts(keys.to_pandas()))
        records = keys.group_by(record_keys).aggregate([]).sort_by([(c, "ascending") for c in record_keys])
        instructions.append((shard.shard, pc.unique(keys.column("instruction_id"))))
        streams.append(ShardStream(records, lambda shard=shard: iter([completions_table(shard.read(store), order)])))
    check_whole_instructions(instructions)

    def merged(
        streams: list[ShardStream], by: list[str], schema: pa.Schema, gen: bool = False
    ) -> Callable[[], Iterator[pa.Table]]:
        if gen:
            return lambda: (gen_table(conform(t, schema)) for t in merge_shards(streams, by, ROW_GROUP_ROWS))
        return lambda: (conform(t, schema) for t in merge_shards(streams, by, ROW_GROUP_ROWS))

    def split(
        config: str, name: str, streams: list[ShardStream], by: list[str], schema: pa.Schema, gen: bool = False
    ) -> _Split:
        return _Split(config, name, sum(s.keys.num_rows for s in streams), schema, merged(streams, by, schema, gen))

    def stored(folder: str) -> list[ShardStream]:
        return stored_streams(store, [relpath for _, relpath in shard_files(store, folder)], ["instruction_id"])

    binarized = binarized_features().arrow_schema
    splits = [
        split("completions", "train", streams, record_keys, completions_features().arrow_schema),
        split("pairs", "train", stored(PAIRS), ["instruction_id"], pairs_features().arrow_schema),
        *(
            split("binarized", name, stored(f"{BINARIZED}/{source}"), ["instruction_id"], binarized, gen)
            for name, (source, gen) in _BINARIZED_SOURCES.items()
        ),
    ]
    return splits, judges


_BINARIZED_SOURCES: dict[str, tuple[str, bool]] = {
    "train_prefs": ("train_prefs", False),
    "test_prefs": ("test_prefs", False),
    "train_sft": ("train_prefs", False),
    "test_sft": ("test_sft", False),
    "train_gen": ("train_prefs", True),
    "test_gen": ("test_sft", True),
}
"""Each published binarized split: the stored split folder it streams, and whether its messages are
cut before the final assistant message (the ``*_gen`` splits)."""


# --------------------------------------------------------------------------- the release root


@dataclass
class _Root:
    fs: Any
    path: str
    protocol: str
    local: bool

    def uri(self, *parts: str) -> str:
        path = posixpath.join(self.path, *parts)
        return path if self.local else f"{self.protocol}://{path}"

    def join(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)


def _root(store: Store, target_uri: str | None, storage_options: Mapping[str, Any] | None) -> _Root:
    import fsspec

    if target_uri is None:
        fs, path = store.fs, store.path("releases")
    else:
        uri = target_uri if "://" in target_uri else os.path.abspath(target_uri)
        options = dict(store.storage_options if storage_options is None else storage_options)
        fs, path = fsspec.core.url_to_fs(uri, **options)
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    local = protocol in ("file", "local")
    return _Root(fs=fs, path=path.rstrip("/"), protocol=protocol, local=local)


def remove_staging(
    store: Store, target_uri: str | None = None, storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """Remove the ``.staging-v*`` folders a killed publish left in a local release root (the
    store's, or ``target_uri``); returns their paths. Call it holding the dataset's lease: a
    staging folder of a publish still running would be removed too."""
    root = _root(store, target_uri, storage_options)
    if not root.local or not root.fs.exists(root.path):
        return []
    leftovers = [
        p for p in root.fs.ls(root.path, detail=False) if p.rstrip("/").rsplit("/", 1)[-1].startswith(".staging-v")
    ]
    for path in leftovers:
        log.warning("publish: removing %s, left by a publish that did not finish", path)
        _remove(root.fs, path)
    return leftovers


def _read_manifest(root: _Root, name: str) -> dict[str, Any] | None:
    path = root.join(name, MANIFEST)
    try:
        with root.fs.open(path, "rb") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        return None


def _versions(root: _Root) -> dict[int, str]:
    """Folder names ``v{N}`` under the root, by N (complete or not)."""
    root.fs.invalidate_cache(root.path)  # object-store listings are cached; another writer may have run
    if not root.fs.exists(root.path):
        return {}
    found: dict[int, str] = {}
    for entry in root.fs.ls(root.path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("v") and name[1:].isdigit():
            found[int(name[1:])] = name
    return found


def _complete(root: _Root) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for version, name in sorted(_versions(root).items()):
        manifest = _read_manifest(root, name)
        if manifest is not None:
            out.append((version, manifest))
    return out


def list_releases(
    store: Store, target_uri: str | None = None, storage_options: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Complete releases, oldest first: version, uri, created_at, counts, content_hash, parent.

    What ``ultrafeedback status`` prints. Folders without a manifest (a publish in flight, or one
    that crashed on an object store) are not releases and are not listed.
    """
    root = _root(store, target_uri, storage_options)
    return [
        {
            "version": version,
            "uri": root.uri(f"v{version}"),
            "created_at": manifest.get("created_at"),
            "counts": manifest.get("counts", {}),
            "content_hash": manifest.get("content_hash"),
            "parent": manifest.get("parent"),
            "spec_hash": manifest.get("spec_hash"),
        }
        for version, manifest in _complete(root)
    ]


# --------------------------------------------------------------------------- writing


def _put(fs: Any, path: str, data: bytes, local: bool) -> None:
    """Write one file. Local files are fsynced, so the rename publishes durable content."""
    if local:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    else:
        fs.pipe_file(path, data)


def _remove(fs: Any, path: str) -> None:
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except Exception:  # noqa: BLE001 - cleanup must not hide the error that triggered it
        log.exception("publish: could not remove %s", path)


def _aggregate_dict(aggregate: Any) -> dict[str, Any] | None:
    if aggregate is None:
        return None
    if hasattr(aggregate, "to_dict"):
        return aggregate.to_dict()
    return dict(aggregate)


def _judge_counts(scored: pd.DataFrame) -> Counter[tuple[str, str]]:
    """Completions per (judge_model, judge_kind), one per completion id (the last row)."""
    if scored.empty:
        return Counter()
    frame = scored.drop_duplicates("completion_id", keep="last")
    return Counter(zip(frame["judge_model"].astype(str), frame["judge_kind"].astype(str), strict=True))


def _judges(counts: Mapping[tuple[str, str], int]) -> list[dict[str, Any]]:
    ordered = sorted(counts.items(), key=lambda item: (item[0][1], item[0][0]))
    return [{"judge_model": m, "judge_kind": k, "completions": int(n)} for (m, k), n in ordered]


def _release_files(config: str, split: str, rows: int, max_rows: int) -> list[tuple[str, int]]:
    """``(relpath, rows)`` of a split's files: equal slices of at most ``max_rows`` rows, numbered
    ``{split}-{i:05d}-of-{n:05d}``. An empty split has no file (``datasets`` cannot read a Parquet
    file without rows)."""
    if rows == 0:
        return []
    n = max(1, math.ceil(rows / max_rows))
    size = math.ceil(rows / n)
    return [(f"{config}/{split}-{i:05d}-of-{n:05d}.parquet", max(0, min(size, rows - i * size))) for i in range(n)]


class _HashingSink:
    """A write-only file object for ``pq.ParquetWriter``: counts and hashes the bytes on their way
    to ``handle`` (None: hash only, nothing is stored)."""

    def __init__(self, handle: Any = None):
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.size += view.nbytes
        if self.handle is not None:
            self.handle.write(view)
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        if self.handle is not None:
            self.handle.flush()

    def close(self) -> None:
        self.closed = True  # the caller closes ``handle`` (and fsyncs it first)

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def info(self) -> dict[str, Any]:
        return {"bytes": self.size, "sha256": self.digest.hexdigest()}


class _ArrowSize:
    """The Arrow size (``nbytes``) a split would have as one contiguous table, accumulated over its
    row groups, so the card's ``num_bytes`` does not depend on the chunks the rows came in. Counted
    as pyarrow counts a contiguous array: 4 offset bytes per string or list value, the referenced
    data, fixed-width values, and a validity bitmap only where there are nulls."""

    def __init__(self) -> None:
        self._nodes: dict[tuple[str, ...], list[Any]] = {}  # path -> [type, values, nulls, data bytes]

    def add(self, table: pa.Table) -> None:
        for name in table.column_names:
            for chunk in table.column(name).chunks:
                self._add(chunk, (name,))

    def _add(self, array: pa.Array, path: tuple[str, ...]) -> None:
        node = self._nodes.setdefault(path, [array.type, 0, 0, 0])
        node[1] += len(array)
        node[2] += array.null_count
        kind = array.type
        if pa.types.is_string(kind) or pa.types.is_binary(kind):
            node[3] += pc.sum(pc.binary_length(array)).as_py() or 0
        elif pa.types.is_list(kind):
            self._add(array.flatten(), (*path, "[]"))
        elif pa.types.is_struct(kind):
            for i, child in enumerate(kind):
                self._add(array.field(i), (*path, child.name))

    def total(self) -> int:
        total = 0
        for kind, n, nulls, data in self._nodes.values():
            if pa.types.is_null(kind):
                continue
            total += math.ceil(n / 8) if nulls else 0
            if pa.types.is_string(kind) or pa.types.is_binary(kind) or pa.types.is_list(kind):
                total += 4 * n + data
            elif pa.types.is_boolean(kind):
                total += math.ceil(n / 8)
            elif not pa.types.is_struct(kind):
                total += n * kind.bit_width // 8
        return total


def _serialise(cursor: TableCursor, rows: int, schema: pa.Schema, sink: _HashingSink, size: _ArrowSize) -> None:
    """Write the cursor's next ``rows`` rows as one Parquet file, in row groups of exactly
    ``ROW_GROUP_ROWS`` rows, each combined into one chunk first: the bytes are then those of
    ``pq.write_table(whole_slice, row_group_size=ROW_GROUP_ROWS)``, whatever chunks the rows came in."""
    writer = pq.ParquetWriter(sink, schema, compression="zstd")
    try:
        if rows == 0:
            writer.write_table(schema.empty_table())
        done = 0
        while done < rows:
            group = cursor.take(min(ROW_GROUP_ROWS, rows - done)).combine_chunks()
            writer.write_table(group, row_group_size=ROW_GROUP_ROWS)
            size.add(group)
            done += group.num_rows
    finally:
        writer.close()


def _write_file(root: _Root, path: str | None, cursor: TableCursor, rows: int, split: _Split, size: _ArrowSize) -> dict:
    """One release file at ``path`` (None: only hashed); returns its size and sha256."""
    if path is None:
        sink = _HashingSink()
        _serialise(cursor, rows, split.schema, sink, size)
    elif root.local:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            sink = _HashingSink(handle)
            _serialise(cursor, rows, split.schema, sink, size)
            handle.flush()
            os.fsync(handle.fileno())
    else:
        with root.fs.open(path, "wb") as handle:  # one object, put when the handle closes
            sink = _HashingSink(handle)
            _serialise(cursor, rows, split.schema, sink, size)
    return sink.info()


class _Observed:
    """An ``_ArrowSize`` that also hands every row group written to ``observe`` (the changelog's
    digests are computed as the release streams through the writer)."""

    def __init__(self, size: _ArrowSize, observe: Callable[[pa.Table], None]):
        self._size, self._observe = size, observe

    def add(self, table: pa.Table) -> None:
        self._size.add(table)
        self._observe(table)

    def total(self) -> int:
        return self._size.total()


def _write_files(
    splits: Sequence[_Split],
    root: _Root,
    dest: str | None,
    max_rows: int,
    observe: Callable[[str, str], Callable[[pa.Table], None]] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, int]]]:
    """Serialise every split's files as its tables arrive; write them under ``dest`` unless None.

    Returns (relpath -> bytes and sha256, config -> split -> Arrow bytes). With ``dest=None`` nothing
    is written: on an object store the hashes are computed first, so a rerun of a finished build
    uploads nothing at all. ``observe(config, split)`` gives a function that sees every row group.
    """
    info: dict[str, dict[str, Any]] = {}
    sizes: dict[str, dict[str, int]] = {}
    for split in splits:
        size: Any = _ArrowSize()
        if observe is not None:
            size = _Observed(size, observe(split.config, split.split))
        cursor = TableCursor(split.tables())
        try:
            for relpath, rows in _release_files(split.config, split.split, split.rows, max_rows):
                path = None if dest is None else posixpath.join(dest, relpath)
                info[relpath] = _write_file(root, path, cursor, rows, split, size)
            if not cursor.exhausted():
                raise ValueError(f"publish: {split.config}/{split.split} has more rows than its {split.rows} counted")
        finally:
            cursor.close()
        sizes.setdefault(split.config, {})[split.split] = size.total()
    return info, sizes


def _configs(
    counts: Mapping[str, Mapping[str, int]], sizes: Mapping[str, Mapping[str, int]], features: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The card's ``configs`` (data_files per split, relative to the release folder) and
    ``dataset_info`` (features and split sizes, as the Hub writes them). Empty splits are left out:
    ``datasets`` cannot load a Parquet file without rows, so they have no file."""
    configs, infos = [], []
    for config, all_splits in CONFIG_SPLITS.items():
        splits = [s for s in all_splits if counts[config][s] > 0]
        if not splits:
            continue  # a config without rows has no files, so it cannot be declared
        entry: dict[str, Any] = {"config_name": config}
        if config == "completions":
            entry["default"] = True
        entry["data_files"] = [{"split": s, "path": f"{config}/{s}-*.parquet"} for s in splits]
        configs.append(entry)
        infos.append(
            {
                "config_name": config,
                "features": features[config]._to_yaml_list(),
                "splits": [
                    {"name": s, "num_bytes": int(sizes[config][s]), "num_examples": int(counts[config][s])}
                    for s in splits
                ],
                "dataset_size": int(sum(sizes[config].values())),
            }
        )
    return configs, infos


def publish_release(
    store: Store,
    spec_name: str,
    tables: ReleaseTables | ShardedTables,
    manifest_extra: Mapping[str, Any] | None = None,
    card_info: Mapping[str, Any] | None = None,
    target_uri: str | None = None,
    *,
    max_shard_rows: int = 50_000,
    storage_options: Mapping[str, Any] | None = None,
    explain_removed: Callable[[Collection[str]], Mapping[str, str]] | None = None,
    change_notes: Sequence[str] = (),
) -> PublishedRelease:
    """Write the next numbered release (or return the latest one if its content is identical).

    Args:
        store: the dataset's store; releases go to ``{store}/{dataset}/releases/`` by default.
        spec_name: the spec's name (the card's title unless ``card_info["pretty_name"]``).
        tables: the data: ``ShardedTables`` (the store's stage shard files, streamed; what the
            build uses) or ``ReleaseTables`` (whole tables in memory).
        manifest_extra: run metadata added to the manifest and NOT hashed (flow run id, timings,
            ``spec_hash``/``gates`` if not in card_info). Secret-named keys are redacted.
        card_info: the card inputs, hashed with the data, so they must be deterministic for the
            same data: ``spec_hash``, ``gates`` (list of rows or mapping), ``judge`` (the judge spec),
            ``pairs_score``, ``binarize_rule``, ``license``, ``pretty_name``, ``description``,
            ``tags``, ``spec`` (a spec dump; secret-named keys are redacted).
        target_uri: another release root (a local folder or an fsspec URL such as ``s3://bucket/x``).
        max_shard_rows: rows per Parquet shard (``spec.publish.max_shard_rows``).
        storage_options: fsspec options for ``target_uri`` (default: the store's).
        explain_removed: instruction ids the parent release had and this one lacks -> why (for the
            changelog; default ``not_in_build``).
        change_notes: sentences for the changelog (e.g. a quota cut that removed released rows).
    """
    if max_shard_rows < 1:
        raise ValueError(f"max_shard_rows must be >= 1, got {max_shard_rows}")
    root = _root(store, target_uri, storage_options)
    card_inputs = scrub(dict(card_info or {}))
    extra = scrub(dict(manifest_extra or {}))
    aggregate = _aggregate_dict(tables.aggregate)
    hashed_inputs: dict[str, Any] = {"spec_name": spec_name, "card_info": card_inputs, "aggregate": aggregate}

    complete = _complete(root)
    latest_version, latest = complete[-1] if complete else (0, None)
    fingerprint = None
    if isinstance(tables, ShardedTables):
        fingerprint = _fingerprint(tables.file_hashes(store), hashed_inputs, max_shard_rows)
        if latest is not None and latest.get("input_fingerprint") == fingerprint:
            log.info("publish: inputs unchanged since v%d, no new release", latest_version)
            return PublishedRelease(root.uri(f"v{latest_version}"), latest_version, latest, created=False)
        splits, judge_counts = _stored_splits(store, tables.completion_order)
    else:
        splits, judge_counts = _memory_splits(tables), _judge_counts(as_frame(tables.scored))
    judges = _judges(judge_counts)
    inputs_hash = hashlib.sha256(
        json.dumps({**hashed_inputs, "judges": judges}, sort_keys=True, default=str, ensure_ascii=False).encode()
    ).hexdigest()
    counts: dict[str, dict[str, int]] = {}
    for split in splits:
        counts.setdefault(split.config, {})[split.split] = split.rows

    version = latest_version + 1
    existing = _versions(root)
    final = root.join(f"v{version}")
    dest = root.join(f".staging-v{version}-{uuid.uuid4().hex[:12]}") if root.local else final

    digests = Digests()
    try:
        file_info, sizes = _write_files(splits, root, dest if root.local else None, max_shard_rows, digests.observer)
        content_hash = _content_hash(file_info, inputs_hash)
        if latest is not None and latest.get("content_hash") == content_hash:
            if root.local:
                _remove(root.fs, dest)
            log.info("publish: content identical to v%d, no new release", latest_version)
            return PublishedRelease(
                uri=root.uri(f"v{latest_version}"), version=latest_version, manifest=latest, created=False
            )
        if not root.local:
            if version in existing:
                # An object-store publish that died before its manifest: not a release; clear it.
                _remove(root.fs, final)
            uploaded, _ = _write_files(splits, root, dest, max_shard_rows)
            if uploaded != file_info:
                raise RuntimeError("publish: Parquet output is not deterministic; refusing to publish")

        features = {
            "completions": completions_features(),
            "pairs": pairs_features(),
            "binarized": binarized_features(),
        }
        configs, infos = _configs(counts, sizes, features)
        changes = _changes(root, latest_version, latest, digests, explain_removed, change_notes)
        plots = render_plots(aggregate)  # beside the card, which shows them; derived from hashed inputs
        for plot in plots:
            _put(root.fs, posixpath.join(dest, plot.path), plot.png, root.local)
            digest = hashlib.sha256(plot.png).hexdigest()
            file_info[plot.path] = {"bytes": len(plot.png), "sha256": digest, "title": plot.title}
        card = render_card(
            spec_name=spec_name,
            version=version,
            content_hash=content_hash,
            configs=configs,
            dataset_info=infos,
            counts=counts,
            judges=judges,
            aggregate=aggregate,
            card_info=card_inputs,
            # never a local absolute path (the card is published): the Hub repo, else a placeholder
            uri_hint=card_inputs.get("hub_repo") or ("RELEASE_FOLDER" if root.local else root.uri(f"v{version}")),
            plots=[(plot.path, plot.title) for plot in plots],
            changes=changes,
        ).encode("utf-8")
        _put(root.fs, posixpath.join(dest, CARD), card, root.local)
        file_info[CARD] = {"bytes": len(card), "sha256": hashlib.sha256(card).hexdigest()}

        manifest = {
            **extra,
            "format": FORMAT,
            "dataset": store.dataset,
            "spec_name": spec_name,
            "spec_hash": card_inputs.get("spec_hash", extra.get("spec_hash")),
            "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "parent": latest_version or None,
            "parent_content_hash": latest.get("content_hash") if latest else None,
            "content_hash": content_hash,
            "input_fingerprint": fingerprint,
            "changes": changes,
            "counts": counts,
            "statistics": (aggregate or {}).get("stats"),
            "judges": judges,
            "gates": card_inputs.get("gates", extra.get("gates")),
            "configs": configs,
            "files": dict(sorted(file_info.items())),
        }
        manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
        _put(root.fs, posixpath.join(dest, MANIFEST), manifest_bytes, root.local)
        if root.local:
            _commit_local(root, dest, final, version)
    except BaseException:
        _remove(root.fs, dest)
        raise
    log.info("publish: release v%d at %s", version, root.uri(f"v{version}"))
    return PublishedRelease(uri=root.uri(f"v{version}"), version=version, manifest=manifest, created=True)


def _changes(
    root: _Root,
    parent_version: int,
    parent: Mapping[str, Any] | None,
    digests: Digests,
    explain_removed: Callable[[Collection[str]], Mapping[str, str]] | None,
    notes: Sequence[str],
) -> dict[str, Any]:
    """The changelog from the parent (the root's latest complete release) to the release whose
    ``digests`` were collected: per config and split, rows added, removed, changed and unchanged
    with their reasons (``tasks.publish.changelog``). The first release has no parent: every row is
    new."""
    from ultrafeedback.tasks.publish.history import read_release_columns, release_files

    if parent is None:
        return {"parent": None, "configs": None, "notes": list(notes)}
    before = Digests()
    for config, split in digests.splits():
        files = release_files(dict(parent), config, split)
        if not files and split not in parent.get("counts", {}).get(config, {}):
            continue  # the parent had no such split (an older layout)
        before.add(config, split, _empty_like(config))
        for table in read_release_columns(root, parent_version, files, None, ROW_GROUP_ROWS):
            before.add(config, split, table)
    return {
        "parent": parent_version,
        "parent_content_hash": parent.get("content_hash"),
        "configs": diff_releases(before, digests, explain_removed),
        "notes": list(notes),
    }


def _empty_like(config: str) -> pa.Table:
    """No rows of a config's schema: registers a split the parent has, also when it is empty."""
    schema = {
        "completions": completions_features,
        "pairs": pairs_features,
        "binarized": binarized_features,
    }[config]().arrow_schema
    return schema.empty_table()


def _content_hash(file_info: Mapping[str, Mapping[str, Any]], inputs_hash: str) -> str:
    files = {path: info["sha256"] for path, info in sorted(file_info.items())}
    blob = json.dumps({"files": files, "inputs": inputs_hash}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _fingerprint(file_hashes: Mapping[str, str], hashed_inputs: Mapping[str, Any], max_shard_rows: int) -> str:
    """What a stored release is a function of: the input files' bytes, the card inputs, the shard
    size and the release writer's version (a writer change that alters the output changes it)."""
    blob = {
        "writer": WRITER,
        "files": dict(sorted(file_hashes.items())),
        "inputs": hashed_inputs,
        "max_shard_rows": max_shard_rows,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str, ensure_ascii=False).encode()).hexdigest()


def _commit_local(root: _Root, staging: str, final: str, version: int) -> None:
    """Rename the staging folder to ``v{N}`` in one step.

    A ``v{N}`` folder without a manifest was not made by a publisher (local releases appear whole),
    so it is moved aside; a complete one means another publisher won the race, and this one fails
    rather than overwrite an immutable release.
    """
    if os.path.exists(final):
        if os.path.exists(os.path.join(final, MANIFEST)):
            raise FileExistsError(f"release v{version} was created concurrently at {final}; publish again")
        os.replace(final, f"{final}.incomplete-{uuid.uuid4().hex[:8]}")
    os.rename(staging, final)
    dir_fd = os.open(root.path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
