"""What changed from a release's parent: rows added, removed and changed per config and split,
with the reasons.

Rows are matched by their key (``completions``: ``id``, the instruction; ``pairs``: ``pair_id``;
``binarized``: ``prompt_id``) and compared by a 64-bit digest of the whole row (every column,
nested values element by element, list order included), so "changed" means any value differs.

Reasons are decided per instruction, from the ``completions`` config, and inherited by that
instruction's pairs and binarized rows:

* ``new_instruction``: the instruction is not in the parent;
* a removal reason for an instruction the parent had (``quota_reduced``, ``contaminated``,
  ``duplicate_of``, ``near_duplicate_of``, ``missing_from_source``, ``not_scored``, ...: given by the
  caller, who knows why ingest left it out);
* for an instruction in both, the first that applies: ``new_model`` (a model joined or left its
  completions), ``regenerated`` (a model's response text, principle or system prompt changed),
  ``re_judged`` (the same responses got other ratings, rationales, critique or scores), ``other``
  (anything else: the completion order, the answer lists).

A pair or binarized row whose instruction is unchanged gets ``rules_changed`` (the pair or binarize
rules, their seed or the completion order changed), or ``moved_split`` (a binarized prompt that the
parent had in the other split of the same kind: never expected, shown if it happens); a whole
split the parent did not have gets ``new_split``.

Digests are computed as the tables stream through the release writer (:class:`Digests`) and from
the parent's files read a row group at a time, so memory holds keys and digests, never text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

KEYS: dict[str, tuple[str, str]] = {
    "completions": ("id", "id"),
    "pairs": ("pair_id", "instruction_id"),
    "binarized": ("prompt_id", "instruction_id"),
}
"""config -> (row key column, instruction id column)."""

GENERATION_FIELDS = ("principle", "custom_system_prompt", "response")
JUDGEMENT_FIELDS = ("annotations", "critique", "overall_score", "fine-grained_score", "judge_model", "judge_kind")

NEW_INSTRUCTION, NEW_MODEL, REGENERATED, RE_JUDGED, OTHER = (
    "new_instruction",
    "new_model",
    "regenerated",
    "re_judged",
    "other",
)
RULES_CHANGED, MOVED_SPLIT, NEW_SPLIT, NOT_IN_BUILD = "rules_changed", "moved_split", "new_split", "not_in_build"

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
_NULL = np.uint64(0x9E3779B97F4A7C15)
_STEP = np.uint64(0x100000001B3)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise (uint64, wrapping)."""
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64, copy=True)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _combine(h: np.ndarray, part: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return _mix(h * _STEP + part)


def value_digests(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A uint64 digest per element of an Arrow array of any type (nested ones element by element,
    list order included; null differs from every value)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    kind = array.type
    n = len(array)
    if pa.types.is_struct(kind):
        digest = np.full(n, np.uint64(len(kind)), dtype=np.uint64)
        for child in array.flatten():
            digest = _combine(digest, value_digests(child))
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        lengths = pc.list_value_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        inner = value_digests(array.flatten())
        position = np.arange(len(inner), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        with np.errstate(over="ignore"):
            weighted = _mix(inner + position.astype(np.uint64) * _STEP)
            sums = np.concatenate([[np.uint64(0)], np.cumsum(weighted, dtype=np.uint64)])
            ends = np.cumsum(lengths)
            total = sums[ends] - sums[ends - lengths]
        digest = _combine(total, lengths.astype(np.uint64) + np.uint64(1))
    elif pa.types.is_floating(kind):
        values = array.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
        digest = _mix(np.ascontiguousarray(values).view(np.uint64))
    elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        digest = _mix(array.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False).astype(np.uint64))
    else:
        values = array.cast(pa.string()).to_numpy(zero_copy_only=False)
        digest = pd.util.hash_array(values.astype(object), categorize=False).astype(np.uint64)
    if array.null_count:
        nulls = array.is_null().to_numpy(zero_copy_only=False)
        digest = np.where(nulls, _NULL, digest)
    return digest.astype(np.uint64, copy=False)


def row_digests(table: pa.Table) -> np.ndarray:
    """A uint64 digest of each row over every column, in schema order."""
    digest = np.full(table.num_rows, np.uint64(table.num_columns), dtype=np.uint64)
    for column in table.columns:
        digest = _combine(digest, value_digests(column))
    return digest


class Digests:
    """Keys and row digests of one release, per config and split, collected a table at a time;
    for ``completions`` also a digest per completion of its generation and of its judgement."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], list[pd.DataFrame]] = {}
        self._completions: list[pd.DataFrame] = []

    def add(self, config: str, split: str, table: pa.Table) -> None:
        key, instruction = KEYS[config]
        frame = pd.DataFrame(
            {
                "key": table.column(key).to_numpy(zero_copy_only=False).astype(object),
                "instruction_id": table.column(instruction).to_numpy(zero_copy_only=False).astype(object),
                "digest": row_digests(table),
            }
        )
        self._rows.setdefault((config, split), []).append(frame)
        if config == "completions":
            self._completions.append(_completion_digests(table))

    def observer(self, config: str, split: str) -> Callable[[pa.Table], None]:
        return lambda table: self.add(config, split, table)

    def splits(self) -> list[tuple[str, str]]:
        return list(self._rows)

    def rows(self, config: str, split: str) -> pd.DataFrame | None:
        frames = self._rows.get((config, split))
        if frames is None:
            return None
        return pd.concat(frames, ignore_index=True)

    def completions(self) -> pd.DataFrame:
        if not self._completions:
            return pd.DataFrame({"id": [], "model": [], "generation": [], "judgement": []})
        return pd.concat(self._completions, ignore_index=True)


def _completion_digests(table: pa.Table) -> pd.DataFrame:
    """(id, model, generation digest, judgement digest) of every completion of a completions table."""
    column = table.column("completions").combine_chunks()
    values = column.flatten()
    parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
    names = [field.name for field in values.type]
    children = dict(zip(names, values.flatten(), strict=True))

    def digest(fields: Iterable[str]) -> np.ndarray:
        out = np.zeros(len(values), dtype=np.uint64)
        for name in fields:
            out = _combine(out, value_digests(children[name]))
        return out

    ids = table.column("id").to_numpy(zero_copy_only=False).astype(object)
    return pd.DataFrame(
        {
            "id": ids[parents] if len(parents) else np.array([], dtype=object),
            "model": children["model"].to_numpy(zero_copy_only=False).astype(object),
            "generation": digest(GENERATION_FIELDS),
            "judgement": digest(JUDGEMENT_FIELDS),
        }
    )


def _instruction_reasons(parent: Digests, new: Digests, changed: Collection[str]) -> dict[str, str]:
    """Why each instruction of ``changed`` (in both releases, row changed) changed."""
    if not changed:
        return {}
    old = parent.completions()
    cur = new.completions()
    old = old[old["id"].isin(changed)]
    cur = cur[cur["id"].isin(changed)]
    both = old.merge(cur, on=["id", "model"], how="outer", suffixes=("_old", "_new"), indicator=True)
    models = set(both.loc[both["_merge"] != "both", "id"])
    matched = both[both["_merge"] == "both"]
    regenerated = set(matched.loc[matched["generation_old"] != matched["generation_new"], "id"])
    rejudged = set(matched.loc[matched["judgement_old"] != matched["judgement_new"], "id"])
    reasons = {}
    for ident in changed:
        if ident in models:
            reasons[ident] = NEW_MODEL
        elif ident in regenerated:
            reasons[ident] = REGENERATED
        elif ident in rejudged:
            reasons[ident] = RE_JUDGED
        else:
            reasons[ident] = OTHER
    return reasons


def _other_split(split: str) -> str | None:
    if split.startswith("train_"):
        return "test_" + split.removeprefix("train_")
    if split.startswith("test_"):
        return "train_" + split.removeprefix("test_")
    return None


def diff_releases(
    parent: Digests,
    new: Digests,
    explain_removed: Callable[[Collection[str]], Mapping[str, str]] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """config -> split -> ``{added, removed, changed, unchanged, reasons: {added, removed, changed}}``
    (each reasons entry: reason -> rows), for every split of ``new``."""
    instruction: dict[str, str] = {}
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for config, split in new.splits():  # in the order the release wrote them: completions first
        cur = new.rows(config, split)
        old = parent.rows(config, split)
        entry: dict[str, Any]
        if old is None:
            entry = {"added": len(cur), "removed": 0, "changed": 0, "unchanged": 0}
            entry["reasons"] = {"added": {NEW_SPLIT: len(cur)} if len(cur) else {}, "removed": {}, "changed": {}}
            result.setdefault(config, {})[split] = entry
            continue
        both = old.merge(cur, on="key", how="outer", suffixes=("_old", "_new"), indicator=True)
        added = both[both["_merge"] == "right_only"]
        removed = both[both["_merge"] == "left_only"]
        common = both[both["_merge"] == "both"]
        changed = common[common["digest_old"] != common["digest_new"]]
        if config == "completions":
            instruction.update(dict.fromkeys(added["key"], NEW_INSTRUCTION))
            gone = list(removed["key"])
            explained = dict(explain_removed(gone)) if explain_removed and gone else {}
            instruction.update({ident: explained.get(ident, NOT_IN_BUILD) for ident in gone})
            instruction.update(_instruction_reasons(parent, new, set(changed["key"])))
        other = _other_split(split) if config == "binarized" else None
        moved = set(parent.rows(config, other)["key"]) if other and parent.rows(config, other) is not None else set()

        def reasons(rows: pd.DataFrame, column: str, moved: set[str] = moved) -> dict[str, int]:
            counts: Counter[str] = Counter()
            for key, ident in zip(rows["key"], rows[column], strict=True):
                reason = instruction.get(ident)
                if reason is None:
                    reason = MOVED_SPLIT if key in moved else RULES_CHANGED
                counts[reason.split(":", 1)[0]] += 1
            return dict(sorted(counts.items()))

        entry = {
            "added": len(added),
            "removed": len(removed),
            "changed": len(changed),
            "unchanged": len(common) - len(changed),
            "reasons": {
                "added": reasons(added, "instruction_id_new"),
                "removed": reasons(removed, "instruction_id_old"),
                "changed": reasons(changed, "instruction_id_new"),
            },
        }
        result.setdefault(config, {})[split] = entry
    return result


def changes_table(configs: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The card's rows: config, split, the four counts and the reasons in one cell."""
    rows = []
    for config, splits in configs.items():
        for split, entry in splits.items():
            why = []
            for kind in ("added", "removed", "changed"):
                parts = [f"{reason} {n:,}" for reason, n in entry["reasons"][kind].items()]
                if parts:
                    why.append(f"{kind}: " + ", ".join(parts))
            rows.append(
                {
                    "config": config,
                    "split": split,
                    "added": entry["added"],
                    "removed": entry["removed"],
                    "changed": entry["changed"],
                    "unchanged": entry["unchanged"],
                    "why": "; ".join(why) or "-",
                }
            )
    return rows
