"""The changelog's counts recomputed from two releases' data, row by row (for the tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ultrafeedback.tasks.publish.changelog import KEYS


def read_split(folder: Path, config: str, split: str) -> list[dict[str, Any]]:
    """A release's rows of one config and split, as Python dicts."""
    files = sorted(Path(folder).glob(f"{config}/{split}-*.parquet"))
    return [row for path in files for row in pq.read_table(path).to_pylist()]


def counted_changes(old: list[dict[str, Any]], new: list[dict[str, Any]], config: str) -> dict[str, int]:
    """added / removed / changed / unchanged between two lists of rows, by the config's key."""
    key = KEYS[config][0]
    before = {row[key]: row for row in old}
    after = {row[key]: row for row in new}
    common = before.keys() & after.keys()
    changed = sum(1 for k in common if before[k] != after[k])
    return {
        "added": len(after.keys() - before.keys()),
        "removed": len(before.keys() - after.keys()),
        "changed": changed,
        "unchanged": len(common) - changed,
    }


def check_changelog(parent: Path, release: Path, manifest: dict[str, Any]) -> None:
    """Every config and split of ``release``: the manifest's changelog counts equal the data's, and
    the reasons of each kind add up to its count."""
    for config, splits in manifest["counts"].items():
        for split in splits:
            entry = manifest["changes"]["configs"][config][split]
            counted = counted_changes(read_split(parent, config, split), read_split(release, config, split), config)
            assert {k: entry[k] for k in counted} == counted, (config, split, entry, counted)
            for kind in ("added", "removed", "changed"):
                assert sum(entry["reasons"][kind].values()) == entry[kind], (config, split, kind, entry)
