"""Loaders: turn one spec source into a stream of raw records, each with where it came from.

Every loader yields :class:`RawRecord` ``(origin, data, error, raw)``. A record that cannot be read
(a line that is not JSON, a CSV row with the wrong number of fields, bytes that are not UTF-8) is
yielded with ``error`` set instead of raising, so the ingest stage can quarantine it with its
origin and keep going: one bad line must not cost a 100k-line file. Whole-file problems (missing
file, unreadable Parquet, a hub dataset that cannot be loaded) raise :class:`IngestError` naming
the spec key and the resolved path, because nothing downstream can fix them.

Origins, which end up in ``Instruction.origin`` and in every quarantine record:

* JSONL: ``file.jsonl:17`` -- the 1-based line number, as an editor shows it;
* CSV: ``file.csv:row 5`` -- the 0-based data row (the header is not a row), as pandas indexes it;
* Parquet: ``file.parquet:row 5`` -- the 0-based row over the file's row groups;
* hf: ``hub_id:split:row 5`` (``hub_id (config):split:row 5`` with a config) -- the 0-based index,
  so ``ds[5]`` is the record.

``file`` is the path as the user would recognise it: relative to the spec's folder for local
files under it, otherwise the absolute path or the full URL (``s3://bucket/key``). A source path
may name a file, a folder (every file with the loader's suffix under it, sorted) or a glob.

Field mapping (``source.fields``): a column name, or a dotted path into nested values
(``conversations.0.value``) when no column has that exact name.

Answer columns: in JSONL, Parquet and hf records a list is the list of answers and a lone string is
one answer. A CSV cell has no list type, so it is parsed: a cell that is a JSON list
(``["a", "b"]``) is that list, anything else is split on ``;`` (TruthfulQA's own CSV convention),
with items trimmed and empty items dropped.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import fsspec
import pyarrow.parquet as pq

from ultrafeedback.keys import normalise_text
from ultrafeedback.spec import Source, Spec


class IngestError(RuntimeError):
    """A source or benchmark file cannot be read at all; the message names the spec key and path."""


class RawRecord(NamedTuple):
    """One input record: ``data`` when it could be parsed, else ``error`` (and ``raw`` for both)."""

    origin: str
    data: Mapping[str, Any] | None
    error: str | None = None
    raw: str = ""


MISSING: Any = object()
"""Returned by :func:`get_field` when the record has no such field (distinct from a null value)."""

_SUFFIXES: dict[str, tuple[str, ...]] = {
    "jsonl": (".jsonl", ".ndjson", ".json"),
    "parquet": (".parquet", ".pq"),
    "csv": (".csv", ".tsv"),
}
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zstd", ".lz4")
_GLOB = re.compile(r"[*?\[]")
_SURROGATE = re.compile("[\udc80-\udcff]")
_BATCH_ROWS = 2048


# --------------------------------------------------------------------------- spec keys and fields


def source_key(spec: Spec, source: Source) -> str:
    """The spec key of a source as errors print it, ``sources[1] (truthful_qa)``."""
    for index, candidate in enumerate(spec.sources):
        if candidate.name == source.name:
            return f"sources[{index}] ({source.name})"
    return f"sources ({source.name})"


def get_field(record: Mapping[str, Any], name: str) -> Any:
    """The value of column ``name``, or of a dotted path into nested values; :data:`MISSING` if absent.

    An exact column name wins over a dotted path, so a column literally called ``a.b`` still works.
    """
    if name in record:
        return record[name]
    if "." not in name:
        return MISSING
    node: Any = record
    for part in name.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    return node


def mapped_columns(source: Source) -> list[str]:
    """The field names the source maps (instruction, answers, id), in that order, without repeats."""
    names = [
        source.fields.instruction,
        source.fields.correct_answers,
        source.fields.incorrect_answers,
        source.fields.id,
    ]
    return list(dict.fromkeys(n for n in names if n))


def _wanted_columns(source: Source, available: list[str]) -> list[str]:
    """The top-level columns to read: mapped names that exist, or the heads of dotted paths."""
    present = set(available)
    wanted: list[str] = []
    for name in mapped_columns(source):
        column = name if name in present else name.split(".", 1)[0]
        if column in present and column not in wanted:
            wanted.append(column)
    return wanted


def parse_csv_list(cell: str) -> list[str]:
    """A CSV answers cell as a list: a JSON list if it is one, else the ``;``-separated items."""
    text = cell.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, list):
            return [item if isinstance(item, str) else json.dumps(item) for item in value if item is not None]
    return [item.strip() for item in text.split(";") if item.strip()]


# --------------------------------------------------------------------------- files


def _filesystem(spec: Spec, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec file system and path of a URL; storage options only apply to remote URLs."""
    options = spec.execution.storage_options if _is_remote(url) else {}
    return fsspec.core.url_to_fs(url, **options)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def _display(spec: Spec, fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A file's name for origins: relative to the spec folder when under it, else absolute / a URL."""
    if not _is_local(fs):
        return fs.unstrip_protocol(path)
    base = Path(spec.base_dir).resolve()
    try:
        return Path(path).resolve().relative_to(base).as_posix()
    except ValueError:
        return path


def _plain_suffix(path: str) -> str:
    """The suffix of a file name ignoring a compression suffix (``a.jsonl.gz`` -> ``.jsonl``)."""
    name = path.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return os.path.splitext(name)[1]


def resolve_files(spec: Spec, source: Source) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The files a file-loader source reads: one file, a folder's matching files, or a glob's matches.

    Raises :class:`IngestError` naming ``sources[i] (name).path`` and the resolved path when nothing
    is there, so a typo in a spec fails before any work starts.
    """
    key = f"{source_key(spec, source)}.path"
    resolved = spec.resolve_path(source.path)
    try:
        fs, path = _filesystem(spec, resolved)
        if _GLOB.search(path):
            files = sorted(p for p in fs.glob(path) if fs.isfile(p))
            if not files:
                raise IngestError(f"{key}: no file matches {resolved}")
            return fs, files
        if not fs.exists(path):
            raise IngestError(f"{key}: file not found: {resolved}")
        if fs.isdir(path):
            suffixes = _SUFFIXES[source.loader]
            files = sorted(p for p in fs.find(path) if _plain_suffix(p) in suffixes)
            if not files:
                raise IngestError(
                    f"{key}: folder {resolved} holds no {'/'.join(suffixes)} files for loader {source.loader!r}"
                )
            return fs, files
        return fs, [path]
    except IngestError:
        raise
    except Exception as exc:  # credentials, unreachable endpoint, bad URL
        raise IngestError(f"{key}: cannot open {resolved}: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- loaders


def _jsonl_values(fs: fsspec.AbstractFileSystem, path: str, display: str) -> Iterator[tuple[str, Any, str | None, str]]:
    """``(origin, value, error, raw)`` for each non-blank line of a JSON Lines file, streamed."""
    with fs.open(path, "rb", compression="infer") as handle:
        for lineno, line_bytes in enumerate(handle, 1):
            origin = f"{display}:{lineno}"
            try:
                line = line_bytes.decode("utf-8")
            except UnicodeDecodeError as exc:
                raw = line_bytes.decode("utf-8", errors="replace").rstrip("\r\n")
                yield origin, None, f"not valid UTF-8 at byte {exc.start}", raw
                continue
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            raw = line.rstrip("\r\n")
            try:
                yield origin, json.loads(line), None, raw
            except json.JSONDecodeError as exc:
                yield origin, None, f"invalid JSON: {exc.msg} (column {exc.colno})", raw


def _iter_jsonl(fs: fsspec.AbstractFileSystem, path: str, display: str) -> Iterator[RawRecord]:
    """JSON Lines: one object per line; blank lines are skipped, bad lines are error records."""
    for origin, value, error, raw in _jsonl_values(fs, path, display):
        if error is not None:
            yield RawRecord(origin, None, error, raw)
        elif not isinstance(value, dict):
            yield RawRecord(origin, None, f"expected a JSON object, got {_json_type(value)}", raw)
        else:
            yield RawRecord(origin, value, None, raw)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _iter_csv(fs: fsspec.AbstractFileSystem, path: str, display: str) -> Iterator[RawRecord]:
    """CSV (TSV for ``.tsv``) with a header row; each data row becomes a mapping of header -> cell.

    Invalid UTF-8 is read with ``surrogateescape`` so one bad row is an error record, not the end of
    the file. A row whose field count differs from the header's is an error record too: a shifted
    row would otherwise put an answer in the instruction column. The field size limit is raised
    while reading, since real instructions (ShareGPT) exceed the csv module's 128 KiB default.
    """
    delimiter = "\t" if _plain_suffix(path) == ".tsv" else ","
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, 1 << 26))
    try:
        with (
            fs.open(path, "rb", compression="infer") as binary,
            io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="") as text,
        ):
            yield from _csv_rows(csv.reader(text, delimiter=delimiter), display)
    finally:
        csv.field_size_limit(limit)


def _csv_rows(reader: Any, display: str) -> Iterator[RawRecord]:
    """The data rows of a CSV reader after its header row, as raw records (blank rows skipped)."""
    header: list[str] | None = None
    row_index = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield RawRecord(f"{display}:row {row_index}", None, f"CSV error at line {reader.line_num}: {exc}", "")
            row_index += 1
            continue
        if header is None:
            header = row
            continue
        if not row:
            continue
        origin = f"{display}:row {row_index}"
        row_index += 1
        raw = json.dumps(row, ensure_ascii=False)
        if any(_SURROGATE.search(cell) for cell in row):
            yield RawRecord(origin, None, f"not valid UTF-8 (line {reader.line_num})", raw)
        elif len(row) != len(header):
            error = f"row has {len(row)} fields but the header has {len(header)} (line {reader.line_num})"
            yield RawRecord(origin, None, error, raw)
        else:
            data = dict(zip(header, row, strict=True))
            yield RawRecord(origin, data, None, json.dumps(data, ensure_ascii=False))


def _iter_parquet(
    fs: fsspec.AbstractFileSystem, path: str, display: str, source: Source, key: str
) -> Iterator[RawRecord]:
    """Parquet, batch by batch, reading only the mapped columns (a wide file stays cheap)."""
    with fs.open(path, "rb") as handle:
        try:
            parquet = pq.ParquetFile(handle)
        except Exception as exc:
            raise IngestError(f"{key}: cannot read Parquet file {display}: {exc}") from exc
        columns = _wanted_columns(source, parquet.schema_arrow.names)
        if not columns:
            # none of the mapped columns exists: every row is reported as missing its fields
            for row_index in range(parquet.metadata.num_rows):
                yield RawRecord(f"{display}:row {row_index}", {}, None, "{}")
            return
        row_index = 0
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
            for row in batch.to_pylist():
                yield RawRecord(f"{display}:row {row_index}", row, None, _dump(row))
                row_index += 1


def _dump(row: Mapping[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, default=str)


_HF_BUILDERS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "json",
    ".json": "json",
    ".ndjson": "json",
    ".csv": "csv",
    ".tsv": "csv",
}


def _looks_like_path(path: str) -> bool:
    """Whether an hf source path is meant as a local path rather than a hub id."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or _plain_suffix(path) in _HF_BUILDERS


def _load_hf(spec: Spec, source: Source, key: str, cache_dir: str | None) -> Any:
    """``datasets.load_dataset`` for a hub id, a local dataset folder, a local file or a remote file.

    A hub id goes to the Hub (honouring ``HF_HUB_OFFLINE`` and the local cache); a local folder is
    loaded with the packaged builders (Parquet/JSON/CSV files, or a saved dataset repo layout); a
    single file or a remote URL (``s3://...``) goes through the builder its suffix names, with the
    spec's storage options.
    """
    import datasets

    path = source.path
    resolved = spec.resolve_path(path)
    common: dict[str, Any] = {"split": source.hf_split, "cache_dir": cache_dir}
    try:
        if "://" in path and not path.startswith("file://"):
            builder = _HF_BUILDERS.get(_plain_suffix(path))
            if builder is None:
                raise IngestError(
                    f"{key}.path: loader 'hf' reads remote files by suffix "
                    f"({', '.join(sorted(_HF_BUILDERS))}); cannot tell the format of {path}"
                )
            return datasets.load_dataset(
                builder, data_files=path, storage_options=spec.execution.storage_options, **common
            )
        local = resolved.removeprefix("file://")
        if os.path.isfile(local):
            builder = _HF_BUILDERS.get(_plain_suffix(local))
            if builder is None:
                raise IngestError(f"{key}.path: cannot tell the format of file {local}")
            return datasets.load_dataset(builder, data_files=local, **common)
        if os.path.isdir(local):
            return datasets.load_dataset(local, name=source.hf_config, **common)
        if _looks_like_path(path):
            raise IngestError(f"{key}.path: file not found: {local}")
        return datasets.load_dataset(path, name=source.hf_config, revision=source.hf_revision, **common)
    except IngestError:
        raise
    except Exception as exc:
        where = path if not os.path.exists(resolved) else resolved
        raise IngestError(
            f"{key}.path: datasets.load_dataset({where!r}, name={source.hf_config!r}, "
            f"split={source.hf_split!r}) failed: {type(exc).__name__}: {exc}"
        ) from exc


def _iter_hf(spec: Spec, source: Source, key: str, cache_dir: str | None) -> Iterator[RawRecord]:
    """A Hugging Face dataset split, read in batches of the mapped columns only."""
    dataset = _load_hf(spec, source, key, cache_dir)
    label = source.path + (f" ({source.hf_config})" if source.hf_config else "")
    prefix = f"{label}:{source.hf_split}"
    columns = _wanted_columns(source, list(dataset.column_names))
    if not columns:
        for row_index in range(dataset.num_rows):
            yield RawRecord(f"{prefix}:row {row_index}", {}, None, "{}")
        return
    dataset = dataset.select_columns(columns)
    row_index = 0
    for batch in dataset.iter(batch_size=_BATCH_ROWS):
        for values in zip(*(batch[c] for c in columns), strict=True):
            row = dict(zip(columns, values, strict=True))
            yield RawRecord(f"{prefix}:row {row_index}", row, None, _dump(row))
            row_index += 1


def iter_source(source: Source, spec: Spec, *, hf_cache_dir: str | None = None) -> Iterator[RawRecord]:
    """Every input record of one source, in file order, with its origin.

    Paths resolve against the spec file's folder (``spec.resolve_path``) and open through fsspec, so
    ``s3://`` and other URLs work with ``execution.storage_options``. ``hf_cache_dir`` overrides the
    ``datasets`` cache for the ``hf`` loader (tests point it at a temporary folder).
    """
    key = source_key(spec, source)
    if source.loader == "hf":
        yield from _iter_hf(spec, source, key, hf_cache_dir)
        return
    fs, files = resolve_files(spec, source)
    for path in files:
        yield from _iter_file(spec, source, fs, path)


def _iter_file(spec: Spec, source: Source, fs: fsspec.AbstractFileSystem, path: str) -> Iterator[RawRecord]:
    """The records of one file of a file-loader source."""
    key = source_key(spec, source)
    display = _display(spec, fs, path)
    try:
        if source.loader == "jsonl":
            yield from _iter_jsonl(fs, path, display)
        elif source.loader == "csv":
            yield from _iter_csv(fs, path, display)
        else:
            yield from _iter_parquet(fs, path, display, source, f"{key}.path")
    except IngestError:
        raise
    except OSError as exc:  # a truncated gzip, a read error half way through
        raise IngestError(f"{key}.path: error reading {display}: {type(exc).__name__}: {exc}") from exc


_MAPPED_FIELDS = ("instruction", "correct_answers", "incorrect_answers", "id")


def check_sources(spec: Spec, records: int = 100) -> None:
    """What ``validate`` checks of the sources without ingesting them: every local file-loader
    source has its files, and each file's first ``records`` readable records hold every mapped
    column (a mapped name no record has is a typo, which ingest would turn into a quarantine of
    every record). Raises :class:`IngestError` naming the spec key and the file.

    Remote (``s3://``) and ``hf`` sources are not opened: validating a spec needs no network and no
    credentials. A file whose first records are all unreadable is left to ingest's quarantine.
    """
    for source in spec.sources:
        if source.loader == "hf" or _is_remote(spec.resolve_path(source.path)):
            continue
        key = source_key(spec, source)
        fs, files = resolve_files(spec, source)
        for path in files:
            seen = [raw.data for raw in itertools.islice(_iter_file(spec, source, fs, path), records)]
            data = [record for record in seen if record is not None]
            if not data:
                continue
            for field in _MAPPED_FIELDS:
                name = getattr(source.fields, field)
                if name and all(get_field(record, name) is MISSING for record in data):
                    if source.loader == "parquet":  # its records hold the mapped columns only
                        with fs.open(path, "rb") as handle:
                            columns = pq.ParquetFile(handle).schema_arrow.names
                    else:
                        columns = sorted({column for record in data for column in record})
                    raise IngestError(
                        f"{key}.fields.{field}: column {name!r} is not in {_display(spec, fs, path)} "
                        f"(none of its first {len(data)} records has it; its columns: "
                        f"{', '.join(columns) or 'none'})"
                    )


def _is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


# --------------------------------------------------------------------------- benchmark questions

_QUESTION_COLUMNS = ("question", "instruction", "prompt", "text")


def _question_column(names: list[str], where: str) -> str:
    """The benchmark file's question column: the first of question/instruction/prompt/text, any case."""
    lowered = {name.lower(): name for name in names}
    for candidate in _QUESTION_COLUMNS:
        if candidate in lowered:
            return lowered[candidate]
    raise IngestError(
        f"{where}: no question column (looked for {', '.join(_QUESTION_COLUMNS)}, any case; "
        f"found {', '.join(names) or 'none'})"
    )


def load_benchmark_questions(spec: Spec) -> dict[str, tuple[str, str]]:
    """Normalised benchmark questions from ``ingest.decontaminate``: text -> (file as in the spec, origin).

    Formats, by suffix (a compression suffix is allowed):

    * ``.txt``: one question per line, blank lines skipped;
    * ``.jsonl`` / ``.json`` / ``.ndjson``: one JSON value per line, either a string (the question)
      or an object with a question column;
    * ``.csv`` / ``.tsv``: a header row with a question column;
    * ``.parquet``: a question column.

    The question column is the first of ``question``, ``instruction``, ``prompt``, ``text`` present,
    matched case-insensitively (TruthfulQA's CSV calls it ``Question``). A bad line raises
    :class:`IngestError` rather than being skipped: a silently shorter benchmark list would let
    contaminated instructions through. When two files hold a question, the first file listed wins.
    """
    questions: dict[str, tuple[str, str]] = {}
    for index, entry in enumerate(spec.ingest.decontaminate):
        key = f"ingest.decontaminate[{index}]"
        resolved = spec.resolve_path(entry)
        try:
            fs, path = _filesystem(spec, resolved)
            exists = fs.isfile(path)
        except Exception as exc:
            raise IngestError(f"{key}: cannot open {resolved}: {type(exc).__name__}: {exc}") from exc
        if not exists:
            raise IngestError(f"{key}: file not found: {resolved}")
        display = _display(spec, fs, path)
        for origin, text in _iter_questions(fs, path, display, key):
            if not isinstance(text, str):
                raise IngestError(f"{key}: {origin}: the question is not a string")
            normalised = normalise_text(text)
            if normalised and normalised not in questions:
                questions[normalised] = (entry, origin)
    return questions


def _iter_questions(fs: fsspec.AbstractFileSystem, path: str, display: str, key: str) -> Iterator[tuple[str, Any]]:
    suffix = _plain_suffix(path)
    if suffix == ".txt":
        with fs.open(path, "rt", encoding="utf-8-sig", compression="infer") as handle:
            for lineno, line in enumerate(handle, 1):
                if line.strip():
                    yield f"{display}:{lineno}", line
    elif suffix in _SUFFIXES["jsonl"]:
        column: str | None = None
        for origin, value, error, _raw in _jsonl_values(fs, path, display):
            if error is not None:
                raise IngestError(f"{key}: {origin}: {error}")
            if isinstance(value, dict):
                column = column or _question_column(list(value), f"{key}: {origin}")
                yield origin, value.get(column)
            else:
                yield origin, value
    elif suffix in _SUFFIXES["csv"]:
        header: list[str] | None = None
        column_index = 0
        for raw in _iter_csv(fs, path, display):
            if raw.error is not None or raw.data is None:
                raise IngestError(f"{key}: {raw.origin}: {raw.error}")
            if header is None:
                header = list(raw.data)
                column_index = header.index(_question_column(header, f"{key}: {display}"))
            yield raw.origin, list(raw.data.values())[column_index]
    elif suffix in _SUFFIXES["parquet"]:
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            name = _question_column(parquet.schema_arrow.names, f"{key}: {display}")
            row_index = 0
            for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=[name]):
                for value in batch.column(0).to_pylist():
                    yield f"{display}:row {row_index}", value
                    row_index += 1
    else:
        raise IngestError(
            f"{key}: unsupported benchmark file {display} (use .txt, .jsonl, .json, .csv, .tsv or .parquet)"
        )
