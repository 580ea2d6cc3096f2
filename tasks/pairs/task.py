"""The Prefect task for the pairs stage, and readers of its outputs for the gates and publish.

Store layout: ``pairs/`` holds the Pair records (one part, replaced on each run: pairs are a pure
function of the scored table), ``binarized/{train_prefs,test_prefs}.parquet`` the binarized splits.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.store import Store
from tasks.common import read_scored, store_for
from tasks.pairs.pairs import SPLITS, binarize, build_pairs, split_binarized
from ultrafeedback.records import Pair
from ultrafeedback.spec import Spec

PAIRS = "pairs"
BINARIZED = "binarized"


def read_pairs(store: Store) -> pd.DataFrame:
    """The stored pairs as a DataFrame with the Pair columns."""
    return store.results(PAIRS, Pair, key="pair_id").read().to_pandas()


def read_binarized_splits(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Split name -> binarized rows (chat messages as lists of dicts)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        path = f"{BINARIZED}/{split}.parquet"
        out[split] = store.read_table(path).to_pylist() if store.exists(path) else []
    return out


def read_binarized(store: Store) -> list[dict[str, Any]]:
    """All binarized rows (every split), for the binarized gate."""
    return [row for rows in read_binarized_splits(store).values() for row in rows]


@task(name="pairs", cache_policy=NO_CACHE)
def pairs_task(spec: Spec) -> dict[str, Any]:
    """Build every non-tied pair and the binarized splits from the scored table; store them."""
    from tasks.publish.publish import binarized_features

    store = store_for(spec)
    scored = read_scored(store)
    pairs = build_pairs(scored, spec.pairs.score)
    store.results(PAIRS, Pair, key="pair_id").replace(pairs)
    dropped: Counter[str] = Counter()
    rows = binarize(scored, spec.binarize.rule, spec.binarize.seed, spec.binarize.exclude_sources, dropped)
    splits = split_binarized(rows, spec.binarize.test_size, spec.binarize.seed)
    schema = binarized_features().arrow_schema
    for split, split_rows in splits.items():
        store.write_table(f"{BINARIZED}/{split}.parquet", pa.Table.from_pylist(split_rows, schema=schema))
    store.write_json(f"{BINARIZED}/dropped.json", dict(sorted(dropped.items())))
    return {
        "pairs": len(pairs),
        "binarized": len(rows),
        "splits": {split: len(split_rows) for split, split_rows in splits.items()},
        "binarize_dropped": dict(sorted(dropped.items())),
    }
