"""The Prefect task for the pairs stage, and readers of its outputs for the gates and publish.

The stage streams the scored shards (layout in ``tasks.pairs.shards``): for scored shard N it writes
``pairs/shard-N.parquet`` and the shard's binarized rows, so memory holds one shard of text. Only
the train/test split is global (``assign_splits``: the prompts earlier releases placed keep their
split, the others fill the test target by rank); it is decided from two key columns of every
binarized row and the earlier releases' ``prompt_id`` columns, then each shard's rows are written
to ``binarized/{train_prefs,test_prefs,test_sft}/shard-N.parquet``. The products are identical to
the whole-table functions (``build_pairs``, ``binarize``, ``split_binarized``) on all scored rows;
:func:`read_pairs` and :func:`read_binarized_splits` return them in that whole-table order.

The shards to build are built one after the other in the flow's process, or, with
``execution.dask_address``, as one Dask task each (``_build_shard``: the worker reads the scored
shard and writes its products to the store; counts and keys come back).

With ``binarize.decontaminate_sources``, ingest records the normalised questions of those sources
(``ingest/benchmark_questions.json``, every record read); ``binarize`` drops the other sources'
instructions equal to one of them and this stage lists each in ``binarized/contaminated.json``.

Each file records in its footer the fingerprint of what it was computed from (the scored shard's
recorded fingerprint, the rules, :data:`PAIRS_CODE`; for split files also the shard's test rows),
so a rerun rebuilds only changed shards, rewrites split files only where the split moved a row, and
the gates can reuse their results for unchanged files.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from prefect.cache_policies import NO_CACHE

from ultrafeedback.infra.store import FINGERPRINT_META, Store, arrow_schema, rows_table
from ultrafeedback.records import Pair
from ultrafeedback.spec import Spec
from ultrafeedback.tasks.common import store_for
from ultrafeedback.tasks.ingest.task import BENCHMARK_JSON
from ultrafeedback.tasks.pairs.pairs import assign_splits, binarize, build_pairs, gen_messages
from ultrafeedback.tasks.pairs.shards import (
    BINARIZED,
    PAIRS,
    SPLITS,
    STORED_SPLITS,
    UNSPLIT,
    ScoredShard,
    check_whole_instructions,
    file_sha256,
    footer_metadata,
    iter_binarized,
    iter_pairs,
    num_rows,
    read_columns,
    read_merged,
    remove_stale,
    scored_shards,
    shard_name,
    write_shard_file,
)
from ultrafeedback.tasks.stages import fingerprint

DROPPED_JSON = f"{BINARIZED}/dropped.json"
CONTAMINATED_JSON = f"{BINARIZED}/contaminated.json"
PAIRS_CODE = 2
"""The version of this stage's output for the same scored rows and rules, part of each shard's
fingerprint: bump it when ``build_pairs``, ``binarize`` or the files they are written to change."""
DROPPED_META = b"ultrafeedback.binarize_dropped"
"""Pair files' footer: the shard's instructions ``binarize`` left out, by reason (JSON)."""
CONTAMINATED_META = b"ultrafeedback.binarize_contaminated"
"""Pair files' footer: the shard's instructions dropped as benchmark matches (JSON list)."""
INPUTS_META = b"ultrafeedback.pairs_fingerprint"
"""Split files' footer: the fingerprint of the pair build they were split from."""

__all__ = [
    "BINARIZED",
    "PAIRS",
    "iter_binarized",
    "iter_pairs",
    "pairs_task",
    "read_binarized",
    "read_binarized_splits",
    "read_pairs",
]


def read_pairs(store: Store) -> pd.DataFrame:
    """The stored pairs as one DataFrame with the Pair columns, in ``build_pairs`` order. It holds
    every pair: for small data; large readers use :func:`iter_pairs`."""
    return read_merged(store, PAIRS, ["instruction_id"], arrow_schema(Pair)).to_pandas()


def read_binarized_splits(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Split name -> binarized rows (chat messages as lists of dicts) for the six H4 splits, in
    ``split_binarized`` order. For small data; large readers use :func:`iter_binarized`."""
    from ultrafeedback.tasks.publish.features import binarized_features

    schema = binarized_features().arrow_schema
    stored = {
        split: read_merged(store, f"{BINARIZED}/{split}", ["instruction_id"], schema).to_pylist()
        for split in STORED_SPLITS
    }
    return {
        "train_prefs": stored["train_prefs"],
        "test_prefs": stored["test_prefs"],
        "train_sft": list(stored["train_prefs"]),
        "test_sft": stored["test_sft"],
        "train_gen": [{**row, "messages": gen_messages(row["messages"])} for row in stored["train_prefs"]],
        "test_gen": [{**row, "messages": gen_messages(row["messages"])} for row in stored["test_sft"]],
    }


def read_binarized(store: Store) -> list[dict[str, Any]]:
    """Every binarized row once (``train_prefs`` and ``test_prefs``), for the binarized gate."""
    splits = read_binarized_splits(store)
    return [row for split in SPLITS for row in splits[split]]


def benchmark_questions(store: Store, spec: Spec) -> dict[str, str]:
    """Normalised question -> its source, for the spec's ``binarize.decontaminate_sources`` (from
    what ingest recorded; empty when the spec names none)."""
    wanted = spec.binarize.decontaminate_sources
    if not wanted:
        return {}
    recorded = store.read_json(BENCHMARK_JSON, {}) or {}
    missing = [name for name in wanted if name not in recorded]
    if missing:
        raise ValueError(
            f"binarize.decontaminate_sources: ingest recorded no questions for {missing}; run ingest again "
            f"(a build does) so that {BENCHMARK_JSON} lists them"
        )
    questions: dict[str, str] = {}
    for name in wanted:
        for text in recorded[name]:
            questions.setdefault(text, name)
    return questions


def _fingerprint(store: Store, shard: ScoredShard, spec: Spec, benchmark: str) -> str:
    """What a shard's pairs and binarized rows are a function of: the scored shard (the fingerprint
    recorded in its footer, else its bytes), the pair and binarize rules, the completion order, the
    benchmark questions (their digest) and this stage's code."""
    scored = None if shard.legacy else store.fingerprint(shard.files[0])
    rule = spec.binarize
    return fingerprint(
        "pairs",
        scored or [file_sha256(store, relpath) for relpath in shard.files],
        spec.pairs.score,
        rule.rule,
        rule.seed,
        sorted(rule.exclude_sources),
        spec.completion_order,
        benchmark,
        PAIRS_CODE,
    )


@task(name="pairs", cache_policy=NO_CACHE)
def pairs_task(spec: Spec) -> dict[str, Any]:
    """Build every non-tied pair and the binarized splits from the scored shards; store them.

    A shard whose inputs are unchanged (its fingerprint is in its stored files) is not rebuilt: its
    pair count, drop counts and binarized keys come from footers and key columns. Its split files are
    rewritten only when the global split moved one of its rows.
    """
    from ultrafeedback.tasks.publish.features import binarized_features
    from ultrafeedback.tasks.publish.history import split_history

    store = store_for(spec)
    schema = binarized_features().arrow_schema
    rule = spec.binarize
    questions = benchmark_questions(store, spec)
    benchmark = fingerprint("benchmark", sorted(questions.items())) if questions else ""
    split_folders = [f"{BINARIZED}/{s}" for s in STORED_SPLITS]
    stored = {folder: set(store.ls(folder)) for folder in (PAIRS, *split_folders)}

    def footer(folder: str, name: str) -> dict[bytes, bytes]:
        return footer_metadata(store, f"{folder}/{name}") if name in stored[folder] else {}

    dropped: Counter[str] = Counter()
    contaminated: list[dict[str, str]] = []
    n_pairs = 0
    built: list[tuple[int, str, list[dict[bytes, bytes]] | None]] = []  # (shard, fingerprint, split footers)
    rebuild: list[tuple[ScoredShard, str]] = []  # (shard, fingerprint) of the shards to build
    keys: dict[int, list[tuple[str, str]]] = {}  # shard -> (instruction_id, prompt_id) of its binarized rows
    instructions: list[tuple[int, pa.Array]] = []  # distinct instruction ids per shard
    for shard in scored_shards(store):
        name, digest = shard_name(shard.shard), _fingerprint(store, shard, spec, benchmark)
        pairs_meta = footer(PAIRS, name)
        split_metas = [footer(folder, name) for folder in split_folders]
        if pairs_meta.get(FINGERPRINT_META) == digest.encode() and all(
            meta.get(INPUTS_META) == digest.encode() for meta in split_metas
        ):
            instructions.append((shard.shard, pc.unique(shard.read(store, ["instruction_id"]).column(0))))
            n_pairs += num_rows(store, f"{PAIRS}/{name}")
            dropped.update(json.loads(pairs_meta[DROPPED_META]))
            contaminated += json.loads(pairs_meta.get(CONTAMINATED_META, b"[]"))
            split_keys = [
                read_columns(store, f"{BINARIZED}/{s}/{name}", ["instruction_id", "prompt_id"]) for s in SPLITS
            ]
            keys[shard.shard] = _keys(pa.concat_tables(split_keys))
            built.append((shard.shard, digest, split_metas))
            continue
        rebuild.append((shard, digest))
    for shard, digest, done in _build_shards(spec, rebuild, questions):
        instructions.append((shard.shard, done.instructions))
        n_pairs += done.pairs
        dropped.update(done.dropped)
        contaminated += done.contaminated
        keys[shard.shard] = done.keys
        built.append((shard.shard, digest, None))
    built.sort(key=lambda item: item[0])
    instructions.sort(key=lambda item: item[0])
    keys = dict(sorted(keys.items()))
    check_whole_instructions(instructions)
    del instructions

    history = split_history(store)
    every_key = (key for shard_keys in keys.values() for key in shard_keys)
    test_ids, sft_ids = assign_splits(every_key, rule.test_size, rule.seed, history)
    splits = dict.fromkeys(STORED_SPLITS, 0)
    for shard, digest, split_metas in built:
        name = shard_name(shard)
        in_test = sorted(iid for iid, _ in keys[shard] if iid in test_ids)
        in_sft = [iid for iid in in_test if iid in sft_ids]
        splits["test_prefs"] += len(in_test)
        splits["test_sft"] += len(in_sft)
        splits["train_prefs"] += len(keys[shard]) - len(in_test)
        split_digest = fingerprint("binarized", digest, in_test, in_sft)
        paths = [f"{folder}/{name}" for folder in split_folders]
        if split_metas is None:  # rebuilt
            rows = read_columns(store, f"{UNSPLIT}/{name}")
        elif all(meta.get(FINGERPRINT_META) == split_digest.encode() for meta in split_metas):
            continue  # unchanged rows, and the split moved none of them
        else:  # unchanged rows, split anew: put back together in instruction-id order
            rows = pa.concat_tables([read_columns(store, path) for path in paths[:2]]).sort_by("instruction_id")
        rows = rows.cast(schema)
        ids = rows.column("instruction_id")
        test_mask = pc.is_in(ids, value_set=pa.array(in_test, type=pa.string()))
        sft_mask = pc.is_in(ids, value_set=pa.array(in_sft, type=pa.string()))
        meta = {FINGERPRINT_META: split_digest, INPUTS_META: digest}
        write_shard_file(store, paths[0], rows.filter(pc.invert(test_mask)), meta)
        write_shard_file(store, paths[1], rows.filter(test_mask), meta)
        write_shard_file(store, paths[2], rows.filter(sft_mask), meta)

    names = [shard_name(shard) for shard, _, _ in built]
    remove_stale(store, PAIRS, names)
    for folder in split_folders:
        remove_stale(store, folder, names)
    keep = [*STORED_SPLITS, *(path.rsplit("/", 1)[1] for path in (DROPPED_JSON, CONTAMINATED_JSON))]
    remove_stale(store, BINARIZED, keep)  # scratch, older layouts
    store.write_json(DROPPED_JSON, dict(sorted(dropped.items())))
    contaminated.sort(key=lambda row: (row["source"], row["instruction_id"]))
    store.write_json(CONTAMINATED_JSON, contaminated)
    return {
        "pairs": n_pairs,
        "binarized": splits["train_prefs"] + splits["test_prefs"],
        "splits": h4_split_counts(splits["train_prefs"], splits["test_prefs"], splits["test_sft"]),
        "binarize_dropped": dict(sorted(dropped.items())),
        "contaminated": len(contaminated),
    }


@dataclass(frozen=True)
class _Built:
    """What the stage keeps of one built shard (its rows are in the store)."""

    pairs: int
    dropped: dict[str, int]
    contaminated: list[dict[str, str]]
    keys: list[tuple[str, str]]
    """(instruction_id, prompt_id) of its binarized rows"""
    instructions: pa.Array
    """its distinct instruction ids"""


def _build_shard(spec: Spec, shard: ScoredShard, digest: str, questions: dict[str, str]) -> _Built:
    """Build one scored shard's pairs and (unsplit) binarized rows and write them to the store; runs
    in the flow's process or on a Dask worker (``execution.dask_address``), which opens the store
    from the spec."""
    from ultrafeedback.tasks.publish.features import binarized_features

    store = store_for(spec)
    rule = spec.binarize
    name = shard_name(shard.shard)
    scored = shard.read(store)
    instructions = pc.unique(scored.column("instruction_id"))
    frame = scored.to_pandas()
    del scored
    pairs = build_pairs(frame, spec.pairs.score, spec.completion_order)
    dropped: Counter[str] = Counter()
    contaminated: list[dict[str, str]] = []
    rows = binarize(
        frame,
        rule.rule,
        rule.seed,
        rule.exclude_sources,
        dropped,
        order=spec.completion_order,
        benchmark=questions,
        dropped_rows=contaminated,
    )
    meta = {
        FINGERPRINT_META: digest,
        DROPPED_META: json.dumps(dict(sorted(dropped.items()))),
        CONTAMINATED_META: json.dumps(contaminated),
    }
    write_shard_file(store, f"{PAIRS}/{name}", rows_table(pairs, Pair), meta)
    n_pairs = len(pairs)
    del pairs, frame
    table = pa.Table.from_pylist(rows, schema=binarized_features().arrow_schema)
    write_shard_file(store, f"{UNSPLIT}/{name}", table)
    return _Built(n_pairs, dict(dropped), contaminated, _keys(table), instructions)


def _build_shards(
    spec: Spec, shards: list[tuple[ScoredShard, str]], questions: dict[str, str]
) -> Iterator[tuple[ScoredShard, str, _Built]]:
    """Build ``shards`` one after the other here, or all at once on the Dask cluster the spec names
    (each worker reads its scored shard and writes its products to the store; only the counts and
    keys come back)."""
    if not shards:
        return
    if not spec.execution.dask_address:
        for shard, digest in shards:
            yield shard, digest, _build_shard(spec, shard, digest, questions)
        return
    from ultrafeedback.infra.dask_cluster import dask_client

    with dask_client(spec.execution.dask_address) as client:
        scattered = client.scatter(questions, broadcast=True) if questions else questions
        futures = [
            client.submit(
                _build_shard, spec, shard, digest, scattered, key=f"pairs-{shard.shard}-{digest[:16]}", pure=False
            )
            for shard, digest in shards
        ]
        for (shard, digest), done in zip(shards, client.gather(futures), strict=True):
            yield shard, digest, done


def h4_split_counts(train: int, test: int, sft: int) -> dict[str, int]:
    """The six H4 splits' row counts from the stored ones (``train_sft`` and ``train_gen`` are
    ``train_prefs``'s rows, ``test_gen`` is ``test_sft``'s)."""
    return {
        "train_prefs": train,
        "test_prefs": test,
        "train_sft": train,
        "test_sft": sft,
        "train_gen": train,
        "test_gen": sft,
    }


def _keys(table: pa.Table) -> list[tuple[str, str]]:
    return list(zip(table.column("instruction_id").to_pylist(), table.column("prompt_id").to_pylist(), strict=True))
