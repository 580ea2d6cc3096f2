"""The Prefect task for the pairs stage, and readers of its outputs for the gates and publish.

The stage streams the scored shards (layout in ``tasks.pairs.shards``): for scored shard N it writes
``pairs/shard-N.parquet`` and the shard's binarized rows, so memory holds one shard of text. Only
the train/test split is global (the lowest-ranked ``n_test_rows(total)`` rows go to test); it is
decided from two key columns of every binarized row, then each shard's rows are written to
``binarized/{train_prefs,test_prefs}/shard-N.parquet``. The products are identical to the
whole-table functions (``build_pairs``, ``binarize``, ``split_binarized``) on all scored rows;
:func:`read_pairs` and :func:`read_binarized_splits` return them in that whole-table order.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.store import Store, arrow_schema, rows_table
from tasks.common import store_for
from tasks.pairs.pairs import binarize, build_pairs, split_test_ids
from tasks.pairs.shards import (
    BINARIZED,
    PAIRS,
    SPLITS,
    UNSPLIT,
    check_whole_instructions,
    iter_binarized,
    iter_pairs,
    iter_scored,
    read_columns,
    read_merged,
    remove_stale,
    shard_name,
    write_shard,
)
from ultrafeedback.records import Pair
from ultrafeedback.spec import Spec

DROPPED_JSON = f"{BINARIZED}/dropped.json"

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
    from tasks.publish.publish import binarized_features

    schema = binarized_features().arrow_schema
    return {
        split: read_merged(store, f"{BINARIZED}/{split}", ["instruction_id"], schema).to_pylist() for split in SPLITS
    }


def read_binarized(store: Store) -> list[dict[str, Any]]:
    """All binarized rows (every split), for the binarized gate."""
    return [row for rows in read_binarized_splits(store).values() for row in rows]


@task(name="pairs", cache_policy=NO_CACHE)
def pairs_task(spec: Spec) -> dict[str, Any]:
    """Build every non-tied pair and the binarized splits from the scored shards; store them."""
    from tasks.publish.publish import binarized_features

    store = store_for(spec)
    schema = binarized_features().arrow_schema
    rule = spec.binarize
    dropped: Counter[str] = Counter()
    n_pairs = 0
    keys: list[tuple[str, str]] = []  # (instruction_id, prompt_id) of every binarized row
    shards: list[int] = []
    instructions: list[tuple[int, pa.Array]] = []  # distinct instruction ids per shard
    for shard, scored in iter_scored(store):
        instructions.append((shard, pc.unique(scored.column("instruction_id"))))
        frame = scored.to_pandas()
        del scored
        pairs = build_pairs(frame, spec.pairs.score)
        write_shard(store, f"{PAIRS}/{shard_name(shard)}", rows_table(pairs, Pair))
        n_pairs += len(pairs)
        del pairs
        rows = pa.Table.from_pylist(binarize(frame, rule.rule, rule.seed, rule.exclude_sources, dropped), schema=schema)
        write_shard(store, f"{UNSPLIT}/{shard_name(shard)}", rows)
        keys.extend(zip(rows.column("instruction_id").to_pylist(), rows.column("prompt_id").to_pylist(), strict=True))
        shards.append(shard)
    check_whole_instructions(instructions)
    del instructions

    test_ids = pa.array(sorted(split_test_ids(keys, rule.test_size, rule.seed)), type=pa.string())
    splits = dict.fromkeys(SPLITS, 0)
    for shard in shards:
        rows = read_columns(store, f"{UNSPLIT}/{shard_name(shard)}").cast(schema)
        in_test = pc.is_in(rows.column("instruction_id"), value_set=test_ids)
        for split, mask in (("train_prefs", pc.invert(in_test)), ("test_prefs", in_test)):
            part = rows.filter(mask)
            write_shard(store, f"{BINARIZED}/{split}/{shard_name(shard)}", part)
            splits[split] += part.num_rows

    names = [shard_name(shard) for shard in shards]
    remove_stale(store, PAIRS, names)
    for split in SPLITS:
        remove_stale(store, f"{BINARIZED}/{split}", names)
    remove_stale(store, BINARIZED, [*SPLITS, DROPPED_JSON.rsplit("/", 1)[1]])  # scratch, older layouts
    store.write_json(DROPPED_JSON, dict(sorted(dropped.items())))
    return {
        "pairs": n_pairs,
        "binarized": len(keys),
        "splits": splits,
        "binarize_dropped": dict(sorted(dropped.items())),
    }
