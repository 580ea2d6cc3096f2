"""Publish a numbered, immutable Hugging Face dataset release (DESIGN §1 step 8, §4).

Layout of one release, a Hugging Face dataset repository as a folder::

    {root}/v{N}/README.md                                   dataset card, YAML ``configs``
    {root}/v{N}/completions/train-00000-of-00001.parquet    openbmb/UltraFeedback schema (+ judge fields, id)
    {root}/v{N}/pairs/train-00000-of-00001.parquet          every non-tied pair (Pair records)
    {root}/v{N}/binarized/train_prefs-00000-of-00001.parquet
    {root}/v{N}/binarized/test_prefs-00000-of-00001.parquet
    {root}/v{N}/manifest.json                               written last: a release exists iff it has one

``{root}`` is ``{store}/{dataset}/releases`` by default, or any local folder / fsspec URL given as
``target_uri`` (each root numbers its own releases). ``datasets.load_dataset("{root}/v{N}",
name="binarized")`` loads a config straight from the folder.

Atomicity: on a local file system the release is written into ``{root}/.staging-v{N}-{uuid}/`` and
renamed to ``v{N}`` in one step, manifest included; on an object store (no rename) the files go to
``v{N}/`` with ``manifest.json`` last, and readers ignore a folder without a manifest. Any error
removes what this call wrote, so a failed publish leaves neither a half release nor a staging folder.

Idempotence: the content hash covers the bytes of every data file and the card inputs (not the
version, not the time). When the latest complete release has the same hash, publishing returns it
instead of creating v{N+1}: rerunning a finished build never duplicates a release.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import posixpath
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from infra.store import Store
from tasks.publish.card import render_card, scrub
from ultrafeedback.records import ASPECTS, TYPED_ASPECTS, Pair

if TYPE_CHECKING:
    from datasets import Features

    from tasks.aggregate.aggregate import AggregateResult

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CARD = "README.md"
FORMAT = "ultrafeedback-release/1"
ROW_GROUP_ROWS = 2_000
"""Parquet row groups small enough for the Hub viewer's random access, large enough to compress."""

CONFIG_SPLITS: dict[str, tuple[str, ...]] = {
    "completions": ("train",),
    "pairs": ("train",),
    "binarized": ("train_prefs", "test_prefs"),
}


# --------------------------------------------------------------------------- features (schemas)


def completions_features() -> Features:
    """The openbmb/UltraFeedback record schema (reference §5), plus ``judge_model``/``judge_kind``
    per completion and an instruction-level ``id``. Field order follows the published data."""
    from datasets import Features, List, Value

    text = Value("string")
    plain = {"Rating": text, "Rationale": text}
    typed_help = {"Rating": text, "Rationale": text, "Rationale For Rating": text, "Type": List(text)}
    typed_truth = {"Type": List(text), "Rationale": text, "Rating": text, "Rationale For Rating": text}
    completion = {
        "model": text,
        "principle": text,
        "custom_system_prompt": text,
        "response": text,
        "annotations": {
            "helpfulness": typed_help,
            "honesty": plain,
            "instruction_following": plain,
            "truthfulness": typed_truth,
        },
        "critique": text,
        "overall_score": Value("float64"),
        "fine-grained_score": Value("float64"),
        "judge_model": text,
        "judge_kind": text,
    }
    return Features(
        {
            "source": text,
            "instruction": text,
            "models": List(text),
            "completions": List(completion),
            "correct_answers": List(text),
            "incorrect_answers": List(text),
            "id": text,
        }
    )


def pairs_features() -> Features:
    """The Pair record as Features (strings and float64 scores)."""
    from datasets import Features, Value

    kinds = {"str": "string", "float": "float64"}
    return Features({name: Value(kinds[info.annotation.__name__]) for name, info in Pair.model_fields.items()})


def binarized_features() -> Features:
    """TRL / HuggingFaceH4 binarized format: chat message lists with ``content`` and ``role``."""
    from datasets import Features, List, Value

    text = Value("string")
    messages = List({"content": text, "role": text})
    return Features(
        {
            "prompt": text,
            "prompt_id": text,
            "chosen": messages,
            "rejected": messages,
            "messages": messages,
            "score_chosen": Value("float64"),
            "score_rejected": Value("float64"),
            "chosen_model": text,
            "rejected_model": text,
            "source": text,
            "instruction_id": text,
            "chosen_id": text,
            "rejected_id": text,
        }
    )


# --------------------------------------------------------------------------- tables


def _aspect_sources(aspect: str) -> dict[str, str]:
    """Where each field of one aspect's annotation struct comes from in a ScoredCompletion row.

    In the published schema a typed aspect's ``Rationale`` is the type rationale and
    ``Rationale For Rating`` the rating's (reference §5).
    """
    if aspect not in TYPED_ASPECTS:
        return {"Rating": f"{aspect}_rating", "Rationale": f"{aspect}_rationale"}
    return {
        "Rating": f"{aspect}_rating",
        "Rationale": f"{aspect}_type_rationale",
        "Rationale For Rating": f"{aspect}_rationale",
        "Type": f"{aspect}_type",
    }


COMPLETION_SOURCES: dict[str, Any] = {
    "model": "model",
    "principle": "principle",
    "custom_system_prompt": "system_prompt",
    "response": "response",
    "annotations": {aspect: _aspect_sources(aspect) for aspect in ASPECTS},
    "critique": "critique",
    "overall_score": "overall_score",
    "fine-grained_score": "fine_grained_score",
    "judge_model": "judge_model",
    "judge_kind": "judge_kind",
}
"""Each field of a published completion, by the ScoredCompletion column it is read from."""

INSTRUCTION_SOURCES: dict[str, str] = {
    "source": "source",
    "instruction": "instruction",
    "models": "models",
    "correct_answers": "correct_answers",
    "incorrect_answers": "incorrect_answers",
    "id": "instruction_id",
}


def _column(frame: pd.DataFrame, name: str, dtype: pa.DataType) -> pa.Array:
    """A DataFrame column as an Arrow array of ``dtype`` (all nulls when the column is absent)."""
    if name not in frame.columns:
        return pa.nulls(len(frame), dtype)
    array = pa.array(frame[name], from_pandas=True)
    return array if array.type == dtype else array.cast(dtype)


def _struct(frame: pd.DataFrame, dtype: pa.StructType, sources: Mapping[str, Any]) -> pa.StructArray:
    arrays = [
        _struct(frame, field.type, sources[field.name])
        if isinstance(sources[field.name], Mapping)
        else _column(frame, sources[field.name], field.type)
        for field in dtype
    ]
    return pa.StructArray.from_arrays(arrays, fields=list(dtype))


def completions_table(scored: pd.DataFrame) -> pa.Table:
    """ScoredCompletion rows grouped into openbmb/UltraFeedback records, one per instruction.

    Completions are in slot order; ``models`` is the instruction's assigned model list (so a row
    whose generation failed for one slot has fewer completions than models, as in the original).
    Records are ordered by (source, id), as the original groups rows by source. Built column-wise
    in Arrow (structs, then list offsets at instruction boundaries): 64k instructions take about a
    second, where row-wise dicts took twenty.
    """
    from tasks.pairs.pairs import latest_rows

    schema = completions_features().arrow_schema
    frame = latest_rows(scored)
    if frame.empty:
        return schema.empty_table()
    frame = frame.sort_values(["source", "instruction_id", "position", "completion_id"], kind="stable")
    frame = frame.reset_index(drop=True)
    ids = frame["instruction_id"].to_numpy(dtype=object)
    starts = np.concatenate([[0], np.flatnonzero(ids[1:] != ids[:-1]) + 1])
    offsets = pa.array(np.append(starts, len(frame)), type=pa.int32())
    list_type = schema.field("completions").type
    completions = pa.ListArray.from_arrays(offsets, _struct(frame, list_type.value_type, COMPLETION_SOURCES))
    heads = frame.iloc[starts].reset_index(drop=True)
    arrays = {name: _column(heads, column, schema.field(name).type) for name, column in INSTRUCTION_SOURCES.items()}
    arrays["completions"] = completions.cast(list_type)
    return pa.Table.from_arrays([arrays[field.name] for field in schema], schema=schema)


def completion_records(scored: pd.DataFrame) -> list[dict[str, Any]]:
    """``completions_table`` as Python dicts (one openbmb/UltraFeedback record per instruction)."""
    return completions_table(scored).to_pylist()


def pairs_table(pairs: Sequence[Pair] | pd.DataFrame) -> pa.Table:
    """Pair records (or a DataFrame of them) as an Arrow table with the pairs features' schema."""
    schema = pairs_features().arrow_schema
    if isinstance(pairs, pd.DataFrame):
        arrays = [_column(pairs, field.name, field.type) for field in schema]
    else:
        arrays = [pa.array([getattr(p, field.name) for p in pairs], type=field.type) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _table(rows: Sequence[Mapping[str, Any]], features: Features) -> pa.Table:
    """Rows as an Arrow table with exactly the features' schema (and its HF metadata)."""
    return pa.Table.from_pylist([dict(r) for r in rows], schema=features.arrow_schema)


def _shards(table: pa.Table, max_rows: int) -> list[pa.Table]:
    """Equal-sized slices of at most ``max_rows`` rows; one (possibly empty) shard at least."""
    n = max(1, math.ceil(table.num_rows / max_rows))
    size = math.ceil(table.num_rows / n) if table.num_rows else 0
    return [table.slice(i * size, size) for i in range(n)] if size else [table]


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return sink.getvalue()


# --------------------------------------------------------------------------- inputs and results


@dataclass
class ReleaseTables:
    """What a release is built from.

    Attributes:
        scored: the ScoredCompletion rows (the ``completions`` config is built from them).
        pairs: ``build_pairs`` output (Pair records or a DataFrame of them).
        binarized: split name (``train_prefs``, ``test_prefs``) -> ``binarize`` rows.
        aggregate: the ``aggregate`` result (or its ``to_dict()``), shown on the card.
    """

    scored: pd.DataFrame
    pairs: Sequence[Pair] | pd.DataFrame
    binarized: Mapping[str, Sequence[Mapping[str, Any]]]
    aggregate: AggregateResult | Mapping[str, Any] | None = None


@dataclass(frozen=True)
class PublishedRelease:
    """A complete release: where it is, its number and its manifest.

    ``created`` is False when an identical release already existed and was returned instead.
    """

    uri: str
    version: int
    manifest: dict[str, Any] = field(repr=False)
    created: bool = True


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


def _judges(scored: pd.DataFrame) -> list[dict[str, Any]]:
    if scored.empty:
        return []
    frame = scored.drop_duplicates("completion_id", keep="last")
    counts = frame.groupby(["judge_model", "judge_kind"]).size().reset_index(name="completions")
    counts = counts.sort_values(["judge_kind", "judge_model"])
    return [
        {
            "judge_model": str(r.judge_model),
            "judge_kind": str(r.judge_kind),
            "completions": int(r.completions),
        }
        for r in counts.itertuples(index=False)
    ]


def _plan(
    tables: ReleaseTables, max_shard_rows: int
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]], list[tuple[str, pa.Table]], dict[str, Any]]:
    """The files of a release: (rows and Arrow bytes per config/split, [(relpath, table)], features)."""
    features = {
        "completions": completions_features(),
        "pairs": pairs_features(),
        "binarized": binarized_features(),
    }
    unknown = set(tables.binarized) - set(CONFIG_SPLITS["binarized"])
    if unknown:
        raise ValueError(f"binarized splits must be {CONFIG_SPLITS['binarized']}, got extra {sorted(unknown)}")
    split_tables = {
        ("completions", "train"): completions_table(tables.scored),
        ("pairs", "train"): pairs_table(tables.pairs),
        **{
            ("binarized", split): _table(tables.binarized.get(split, []), features["binarized"])
            for split in CONFIG_SPLITS["binarized"]
        },
    }
    counts: dict[str, dict[str, int]] = {}
    sizes: dict[str, dict[str, int]] = {}
    files: list[tuple[str, pa.Table]] = []
    for (config, split), table in split_tables.items():
        counts.setdefault(config, {})[split] = table.num_rows
        sizes.setdefault(config, {})[split] = table.nbytes
        if table.num_rows == 0:
            continue  # datasets cannot read a Parquet file without rows: an empty split has no file
        shards = _shards(table, max_shard_rows)
        for i, shard in enumerate(shards):
            files.append((f"{config}/{split}-{i:05d}-of-{len(shards):05d}.parquet", shard))
    return counts, sizes, files, features


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
    tables: ReleaseTables,
    manifest_extra: Mapping[str, Any] | None = None,
    card_info: Mapping[str, Any] | None = None,
    target_uri: str | None = None,
    *,
    max_shard_rows: int = 50_000,
    storage_options: Mapping[str, Any] | None = None,
) -> PublishedRelease:
    """Write the next numbered release (or return the latest one if its content is identical).

    Args:
        store: the dataset's store; releases go to ``{store}/{dataset}/releases/`` by default.
        spec_name: the spec's name (the card's title unless ``card_info["pretty_name"]``).
        tables: the data (``ReleaseTables``).
        manifest_extra: run metadata added to the manifest and NOT hashed (flow run id, timings,
            ``spec_hash``/``gates`` if not in card_info). Secret-named keys are redacted.
        card_info: the card inputs, hashed with the data, so they must be deterministic for the
            same data: ``spec_hash``, ``gates`` (list of rows or mapping), ``judge`` (the judge spec),
            ``pairs_score``, ``binarize_rule``, ``license``, ``pretty_name``, ``description``,
            ``tags``, ``spec`` (a spec dump; secret-named keys are redacted).
        target_uri: another release root (a local folder or an fsspec URL such as ``s3://bucket/x``).
        max_shard_rows: rows per Parquet shard (``spec.publish.max_shard_rows``).
        storage_options: fsspec options for ``target_uri`` (default: the store's).
    """
    if max_shard_rows < 1:
        raise ValueError(f"max_shard_rows must be >= 1, got {max_shard_rows}")
    root = _root(store, target_uri, storage_options)
    card_inputs = scrub(dict(card_info or {}))
    extra = scrub(dict(manifest_extra or {}))
    aggregate = _aggregate_dict(tables.aggregate)
    judges = _judges(tables.scored)

    counts, sizes, files, features = _plan(tables, max_shard_rows)
    configs, infos = _configs(counts, sizes, features)
    hashed_inputs = {
        "spec_name": spec_name,
        "card_info": card_inputs,
        "aggregate": aggregate,
        "judges": judges,
    }
    inputs_hash = hashlib.sha256(
        json.dumps(hashed_inputs, sort_keys=True, default=str, ensure_ascii=False).encode()
    ).hexdigest()

    complete = _complete(root)
    latest_version, latest = complete[-1] if complete else (0, None)
    version = latest_version + 1
    existing = _versions(root)
    final = root.join(f"v{version}")
    dest = root.join(f".staging-v{version}-{uuid.uuid4().hex[:12]}") if root.local else final

    try:
        file_info = _write_files(files, root, dest if root.local else None)
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
            uploaded = _write_files(files, root, dest)
            if uploaded != file_info:
                raise RuntimeError("publish: Parquet output is not deterministic; refusing to publish")

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
            uri_hint=root.uri(f"v{version}"),
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


def _write_files(files: list[tuple[str, pa.Table]], root: _Root, dest: str | None) -> dict[str, dict[str, Any]]:
    """Serialise each data file and record its size and sha256; write it under ``dest`` unless None.

    With ``dest=None`` nothing is written: on an object store the hashes are computed first, so a
    rerun of a finished build uploads nothing at all.
    """
    info: dict[str, dict[str, Any]] = {}
    for relpath, table in files:
        data = _parquet_bytes(table)
        info[relpath] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if dest is not None:
            _put(root.fs, posixpath.join(dest, relpath), data, root.local)
    return info


def _content_hash(file_info: Mapping[str, Mapping[str, Any]], inputs_hash: str) -> str:
    files = {path: info["sha256"] for path, info in sorted(file_info.items())}
    blob = json.dumps({"files": files, "inputs": inputs_hash}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


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


# --------------------------------------------------------------------------- the Hub


def publish_to_hub(
    release_uri: str,
    repo_id: str,
    token: str | None = None,
    *,
    private: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    api: Any = None,
) -> str:
    """Upload a complete release folder to a Hub dataset repo and tag the commit ``v{N}``.

    Files of earlier releases that this one does not have (e.g. a shard count that shrank) are
    deleted in the same commit, so the card's ``data_files`` globs never pick up stale shards.
    ``token`` is passed to ``HfApi`` only (None: the ``HF_TOKEN`` environment/login); it is never
    logged or written. Returns the commit URL.
    """
    import tempfile

    import fsspec

    fs, path = fsspec.core.url_to_fs(release_uri, **dict(storage_options or {}))
    with fs.open(posixpath.join(path, MANIFEST), "rb") as handle:
        manifest = json.loads(handle.read())
    version = int(manifest["version"])
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="uf-hub-") as tmp:
        protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
        folder = path
        if protocol not in ("file", "local"):
            folder = os.path.join(tmp, f"v{version}")
            fs.get(path.rstrip("/") + "/", folder, recursive=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=folder,
            commit_message=f"Release v{version} ({str(manifest.get('content_hash', ''))[:12]})",
            delete_patterns=[f"{config}/*" for config in CONFIG_SPLITS],
        )
    api.create_tag(repo_id, tag=f"v{version}", repo_type="dataset", exist_ok=True)
    return str(getattr(commit, "commit_url", commit))
