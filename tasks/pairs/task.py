"""The Prefect task for the pairs stage, and readers of its outputs for the gates and publish.

The stage streams the scored shards (layout in ``tasks.pairs.shards``): for scored shard N it writes
``pairs/shard-N.parquet`` and the shard's binarized rows, so memory holds one shard of text. Only
the train/test split is global (the lowest-ranked ``n_test_rows(total)`` rows go to test); it is
decided from two key columns of every binarized row, then each shard's rows are written to
``binarized/{train_prefs,test_prefs}/shard-N.parquet``. The products are identical to the
whole-table functions (``build_pairs``, ``binarize``, ``split_binarized``) on all scored rows;
:func:`read_pairs` and :func:`read_binarized_splits` return them in that whole-table order.

Each file records in its footer the fingerprint of what it was computed from (the scored shard's
recorded fingerprint, the rules, :data:`PAIRS_CODE`; for split files also the shard's test rows),
so a rerun rebuilds only changed shards, rewrites split files only where the split moved a row, and
the gates can reuse their results for unchanged files.
"""

from __future__ import annotations

import json
from collections import Counter
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
from ultrafeedback.tasks.pairs.pairs import binarize, build_pairs, split_test_ids
from ultrafeedback.tasks.pairs.shards import (
    BINARIZED,
    PAIRS,
    SPLITS,
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
PAIRS_CODE = 1
"""The version of this stage's output for the same scored rows and rules, part of each shard's
fingerprint: bump it when ``build_pairs``, ``binarize`` or the files they are written to change."""
DROPPED_META = b"ultrafeedback.binarize_dropped"
"""Pair files' footer: the shard's instructions ``binarize`` left out, by reason (JSON)."""
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
    """Split name -> binarized rows (chat messages as lists of dicts), in ``split_binarized`` order.
    For small data; large readers use :func:`iter_binarized`."""
    from ultrafeedback.tasks.publish.features import binarized_features

    schema = binarized_features().arrow_schema
    return {
        split: read_merged(store, f"{BINARIZED}/{split}", ["instruction_id"], schema).to_pylist() for split in SPLITS
    }


def read_binarized(store: Store) -> list[dict[str, Any]]:
    """All binarized rows (every split), for the binarized gate."""
    return [row for rows in read_binarized_splits(store).values() for row in rows]


def _fingerprint(store: Store, shard: ScoredShard, spec: Spec) -> str:
    """What a shard's pairs and binarized rows are a function of: the scored shard (the fingerprint
    recorded in its footer, else its bytes), the pair and binarize rules, and this stage's code."""
    scored = None if shard.legacy else store.fingerprint(shard.files[0])
    rule = spec.binarize
    return fingerprint(
        "pairs",
        scored or [file_sha256(store, relpath) for relpath in shard.files],
        spec.pairs.score,
        rule.rule,
        rule.seed,
        sorted(rule.exclude_sources),
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

    store = store_for(spec)
    schema = binarized_features().arrow_schema
    rule = spec.binarize
    stored = {folder: set(store.ls(folder)) for folder in (PAIRS, *(f"{BINARIZED}/{s}" for s in SPLITS))}

    def footer(folder: str, name: str) -> dict[bytes, bytes]:
        return footer_metadata(store, f"{folder}/{name}") if name in stored[folder] else {}

    dropped: Counter[str] = Counter()
    n_pairs = 0
    built: list[tuple[int, str, list[dict[bytes, bytes]] | None]] = []  # (shard, fingerprint, split footers)
    keys: dict[int, list[tuple[str, str]]] = {}  # shard -> (instruction_id, prompt_id) of its binarized rows
    instructions: list[tuple[int, pa.Array]] = []  # distinct instruction ids per shard
    for shard in scored_shards(store):
        name, digest = shard_name(shard.shard), _fingerprint(store, shard, spec)
        pairs_meta = footer(PAIRS, name)
        split_metas = [footer(f"{BINARIZED}/{split}", name) for split in SPLITS]
        if pairs_meta.get(FINGERPRINT_META) == digest.encode() and all(
            meta.get(INPUTS_META) == digest.encode() for meta in split_metas
        ):
            instructions.append((shard.shard, pc.unique(shard.read(store, ["instruction_id"]).column(0))))
            n_pairs += num_rows(store, f"{PAIRS}/{name}")
            dropped.update(json.loads(pairs_meta[DROPPED_META]))
            split_keys = [
                read_columns(store, f"{BINARIZED}/{s}/{name}", ["instruction_id", "prompt_id"]) for s in SPLITS
            ]
            keys[shard.shard] = _keys(pa.concat_tables(split_keys))
            built.append((shard.shard, digest, split_metas))
            continue
        scored = shard.read(store)
        instructions.append((shard.shard, pc.unique(scored.column("instruction_id"))))
        frame = scored.to_pandas()
        del scored
        pairs = build_pairs(frame, spec.pairs.score)
        shard_dropped: Counter[str] = Counter()
        rows = binarize(frame, rule.rule, rule.seed, rule.exclude_sources, shard_dropped)
        meta = {FINGERPRINT_META: digest, DROPPED_META: json.dumps(dict(sorted(shard_dropped.items())))}
        write_shard_file(store, f"{PAIRS}/{name}", rows_table(pairs, Pair), meta)
        n_pairs += len(pairs)
        dropped.update(shard_dropped)
        del pairs, frame
        table = pa.Table.from_pylist(rows, schema=schema)
        write_shard_file(store, f"{UNSPLIT}/{name}", table)
        keys[shard.shard] = _keys(table)
        built.append((shard.shard, digest, None))
    check_whole_instructions(instructions)
    del instructions

    test_ids = split_test_ids((key for shard_keys in keys.values() for key in shard_keys), rule.test_size, rule.seed)
    splits = dict.fromkeys(SPLITS, 0)
    for shard, digest, split_metas in built:
        name = shard_name(shard)
        in_test = sorted(iid for iid, _ in keys[shard] if iid in test_ids)
        splits["test_prefs"] += len(in_test)
        splits["train_prefs"] += len(keys[shard]) - len(in_test)
        split_digest = fingerprint("binarized", digest, in_test)
        paths = [f"{BINARIZED}/{split}/{name}" for split in SPLITS]
        if split_metas is None:  # rebuilt
            rows = read_columns(store, f"{UNSPLIT}/{name}")
        elif all(meta.get(FINGERPRINT_META) == split_digest.encode() for meta in split_metas):
            continue  # unchanged rows, and the split moved none of them
        else:  # unchanged rows, split anew: put back together in instruction-id order
            rows = pa.concat_tables([read_columns(store, path) for path in paths]).sort_by("instruction_id")
        rows = rows.cast(schema)
        mask = pc.is_in(rows.column("instruction_id"), value_set=pa.array(in_test, type=pa.string()))
        meta = {FINGERPRINT_META: split_digest, INPUTS_META: digest}
        write_shard_file(store, paths[0], rows.filter(pc.invert(mask)), meta)
        write_shard_file(store, paths[1], rows.filter(mask), meta)

    names = [shard_name(shard) for shard, _, _ in built]
    remove_stale(store, PAIRS, names)
    for split in SPLITS:
        remove_stale(store, f"{BINARIZED}/{split}", names)
    remove_stale(store, BINARIZED, [*SPLITS, DROPPED_JSON.rsplit("/", 1)[1]])  # scratch, older layouts
    store.write_json(DROPPED_JSON, dict(sorted(dropped.items())))
    return {
        "pairs": n_pairs,
        "binarized": sum(splits.values()),
        "splits": splits,
        "binarize_dropped": dict(sorted(dropped.items())),
    }


def _keys(table: pa.Table) -> list[tuple[str, str]]:
    return list(zip(table.column("instruction_id").to_pylist(), table.column("prompt_id").to_pylist(), strict=True))
