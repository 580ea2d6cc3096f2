"""Preference pairs and binarized chosen/rejected sets from the scored completions.

Three products, all pure functions of the ``ScoredCompletion`` table (reference §6):

* :func:`build_pairs` - the paper's pair set: every non-tied pair of completions within an
  instruction, ranked by the fine-grained (mean of aspect ratings) or the overall score. Its count is
  what §6.1 compares with the paper's 340,025.
* :func:`binarize` - one chosen/rejected row per instruction, by the HuggingFaceH4 rule (§6.2: chosen
  = first max ``overall_score``, rejected = a random other completion, ties kept) or the Argilla rule
  (§6.3: chosen = best mean aspect rating, rejected = a random strictly lower one, ties dropped), in
  the TRL chat format.
* :func:`split_binarized` - deterministic ``train_prefs`` / ``test_prefs`` splits.

Determinism: every random draw comes from an RNG seeded by ``(seed, instruction_id)`` through
``ultrafeedback.keys.seeded_int``, and splits hash ``prompt_id`` with the seed, so the output for an
instruction does not depend on which other instructions are present or on input row order. That is
what lets a refresh add instructions without reshuffling the ones already released.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring as _json_str
from typing import Any, Literal

import pandas as pd

from ultrafeedback.keys import seeded_int
from ultrafeedback.records import Pair

ScoreKind = Literal["fine_grained", "overall"]
Rule = Literal["h4", "argilla"]

SCORE_COLUMNS: dict[str, str] = {"fine_grained": "fine_grained_score", "overall": "overall_score"}
"""The ScoredCompletion column behind each score kind."""

TIE_DECIMALS = 6
"""Scores are compared after rounding to this many decimals, so that two fine-grained means that
are mathematically equal (11/3 computed in two places) always count as a tie. ``aggregate`` counts
pairs with the same rule, so its pair count equals ``len(build_pairs(...))``."""

SPLITS: tuple[str, str] = ("train_prefs", "test_prefs")

EXCLUDED, FEWER_THAN_TWO, ALL_TIED, IDENTICAL = (
    "excluded_source",
    "fewer_than_2_scored",
    "all_tied",
    "identical_completions",
)
"""Why ``binarize`` leaves an instruction out (counted in its ``dropped`` argument)."""

_PAIR_COLUMNS = ["instruction_id", "source", "instruction", "completion_id", "model", "response"]


def score_key(values: pd.Series) -> pd.Series:
    """Scores rounded for tie detection (NaN stays NaN). Shared with the Dask pair count."""
    return pd.to_numeric(values, errors="coerce").astype("float64").round(TIE_DECIMALS)


def latest_rows(scored: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per completion id (the last one, as the store's readers do), in slot order.

    Sorting by (instruction_id, position, completion_id) makes every product independent of the
    order in which stage parts were written or read. The order is computed on the key columns and
    applied in one take of the wanted ``columns`` (all by default): moving long text columns is
    what costs time at 256k rows.
    """
    wanted = list(scored.columns if columns is None else dict.fromkeys([*columns, "completion_id"]))
    if scored.empty:
        return scored[wanted]
    keys = scored[["completion_id", "instruction_id", "position"]].reset_index(drop=True)
    keys = keys[~keys["completion_id"].duplicated(keep="last")]
    order = keys.sort_values(["instruction_id", "position", "completion_id"], kind="stable").index.to_numpy()
    return scored[wanted].take(order).reset_index(drop=True)


# --------------------------------------------------------------------------- all non-tied pairs


def build_pairs(scored: pd.DataFrame, score: ScoreKind = "fine_grained") -> list[Pair]:
    """Every non-tied pair of completions within each instruction.

    For an instruction with ``k`` scored completions that is C(k, 2) pairs minus the tied ones;
    completions whose score is null take part in no pair. ``chosen`` is the higher-scored completion,
    ``margin`` the absolute score difference (the paper's reward-model margin before normalisation).
    Order: by instruction id, then by the slot positions of the two completions (lower slot first),
    so the list is the same whatever the input row order.
    """
    if score not in SCORE_COLUMNS:
        raise ValueError(f"score must be one of {sorted(SCORE_COLUMNS)}, got {score!r}")
    column = SCORE_COLUMNS[score]
    frame = latest_rows(scored, [*_PAIR_COLUMNS, column])
    if frame.empty:
        return []
    scores = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    keep = scores.notna().to_numpy()
    frame = frame[_PAIR_COLUMNS][keep]
    # Plain Python lists: indexing Arrow-backed columns row by row, or moving the text columns
    # through a pandas self-merge, costs 10x more than this loop over 64k groups.
    instruction_ids = frame["instruction_id"].tolist()
    sources = frame["source"].tolist()
    prompts = frame["instruction"].tolist()
    ids = frame["completion_id"].tolist()
    models = frame["model"].tolist()
    responses = frame["response"].tolist()
    values = scores[keep].tolist()
    keys = score_key(scores[keep]).tolist()

    pairs: list[Pair] = []
    n = len(ids)
    start = 0
    while start < n:
        end = start + 1
        while end < n and instruction_ids[end] == instruction_ids[start]:
            end += 1
        for a in range(start, end):
            for b in range(a + 1, end):
                if keys[a] == keys[b]:
                    continue
                win, lose = (a, b) if keys[a] > keys[b] else (b, a)
                pairs.append(
                    Pair(
                        pair_id=_pair_key(ids[win], ids[lose]),
                        instruction_id=instruction_ids[start],
                        source=sources[start],
                        prompt=prompts[start],
                        chosen_id=ids[win],
                        rejected_id=ids[lose],
                        chosen_model=models[win],
                        rejected_model=models[lose],
                        chosen=responses[win],
                        rejected=responses[lose],
                        score_chosen=values[win],
                        score_rejected=values[lose],
                        margin=round(abs(values[win] - values[lose]), TIE_DECIMALS),
                    )
                )
        start = end
    return pairs


def _pair_key(chosen_id: str, rejected_id: str) -> str:
    """``ultrafeedback.keys.content_key("pair", chosen_id, rejected_id)``, built without json.dumps.

    ``json.dumps`` with non-default options builds an encoder per call, which was half the pair
    build at 350k pairs. For a list of strings its output is exactly this text (the C string
    escaper, ``", "`` separators); a test checks that both keys agree.
    """
    blob = f'["pair", {_json_str(chosen_id)}, {_json_str(rejected_id)}]'
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def pairs_frame(pairs: Sequence[Pair]) -> pd.DataFrame:
    """The pairs as a DataFrame with the Pair columns (also when there are none)."""
    columns = list(Pair.model_fields)
    return pd.DataFrame([p.model_dump() for p in pairs], columns=columns)


# --------------------------------------------------------------------------- binarized sets


def prompt_id(prompt: str) -> str:
    """sha256 hex of the prompt text, as HuggingFaceH4/ultrafeedback_binarized computes it."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def _messages(prompt: str, response: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _pick_h4(completions: list[dict[str, Any]], rng: random.Random) -> tuple[dict, dict] | str:
    """H4 (§6.2): chosen = first max overall_score in slot order; rejected = uniform among the
    completions whose (score, response, model) differs from chosen. That is exactly the distribution
    of H4's ``random.choice`` resampled until the tuple differs; ties are NOT dropped."""
    scored = [c for c in completions if c["score"] is not None]
    if len(scored) < 2:
        return FEWER_THAN_TWO
    chosen = scored[0]
    for candidate in scored[1:]:
        if candidate["score"] > chosen["score"]:  # strict: the first max wins, as Python's max()
            chosen = candidate
    signature = (chosen["score"], chosen["response"], chosen["model"])
    others = [c for c in scored if (c["score"], c["response"], c["model"]) != signature]
    if not others:
        return IDENTICAL
    return chosen, rng.choice(others)


def _pick_argilla(completions: list[dict[str, Any]], rng: random.Random) -> tuple[dict, dict] | str:
    """Argilla (§6.3): chosen = best mean aspect rating (first in slot order); rejected = uniform
    among strictly lower-rated completions; an instruction with none lower (all tied) is dropped."""
    scored = [c for c in completions if c["score"] is not None]
    if len(scored) < 2:
        return FEWER_THAN_TWO
    best = max(c["key"] for c in scored)
    chosen = next(c for c in scored if c["key"] == best)
    lower = [c for c in scored if c["key"] < best]
    if not lower:
        return ALL_TIED
    return chosen, rng.choice(lower)


def binarize(
    scored: pd.DataFrame,
    rule: Rule = "h4",
    seed: int = 42,
    exclude_sources: Iterable[str] = (),
    dropped: Counter[str] | None = None,
) -> list[dict[str, Any]]:
    """One chosen/rejected row per instruction, in TRL's conversational preference format.

    ``h4`` ranks by ``overall_score`` (as H4's code does, although its README says "mean score"),
    ``argilla`` by ``fine_grained_score`` (the mean of the aspect ratings, Argilla's recommendation).
    Completions with a null score are not candidates; instructions with fewer than 2 scored
    completions are skipped. Rows from ``exclude_sources`` are dropped first (H4 drops
    ``truthful_qa``). Each instruction draws from its own RNG, seeded by (seed, rule,
    instruction_id), so adding or removing other instructions never changes its row.

    Row fields: prompt, prompt_id (sha256 of the prompt), chosen, rejected, messages (= chosen),
    score_chosen, score_rejected, chosen_model, rejected_model, source, and for lineage
    instruction_id, chosen_id, rejected_id. Rows are ordered by instruction id.

    Nothing is dropped silently: pass a ``Counter`` as ``dropped`` to get the instructions left out
    by reason (``excluded_source``, ``fewer_than_2_scored``, ``all_tied`` for Argilla,
    ``identical_completions`` for H4).
    """
    if rule not in ("h4", "argilla"):
        raise ValueError(f"rule must be 'h4' or 'argilla', got {rule!r}")
    column = SCORE_COLUMNS["overall" if rule == "h4" else "fine_grained"]
    excluded = set(exclude_sources)
    dropped = Counter() if dropped is None else dropped
    if excluded:
        out = scored["source"].isin(excluded)
        dropped[EXCLUDED] += int(scored.loc[out, "instruction_id"].nunique())
        scored = scored[~out]
    frame = latest_rows(scored, [*_PAIR_COLUMNS, column])
    if frame.empty:
        return []
    scores = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    frame = frame.assign(_score=scores, _key=score_key(scores))
    pick = _pick_h4 if rule == "h4" else _pick_argilla

    rows: list[dict[str, Any]] = []
    instruction_ids = frame["instruction_id"].tolist()
    sources = frame["source"].tolist()
    prompts = frame["instruction"].tolist()
    completions = [
        {"id": cid, "model": model, "response": response, "score": _as_float(value), "key": _as_float(key)}
        for cid, model, response, value, key in zip(
            frame["completion_id"].tolist(),
            frame["model"].tolist(),
            frame["response"].tolist(),
            frame["_score"].tolist(),
            frame["_key"].tolist(),
            strict=True,
        )
    ]
    n = len(instruction_ids)
    start = 0
    while start < n:
        end = start + 1
        instruction = instruction_ids[start]
        while end < n and instruction_ids[end] == instruction:
            end += 1
        group = completions[start:end]
        prompt, source = prompts[start], sources[start]
        start = end
        rng = random.Random(seeded_int(seed, "binarize", rule, instruction))
        picked = pick(group, rng)
        if isinstance(picked, str):
            dropped[picked] += 1
            continue
        chosen, rejected = picked
        chosen_messages = _messages(prompt, chosen["response"])
        rows.append(
            {
                "prompt": prompt,
                "prompt_id": prompt_id(prompt),
                "chosen": chosen_messages,
                "rejected": _messages(prompt, rejected["response"]),
                "messages": _messages(prompt, chosen["response"]),
                "score_chosen": chosen["score"],
                "score_rejected": rejected["score"],
                "chosen_model": chosen["model"],
                "rejected_model": rejected["model"],
                "source": source,
                "instruction_id": instruction,
                "chosen_id": chosen["id"],
                "rejected_id": rejected["id"],
            }
        )
    return rows


# --------------------------------------------------------------------------- splits


def n_test_rows(n_rows: int, test_size: float | int) -> int:
    """How many of ``n_rows`` go to test.

    An ``int`` is a count; a ``float`` below 1 is a fraction, rounded up as ``datasets``'
    ``train_test_split`` does. A float >= 1 with no fractional part counts as a count, because the
    spec's ``binarize.test_size`` is typed ``float`` and YAML ``2000`` arrives as ``2000.0``. With 2 or
    more rows the result keeps at least one row on each side.
    """
    if isinstance(test_size, bool) or not isinstance(test_size, int | float):
        raise TypeError(f"test_size must be an int or a float, got {type(test_size).__name__}")
    if test_size < 0 or (isinstance(test_size, float) and math.isnan(test_size)):
        raise ValueError(f"test_size must be >= 0, got {test_size}")
    if isinstance(test_size, float) and test_size < 1:
        wanted = math.ceil(test_size * n_rows)
    elif isinstance(test_size, float) and not test_size.is_integer():
        raise ValueError(f"test_size {test_size} is neither a fraction below 1 nor a whole count")
    else:
        wanted = int(test_size)
    if n_rows < 2:
        return 0
    return min(max(wanted, 1), n_rows - 1)


def split_binarized(
    rows: Sequence[dict[str, Any]], test_size: float | int = 0.1, seed: int = 42
) -> dict[str, list[dict[str, Any]]]:
    """Split binarized rows into ``train_prefs`` and ``test_prefs``.

    Each row is ranked by ``seeded_int(seed, "split", prompt_id)`` and the lowest-ranked
    :func:`n_test_rows` rows go to test. A row's rank depends only on its own prompt and the seed, so
    adding rows moves at most the rows at the boundary instead of reshuffling everything (what a
    shuffled ``train_test_split`` would do). Rows keep their input order within a split.
    """
    n_test = n_test_rows(len(rows), test_size)
    test_index = _lowest_ranked(((row["prompt_id"], i) for i, row in enumerate(rows)), n_test, seed)
    return {
        "train_prefs": [row for i, row in enumerate(rows) if i not in test_index],
        "test_prefs": [row for i, row in enumerate(rows) if i in test_index],
    }


def split_test_ids(keys: Iterable[tuple[str, str]], test_size: float | int = 0.1, seed: int = 42) -> set[str]:
    """The instruction ids whose rows :func:`split_binarized` puts in ``test_prefs``, from key columns.

    ``keys`` are the ``(instruction_id, prompt_id)`` of every binarized row, in any order. Binarized
    rows are one per instruction and ordered by instruction id, so the instruction id breaks rank ties
    exactly as ``split_binarized``'s row index does: the result equals that split on the whole list,
    while a caller holds only these two columns (the pairs stage splits shard by shard).
    """
    keys = list(keys)
    n_test = n_test_rows(len(keys), test_size)
    return _lowest_ranked(((prompt, instruction) for instruction, prompt in keys), n_test, seed)


def _lowest_ranked(items: Iterable[tuple[str, Any]], n: int, seed: int) -> set[Any]:
    """The tie-breakers of the ``n`` items with the lowest ``(seeded_int(seed, "split", prompt_id),
    tie-breaker)``, for ``(prompt_id, tie-breaker)`` items."""
    ranked = ((seeded_int(seed, "split", prompt), tie) for prompt, tie in items)
    return {tie for _, tie in heapq.nsmallest(n, ranked)}
