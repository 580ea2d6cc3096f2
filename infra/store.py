"""The store: stage outputs as Parquet under ``{store}/{dataset}/{stage}/`` through fsspec.

Writes are atomic: a local file is written to a temporary name and renamed; an object store
``put`` is atomic per object. A stage's results are a folder of immutable ``part-*.parquet`` files,
each a checkpoint of one batch; a crash loses at most the batch in flight. Readers take the union
of the parts and, when a key repeats (two runs raced), the last one written.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

FINGERPRINT_META = b"ultrafeedback.fingerprint"
"""Parquet metadata key of a shard file's inputs fingerprint."""


def rows_table(rows: Sequence[BaseModel | dict[str, Any]], model: type[BaseModel] | None) -> pa.Table:
    dicts = [r.model_dump() if isinstance(r, BaseModel) else dict(r) for r in rows]
    schema = arrow_schema(model) if model is not None else None
    return pa.Table.from_pylist(dicts, schema=schema)


_PY_TO_ARROW: dict[Any, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
}


def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """The Arrow schema of a flat record model (str/int/float/bool and lists of str)."""
    import typing

    fields = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        nullable = False
        args = typing.get_args(annotation)
        if type(None) in args:
            nullable = True
            annotation = next(a for a in args if a is not type(None))
        origin = typing.get_origin(annotation)
        if origin is list:
            (inner,) = typing.get_args(annotation)
            dtype: pa.DataType = pa.list_(_PY_TO_ARROW[inner])
        elif origin is typing.Literal:
            dtype = pa.string()
        else:
            dtype = _PY_TO_ARROW[annotation]
        fields.append(pa.field(name, dtype, nullable=nullable))
    return pa.schema(fields)


class StoreUnavailable(RuntimeError):
    """The spec's ``store`` cannot be written; the message names ``store``, the URL and the cause."""


class Store:
    """One dataset's folder in an fsspec file system."""

    def __init__(self, url: str, dataset: str, storage_options: dict[str, Any] | None = None):
        if "://" not in url:
            url = "file://" + os.path.abspath(url)
        elif url.startswith("file://") and not url.startswith("file:///"):
            url = "file://" + os.path.abspath(url.removeprefix("file://"))
        self.url = url.rstrip("/")
        self.dataset = dataset
        self.storage_options = dict(storage_options or {})
        self.fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.root = f"{root.rstrip('/')}/{dataset}"
        self.local = self.fs.protocol in ("file", ("file", "local")) or "file" in self.fs.protocol

    # ------------------------------------------------------------------ paths
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def uri(self, *parts: str) -> str:
        """A full URL (with protocol) for users and for ``datasets.load_dataset``."""
        path = self.path(*parts)
        if self.local:
            return path
        protocol = self.fs.protocol[0] if isinstance(self.fs.protocol, tuple) else self.fs.protocol
        return f"{protocol}://{path}"

    def _fresh(self, path: str) -> str:
        """Drop the file system's cached listings of ``path`` and its parents (object stores only).

        s3fs answers ``ls``/``exists``/``open`` from listings cached in its (process-wide, shared)
        instance, so objects written by another process or machine after a listing would stay
        invisible: a rerun would redo stored work and a reader would miss parts.
        """
        if not self.local:
            self.fs.invalidate_cache(path)
        return path

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self._fresh(self.path(*parts)))

    def ls(self, *parts: str) -> list[str]:
        """Names (not paths) directly under a folder; [] when it does not exist."""
        path = self._fresh(self.path(*parts))
        if not self.fs.exists(path):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False))

    # ------------------------------------------------------------------ atomic writes
    def write_bytes(self, relpath: str, data: bytes) -> str:
        path = self.path(relpath)
        parent = path.rsplit("/", 1)[0]
        if self.local:
            self.fs.makedirs(parent, exist_ok=True)
            tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)
        return path

    def probe(self) -> None:
        """Write and remove a small file in the dataset's folder, or raise :class:`StoreUnavailable`.

        A store that cannot take a write (a read-only or impossible folder, a missing bucket, wrong
        credentials, an endpoint that does not answer) fails here in about a second, with its cause,
        instead of with a raw OS error from inside the first stage after Prefect has started.
        """
        try:
            path = self.write_bytes(f".probe-{uuid.uuid4().hex}", b"ultrafeedback store probe\n")
            self.fs.rm_file(path)
        except Exception as exc:  # noqa: BLE001 - any cause: the message carries it
            lines = str(exc).strip().splitlines()
            cause = type(exc).__name__ + (f": {lines[0]}" if lines else "")
            raise StoreUnavailable(f"store: cannot write to {self.uri()}: {cause}") from exc

    def write_table(self, relpath: str, table: pa.Table) -> str:
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        return self.write_bytes(relpath, sink.getvalue())

    def write_json(self, relpath: str, obj: Any) -> str:
        return self.write_bytes(relpath, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, relpath: str, default: Any = None) -> Any:
        path = self._fresh(self.path(relpath))
        if not self.fs.exists(path):
            return default
        with self.fs.open(path, "rb") as handle:
            return json.loads(handle.read())

    def read_table(self, relpath: str, columns: list[str] | None = None) -> pa.Table:
        with self.fs.open(self._fresh(self.path(relpath)), "rb") as handle:
            return pq.read_table(handle, columns=columns)

    def write_shard(self, relpath: str, table: pa.Table, fingerprint: str) -> str:
        """Write one shard file whose Parquet metadata records the fingerprint of its inputs."""
        metadata = dict(table.schema.metadata or {})
        metadata[FINGERPRINT_META] = fingerprint.encode()
        return self.write_table(relpath, table.replace_schema_metadata(metadata))

    def fingerprint(self, relpath: str) -> str | None:
        """The inputs fingerprint a shard file was written with (None: no such file, or none
        recorded). Reads the Parquet footer only."""
        path = self._fresh(self.path(relpath))
        try:
            with self.fs.open(path, "rb") as handle:
                metadata = pq.read_schema(handle).metadata or {}
        except FileNotFoundError:
            return None
        value = metadata.get(FINGERPRINT_META)
        return value.decode() if value is not None else None

    def num_rows(self, relpath: str) -> int:
        """Rows of a Parquet file, from its footer."""
        with self.fs.open(self._fresh(self.path(relpath)), "rb") as handle:
            return pq.read_metadata(handle).num_rows

    def delete(self, relpath: str) -> None:
        path = self._fresh(self.path(relpath))
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    # ------------------------------------------------------------------ result logs
    def results(self, stage: str, model: type[BaseModel] | None = None, key: str | None = None) -> ResultLog:
        return ResultLog(self, stage, model, key)

    def log(self, name: str) -> ResultLog:
        """The result log of a registered output (``ultrafeedback.outputs``), or of its failures
        (``failures/completions``)."""
        from ultrafeedback.outputs import failures_output, output

        out = failures_output(name.removeprefix("failures/")) if name.startswith("failures/") else output(name)
        return ResultLog(self, out.folder, out.record, out.key)


class ResultLog:
    """Append-only results of one stage: immutable Parquet parts keyed by a content key column.

    Part names are ``{time_ns}-{label}-{uuid}.parquet``; shards label their parts ``s{shard}``, so a
    shard's results can be compacted and read on their own. The log keeps an index, key -> the
    part holding its latest row, built from the key columns only (bytes per key, never the text)
    and kept current by this object's own appends and compactions; ``read_keys`` uses it to read
    just the parts that hold the wanted keys. Share one ResultLog per output within a run.
    """

    def __init__(self, store: Store, stage: str, model: type[BaseModel] | None, key: str | None):
        self.store = store
        self.stage = stage
        self.model = model
        self.key = key
        self.schema = arrow_schema(model) if model is not None else None
        self._index: dict[str, str] | None = None
        self._lock = threading.RLock()

    def parts(self) -> list[str]:
        return [n for n in self.store.ls(self.stage) if n.endswith(".parquet")]

    @staticmethod
    def label_of(part: str) -> str:
        """The label in a part's name (``s00003`` for a shard's parts)."""
        pieces = part.removesuffix(".parquet").split("-")
        return "-".join(pieces[1:-1]) if len(pieces) >= 3 else ""

    def append(self, rows: Sequence[BaseModel | dict[str, Any]] | pa.Table, label: str = "part") -> str | None:
        """Write one checkpoint part; returns its path (None for no rows)."""
        table = rows if isinstance(rows, pa.Table) else (rows_table(rows, self.model) if rows else None)
        if table is None or table.num_rows == 0:
            return None
        # time first: parts sort in write order, so "last write wins" holds across shard labels
        name = f"{time.time_ns():020d}-{label}-{uuid.uuid4().hex[:8]}.parquet"
        path = self.store.write_table(f"{self.stage}/{name}", table)
        with self._lock:
            if self._index is not None and self.key:
                for value in table.column(self.key).to_pylist():
                    self._index[value] = name
        return path

    # ------------------------------------------------------------------ the key index
    def index(self) -> dict[str, str]:
        """key -> name of the part with its latest row (built on first use from key columns)."""
        if not self.key:
            raise ValueError(f"result log {self.stage!r} has no key column")
        with self._lock:
            if self._index is None:
                index: dict[str, str] = {}
                for name in self.parts():  # time order: a later part overrides
                    with self.store.fs.open(self.store.path(self.stage, name), "rb") as handle:
                        for value in pq.read_table(handle, columns=[self.key]).column(self.key).to_pylist():
                            index[value] = name
                self._index = index
            return self._index

    def keys(self) -> set[str]:
        return set(self.index())

    def reload(self) -> None:
        """Drop the index, so the next use lists the parts again: other processes appended (a GPU
        job writes completions from its worker)."""
        with self._lock:
            self._index = None

    def locate(self, keys: Iterable[str]) -> dict[str, list[str]]:
        """Part name -> the given keys whose latest row it holds (keys not stored are left out)."""
        index = self.index()
        by_part: dict[str, list[str]] = {}
        for key in keys:
            part = index.get(key)
            if part is not None:
                by_part.setdefault(part, []).append(key)
        return by_part

    def read_located(self, by_part: dict[str, list[str]], columns: list[str] | None = None) -> pa.Table:
        """The rows of ``locate``'s answer, reading only those parts (also in a process that has no
        index of its own). Raises FileNotFoundError when a part was compacted away meanwhile."""
        assert self.key is not None
        wanted = None if columns is None else list(dict.fromkeys([*columns, self.key]))
        tables = []
        for part, part_keys in sorted(by_part.items()):
            with self.store.fs.open(self.store.path(self.stage, part), "rb") as handle:
                table = pq.read_table(handle, columns=wanted)
            table = table.filter(pc.is_in(table.column(self.key), value_set=pa.array(part_keys, pa.string())))
            tables.append(_last_per_key(table, self.key))
        if not tables:
            return self._empty(wanted)
        return pa.concat_tables(tables, promote_options="default")

    def read_keys(self, keys: Iterable[str], columns: list[str] | None = None) -> pa.Table:
        """The latest rows of ``keys`` (those stored; unknown keys are skipped), reading only the
        parts that hold them."""
        by_part = self.locate(keys)
        try:
            return self.read_located(by_part, columns)
        except FileNotFoundError:  # compacted meanwhile: by this object (the index names the new
            with self._lock:  # part already) or by another process (list the parts again)
                if self._index is not None and any(
                    self._index.get(k) == part for part, part_keys in by_part.items() for k in part_keys
                ):
                    self._index = None
            return self.read_keys([k for part_keys in by_part.values() for k in part_keys], columns)

    # ------------------------------------------------------------------ reading whole logs
    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The union of the parts, deduplicated on the key (last write wins)."""
        return self._read_parts(self.parts(), columns)

    def compact(self, min_parts: int = 32, label: str | None = None) -> int:
        """Merge parts into one when there are at least ``min_parts``; with ``label``, only that
        label's parts (one shard's), keeping the label. Returns how many parts were merged. Parts
        written while this runs are kept (only the listed ones are removed), and a crash in
        between leaves duplicates that reads resolve by key."""
        with self._lock:
            names = self.parts()
            if label is not None:
                names = [n for n in names if self.label_of(n) == label]
            if len(names) < min_parts:
                return 0
            table = self._read_parts(names, None)
            name = f"{time.time_ns():020d}-{label or 'compact'}-{uuid.uuid4().hex[:8]}.parquet"
            self.store.write_table(f"{self.stage}/{name}", table)
            if self._index is not None and self.key:  # readers move to the new part first
                merged = set(names)
                for value in table.column(self.key).to_pylist():
                    if self._index.get(value) in merged:
                        self._index[value] = name
            for old in names:
                self.store.delete(f"{self.stage}/{old}")
            return len(names)

    def _empty(self, columns: list[str] | None) -> pa.Table:
        if self.schema is None:
            return pa.table({})
        schema = self.schema if columns is None else pa.schema([self.schema.field(c) for c in columns])
        return schema.empty_table()

    def read_parts(self, names: list[str], columns: list[str] | None = None) -> pa.Table:
        """The union of the named parts, deduplicated on the key (last write wins)."""
        return self._read_parts(names, columns)

    def _read_parts(self, names: list[str], columns: list[str] | None) -> pa.Table:
        tables = []
        for name in names:
            with self.store.fs.open(self.store.path(self.stage, name), "rb") as handle:
                tables.append(pq.read_table(handle, columns=columns))
        if not tables:
            return self._empty(columns)
        table = pa.concat_tables(tables, promote_options="default")
        if self.key and self.key in table.column_names and table.num_rows:
            table = _last_per_key(table, self.key)
        return table

    def rows(self, columns: list[str] | None = None) -> list[dict[str, Any]]:
        return self.read(columns).to_pylist()

    def replace(self, rows: Iterable[BaseModel | dict[str, Any]], label: str = "part") -> None:
        """Rewrite the log as one part (used for small derived stages, not for LLM results)."""
        old = self.parts()
        self.append(list(rows), label=label)
        for name in old:
            self.store.delete(f"{self.stage}/{name}")
        with self._lock:
            self._index = None


def _last_per_key(table: pa.Table, key: str) -> pa.Table:
    """The last row of each key (rows are in write order), in first-seen order of the survivors."""
    keys = table.column(key).to_pylist()
    last: dict[Any, int] = {}
    for index, value in enumerate(keys):
        last[value] = index
    if len(last) == len(keys):
        return table
    return table.take(sorted(last.values()))
