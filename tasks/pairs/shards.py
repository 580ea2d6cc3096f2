"""The sharded store layout of the scored, pairs and binarized stages, its readers, and an ordered
merge of per-shard tables.

Layout under ``{store}/{dataset}/``::

    scored/shard-NNNNN.parquet                       ScoredCompletion rows (the score stage): whole
                                                     instructions per file, files in (source,
                                                     instruction_id) order
    pairs/shard-NNNNN.parquet                        the Pair rows of scored shard N, by instruction id
    binarized/{train_prefs,test_prefs}/shard-NNNNN.parquet
                                                     the binarized rows of scored shard N, by instruction id
    binarized/test_sft/shard-NNNNN.parquet           the shard's test rows that are also in test_sft
    binarized/dropped.json                           instructions ``binarize`` left out, by reason
    binarized/contaminated.json                      each instruction dropped as a benchmark match

The other H4 splits are derived from these at publish time: ``train_sft`` is ``train_prefs``,
``train_gen`` / ``test_gen`` are ``train_prefs`` / ``test_sft`` with the final assistant message cut.

A shard's pairs and binarized rows are ordered by instruction id, as the whole-table functions order
them; across shards the whole-table order is by instruction id too, while the shards follow
(source, instruction id). :func:`merge_shards` restores a global key order from the key columns
alone, reading every shard front to back once, so readers that need the whole-table order (the
release, ``read_pairs``) never hold more than the shards being merged at that moment.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ultrafeedback.infra.store import Store
from ultrafeedback.outputs import OUTPUTS
from ultrafeedback.records import ScoredCompletion

SCORED = OUTPUTS["scored"].folder
PAIRS = OUTPUTS["pairs"].folder
BINARIZED = OUTPUTS["binarized"].folder
SPLITS: tuple[str, str] = ("train_prefs", "test_prefs")
"""The two splits every binarized row is in exactly one of."""
STORED_SPLITS: tuple[str, str, str] = ("train_prefs", "test_prefs", "test_sft")
"""The split folders the pairs stage writes (``test_sft`` is a subset of ``test_prefs``)."""
UNSPLIT = f"{BINARIZED}/.unsplit"
"""The pairs stage's scratch folder: binarized rows before the (global) split is known."""

ROW_GROUP_ROWS = 1_000
"""Row groups of the pairs stage's files: readers stream a file a row group at a time."""

_SHARD = re.compile(r"^shard-(\d+)\.parquet$")


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.parquet"


def shard_files(store: Store, folder: str) -> list[tuple[int, str]]:
    """``(shard, relpath)`` of the ``shard-NNNNN.parquet`` files in a folder, in shard order."""
    found = [(int(m.group(1)), f"{folder}/{name}") for name in store.ls(folder) if (m := _SHARD.match(name))]
    return sorted(found)


def write_shard_file(
    store: Store, relpath: str, table: pa.Table, metadata: Mapping[bytes, str | bytes] | None = None
) -> None:
    """Write one shard file atomically, in row groups of :data:`ROW_GROUP_ROWS` rows, with
    ``metadata`` added to its schema's (fingerprints, counts: read back from the footer)."""
    if metadata:
        extra = {k: v.encode() if isinstance(v, str) else v for k, v in metadata.items()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    store.write_bytes(relpath, sink.getvalue().to_pybytes())


def read_columns(store: Store, relpath: str, columns: Sequence[str] | None = None) -> pa.Table:
    """One file, or only some of its columns (the key columns are a small part of a shard)."""
    with store.fs.open(store.path(relpath), "rb") as handle:
        return pq.read_table(handle, columns=None if columns is None else list(columns))


def footer_metadata(store: Store, relpath: str) -> dict[bytes, bytes]:
    """A Parquet file's schema metadata, from its footer."""
    with store.fs.open(store.path(relpath), "rb") as handle:
        return dict(pq.read_schema(handle).metadata or {})


def file_sha256(store: Store, relpath: str, block: int = 1 << 22) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with store.fs.open(store.path(relpath), "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def num_rows(store: Store, relpath: str) -> int:
    """A Parquet file's row count, from its footer."""
    with store.fs.open(store.path(relpath), "rb") as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def iter_file(store: Store, relpath: str, batch_rows: int = ROW_GROUP_ROWS) -> Iterator[pa.Table]:
    """A Parquet file as tables of at most ``batch_rows`` rows, read front to back."""
    with store.fs.open(store.path(relpath), "rb") as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_rows):
            yield pa.Table.from_batches([batch])


def remove_stale(store: Store, folder: str, keep: Iterable[str]) -> list[str]:
    """Delete the entries of ``folder`` not named in ``keep`` (shards of an earlier run that had more
    shards, files of an older layout); returns their names."""
    wanted = set(keep)
    stale = [name for name in store.ls(folder) if name not in wanted]
    for name in stale:
        store.delete(f"{folder}/{name}")
    return stale


# --------------------------------------------------------------------------- scored shards


@dataclass(frozen=True)
class ScoredShard:
    """One shard of the scored stage: a ``scored/shard-NNNNN.parquet`` file.

    A store written before the sharded layout holds checkpoint parts instead; it reads as a single
    shard 0 made of all parts (deduplicated on ``completion_id``, last write wins), so older stores
    and small tests keep working.
    """

    shard: int
    files: tuple[str, ...]
    legacy: bool = False

    def read(self, store: Store, columns: Sequence[str] | None = None) -> pa.Table:
        if self.legacy:
            wanted = None if columns is None else list(dict.fromkeys([*columns, "completion_id"]))
            table = store.results(SCORED, ScoredCompletion, key="completion_id").read(wanted)
            return table if columns is None else table.select(list(columns))
        (relpath,) = self.files
        return read_columns(store, relpath, columns)


def scored_shards(store: Store) -> list[ScoredShard]:
    """The scored stage's shards, in shard order (see :class:`ScoredShard` for older stores)."""
    shards = shard_files(store, SCORED)
    if shards:
        return [ScoredShard(shard, (relpath,)) for shard, relpath in shards]
    parts = store.results(SCORED).parts()
    return [ScoredShard(0, tuple(f"{SCORED}/{name}" for name in parts), legacy=True)] if parts else []


def iter_scored(store: Store, columns: Sequence[str] | None = None) -> Iterator[tuple[int, pa.Table]]:
    """``(shard, table)`` for each scored shard, one shard in memory at a time."""
    for shard in scored_shards(store):
        yield shard.shard, shard.read(store, columns)


def check_whole_instructions(ids_by_shard: Iterable[tuple[int, pa.Array | pa.ChunkedArray]]) -> None:
    """Raise when an instruction id occurs in two shards: pairs, binarized rows and release records
    are built per shard, which is only right when each shard holds whole instructions."""
    home: dict[str, int] = {}
    for shard, ids in ids_by_shard:
        for instruction in pc.unique(ids).to_pylist():
            other = home.setdefault(instruction, shard)
            if other != shard:
                raise ValueError(
                    f"instruction {instruction} has scored rows in shards {other} and {shard}; "
                    "each scored shard must hold whole instructions"
                )


# --------------------------------------------------------------------------- pairs and binarized


def iter_pairs(store: Store) -> Iterator[tuple[int, pa.Table]]:
    """``(shard, table)`` of the stored pairs (Pair schema), one shard at a time, in shard order."""
    for shard, relpath in shard_files(store, PAIRS):
        yield shard, read_columns(store, relpath)


def iter_binarized(store: Store) -> Iterator[tuple[str, int, pa.Table]]:
    """``(split, shard, table)`` of the stored binarized rows: every ``train_prefs`` shard, then
    every ``test_prefs`` shard, in shard order."""
    for split in SPLITS:
        for shard, relpath in shard_files(store, f"{BINARIZED}/{split}"):
            yield split, shard, read_columns(store, relpath)


# --------------------------------------------------------------------------- ordered merge


@dataclass(frozen=True)
class ShardStream:
    """One shard's rows for :func:`merge_shards`.

    Attributes:
        keys: the sort-key columns of the shard's rows, in the order ``open`` yields the rows.
        open: yields the shard's rows (tables of any size, in order); called once, when the merge
            first needs a row of this shard.
    """

    keys: pa.Table
    open: Callable[[], Iterator[pa.Table]]


class TableCursor:
    """Reads an iterator of tables front to back in slices of any size (``take(n)``)."""

    def __init__(self, chunks: Iterator[pa.Table]):
        self._chunks = chunks
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    def _pull(self) -> bool:
        for chunk in self._chunks:
            if chunk.num_rows:
                self._buffer.append(chunk)
                self._buffered += chunk.num_rows
                return True
        return False

    def take(self, n: int) -> pa.Table:
        """The next ``n`` rows (``n`` >= 1); raises when the input has fewer."""
        while self._buffered < n:
            if not self._pull():
                raise ValueError(f"expected {n} more rows, the input had {self._buffered}")
        table = self._buffer[0] if len(self._buffer) == 1 else pa.concat_tables(self._buffer)
        rest = table.slice(n)
        self._buffer = [rest] if rest.num_rows else []
        self._buffered -= n
        return table.slice(0, n)

    def exhausted(self) -> bool:
        return not self._buffered and not self._pull()

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()  # a generator holding an open file closes it now, not at garbage collection
        self._buffer, self._buffered = [], 0


def merge_shards(streams: Sequence[ShardStream], by: Sequence[str], chunk_rows: int) -> Iterator[pa.Table]:
    """The rows of all shards in ascending ``by`` order (ties: shard order, then row order), as
    tables of at most ``chunk_rows`` rows.

    The order is computed from the key columns alone; each shard is then read front to back exactly
    once, opened when its first row is due and released after its last, so memory holds the keys
    and the shards that are being merged at that moment (with instruction-id order over shards in
    (source, instruction id) order: about two per source). Each shard's rows must already be in
    ``by`` order, as the per-shard outputs of the pairs stage are; a ValueError says otherwise.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    counts = np.array([s.keys.num_rows for s in streams], dtype=np.int64)
    total = int(counts.sum())
    if not total:
        return
    shard = np.repeat(np.arange(len(streams), dtype=np.int64), counts)
    row = np.concatenate([np.arange(n, dtype=np.int64) for n in counts])
    keys = pa.concat_tables([s.keys.select(list(by)) for s in streams], promote_options="default")
    keys = keys.append_column("__shard", pa.array(shard)).append_column("__row", pa.array(row))
    order = pc.sort_indices(keys, sort_keys=[(c, "ascending") for c in [*by, "__shard", "__row"]]).to_numpy()
    shard_seq, row_seq = shard[order], row[order]
    if not np.array_equal(row_seq[np.argsort(shard_seq, kind="stable")], row):
        raise ValueError(f"merge_shards: a shard's rows are not sorted by {list(by)}")
    del keys, order, row, row_seq

    left = counts.copy()
    cursors: dict[int, TableCursor] = {}
    try:
        for start in range(0, total, chunk_rows):
            segment = shard_seq[start : start + chunk_rows]
            present, taken = np.unique(segment, return_counts=True)
            pieces = []
            for s, n in zip(present.tolist(), taken.tolist(), strict=True):
                cursor = cursors.get(s)
                if cursor is None:
                    cursor = cursors[s] = TableCursor(streams[s].open())
                pieces.append(cursor.take(n))
                left[s] -= n
                if not left[s]:
                    cursors.pop(s).close()
            grouped = pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)
            if len(pieces) == 1:
                yield grouped
                continue
            # ``grouped`` holds the segment's rows shard by shard; put them back in segment order
            position = np.empty(len(segment), dtype=np.int64)
            position[np.argsort(segment, kind="stable")] = np.arange(len(segment))
            yield grouped.take(pa.array(position))
    finally:
        for cursor in cursors.values():
            cursor.close()


def stored_streams(store: Store, relpaths: Sequence[str], by: Sequence[str]) -> list[ShardStream]:
    """:class:`ShardStream` over stored shard files: keys read up front, rows streamed later."""
    return [
        ShardStream(keys=read_columns(store, relpath, by), open=lambda relpath=relpath: iter_file(store, relpath))
        for relpath in relpaths
    ]


def read_merged(store: Store, folder: str, by: Sequence[str], schema: pa.Schema) -> pa.Table:
    """All shard files of a folder as one table in ``by`` order: the whole-table order of the
    pairs and binarized products. For small data (tests, ``status``); large readers iterate."""
    streams = stored_streams(store, [relpath for _, relpath in shard_files(store, folder)], by)
    tables = list(merge_shards(streams, by, chunk_rows=1 << 20))
    return pa.concat_tables(tables) if tables else schema.empty_table()
