"""Preference pairs and binarized chosen/rejected sets from the scored completions.

Three products, all pure functions of the ``ScoredCompletion`` table (reference §6):

* :func:`build_pairs` - the paper's pair set: every non-tied pair of completions within an
  instruction, ranked by the fine-grained (mean of aspect ratings) or the overall score. Its count is
  what §6.1 compares with the paper's 340,025.
* :func:`binarize` - one chosen/rejected row per instruction, by the HuggingFaceH4 rule (§6.2: chosen
  = first max ``overall_score``, rejected = a random other completion, ties kept) or the Argilla rule
  (§6.3: chosen = best mean aspect rating, rejected = a random strictly lower one, ties dropped), in
  the TRL chat format.
* :func:`split_binarized` - the six HuggingFaceH4 splits: ``train_prefs`` / ``test_prefs`` (decided
  by :func:`assign_splits`), ``train_sft`` / ``test_sft`` and ``train_gen`` / ``test_gen``.

Determinism: every random draw comes from an RNG seeded by ``(seed, instruction_id)`` through
``ultrafeedback.keys.seeded_int``, and splits hash ``prompt_id`` with the seed, so the output for an
instruction does not depend on which other instructions are present or on input row order. Split
membership also honours the earlier releases (:func:`assign_splits`' ``history``): a prompt
published in a split stays in it, so a refresh never moves a test row to train.

Completion order: ``order="slot"`` visits an instruction's completions by their assigned slot,
``order="model"`` by model id, as the released openbmb/UltraFeedback rows list them (the spec's
``completion_order``). It decides which of two equal maxima H4's rule takes as chosen.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from json.encoder import encode_basestring as _json_str
from typing import Any, Literal

import pandas as pd

from ultrafeedback.keys import normalise_text, seeded_int
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
"""The two halves every binarized row falls in (``split_test_ids`` decides them)."""
H4_SPLITS: tuple[str, ...] = ("train_prefs", "test_prefs", "train_sft", "test_sft", "train_gen", "test_gen")
"""The six splits of HuggingFaceH4/ultrafeedback_binarized (reference §6.2): ``*_sft`` are the rows
of ``train_prefs`` and of one half of ``test_prefs`` (``test_sft``: ``len(test_prefs) // 2`` rows, as
H4's 50/50 second split gives); ``*_gen`` are the ``*_sft`` rows with the final assistant message
removed from ``messages`` (prompts to generate from)."""
ORDERS: dict[str, str] = {"slot": "position", "model": "model"}
"""The spec's ``completion_order`` -> the ScoredCompletion column that orders an instruction's
completions."""

EXCLUDED, FEWER_THAN_TWO, ALL_TIED, IDENTICAL = (
    "excluded_source",
    "fewer_than_2_scored",
    "all_tied",
    "identical_completions",
)
"""Why ``binarize`` leaves an instruction out (counted in its ``dropped`` argument)."""
CONTAMINATED = "contaminated"
"""``contaminated:<source>``: the instruction equals a question of a ``binarize.decontaminate_sources``
source (H4 drops TruthfulQA's questions from the other sources)."""

_PAIR_COLUMNS = ["instruction_id", "source", "instruction", "completion_id", "model", "response"]


def score_key(values: pd.Series) -> pd.Series:
    """Scores rounded for tie detection (NaN stays NaN). Shared with the Dask pair count."""
    return pd.to_numeric(values, errors="coerce").astype("float64").round(TIE_DECIMALS)


def order_column(order: str) -> str:
    """The column behind a ``completion_order`` (``slot`` or ``model``)."""
    try:
        return ORDERS[order]
    except KeyError:
        raise ValueError(f"completion order must be one of {sorted(ORDERS)}, got {order!r}") from None


def latest_rows(scored: pd.DataFrame, columns: Sequence[str] | None = None, order: str = "slot") -> pd.DataFrame:
    """One row per completion id (the last one, as the store's readers do), in completion order.

    Sorting by (instruction_id, slot or model, completion_id) makes every product independent of
    the order in which stage parts were written or read. The order is computed on the key columns
    and applied in one take of the wanted ``columns`` (all by default): moving long text columns is
    what costs time at 256k rows.
    """
    by = order_column(order)
    wanted = list(scored.columns if columns is None else dict.fromkeys([*columns, "completion_id"]))
    if scored.empty:
        return scored[wanted]
    keys = scored[list(dict.fromkeys(["completion_id", "instruction_id", by]))].reset_index(drop=True)
    keys = keys[~keys["completion_id"].duplicated(keep="last")]
    rows = keys.sort_values(["instruction_id", by, "completion_id"], kind="stable").index.to_numpy()
    return scored[wanted].take(rows).reset_index(drop=True)


# --------------------------------------------------------------------------- all non-tied pairs


def build_pairs(scored: pd.DataFrame, score: ScoreKind = "fine_grained", order: str = "slot") -> list[Pair]:
    """Every non-tied pair of completions within each instruction.

    For an instruction with ``k`` scored completions that is C(k, 2) pairs minus the tied ones;
    completions whose score is null take part in no pair. ``chosen`` is the higher-scored completion,
    ``margin`` the absolute score difference (the paper's reward-model margin before normalisation).
    Order: by instruction id, then by the completion order (``slot`` or ``model``) of the two
    completions (the earlier first), so the list is the same whatever the input row order.
    """
    if score not in SCORE_COLUMNS:
        raise ValueError(f"score must be one of {sorted(SCORE_COLUMNS)}, got {score!r}")
    column = SCORE_COLUMNS[score]
    frame = latest_rows(scored, [*_PAIR_COLUMNS, column], order)
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
    """H4 (§6.2): chosen = first max overall_score in completion order; rejected = uniform among the
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
    """Argilla (§6.3): chosen = best mean aspect rating (first in completion order); rejected = uniform
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
    *,
    order: str = "slot",
    benchmark: Mapping[str, str] | None = None,
    dropped_rows: list[dict[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """One chosen/rejected row per instruction, in TRL's conversational preference format.

    ``h4`` ranks by ``overall_score`` (as H4's code does, although its README says "mean score"),
    ``argilla`` by ``fine_grained_score`` (the mean of the aspect ratings, Argilla's recommendation).
    Completions with a null score are not candidates; instructions with fewer than 2 scored
    completions are skipped. Rows from ``exclude_sources`` are dropped first (H4 drops
    ``truthful_qa``), then decontamination: ``benchmark`` maps normalised benchmark questions to the
    source they come from, and an instruction of another source whose normalised text is one of
    them is dropped (reason ``contaminated:<source>``; H4 drops the exact matches of TruthfulQA's
    questions). Candidates are visited in ``order`` (``slot`` or ``model``), which decides ties.
    Each instruction draws from its own RNG, seeded by (seed, rule, instruction_id), so adding or
    removing other instructions never changes its row.

    Row fields: prompt, prompt_id (sha256 of the prompt), chosen, rejected, messages (= chosen),
    score_chosen, score_rejected, chosen_model, rejected_model, source, and for lineage
    instruction_id, chosen_id, rejected_id. Rows are ordered by instruction id.

    Nothing is dropped silently: pass a ``Counter`` as ``dropped`` to get the instructions left out
    by reason (``excluded_source``, ``contaminated:<source>``, ``fewer_than_2_scored``, ``all_tied``
    for Argilla, ``identical_completions`` for H4), and a list as ``dropped_rows`` to get each
    contaminated instruction (instruction_id, source, reason, detail).
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
    if benchmark and not scored.empty:
        scored = _decontaminate(scored, benchmark, dropped, dropped_rows)
    frame = latest_rows(scored, [*_PAIR_COLUMNS, column], order)
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


def _decontaminate(
    scored: pd.DataFrame,
    benchmark: Mapping[str, str],
    dropped: Counter[str],
    dropped_rows: list[dict[str, str]] | None,
) -> pd.DataFrame:
    """``scored`` without the instructions of other sources that equal a benchmark question."""
    heads = scored.drop_duplicates("instruction_id")[["instruction_id", "source", "instruction"]]
    hits: dict[str, str] = {}
    for instruction, source, text in heads.itertuples(index=False):
        origin = benchmark.get(normalise_text(text))
        if origin is not None and origin != source:
            hits[instruction] = origin
    if not hits:
        return scored
    for instruction, source in sorted(zip(heads["instruction_id"], heads["source"], strict=True)):
        origin = hits.get(instruction)
        if origin is None:
            continue
        reason = f"{CONTAMINATED}:{origin}"
        dropped[reason] += 1
        if dropped_rows is not None:
            dropped_rows.append(
                {
                    "instruction_id": instruction,
                    "source": source,
                    "reason": reason,
                    "detail": f"the instruction equals a question of source {origin!r} (exact, after normalisation)",
                }
            )
    return scored[~scored["instruction_id"].isin(hits)]


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


def assign_splits(
    keys: Iterable[tuple[str, str]],
    test_size: float | int = 0.1,
    seed: int = 42,
    history: Mapping[str, str] | None = None,
) -> tuple[set[str], set[str]]:
    """``(test ids, test_sft ids)``: the instruction ids of the binarized rows that go to
    ``test_prefs``, and the half of them that also go to ``test_sft``.

    ``keys`` are the ``(instruction_id, prompt_id)`` of every binarized row, in any order. A prompt
    in ``history`` (prompt_id -> ``train``, ``test``, ``test_sft`` or ``test_other``, from the
    earlier releases: ``tasks.publish.history.split_history``) keeps its place: a test row stays
    test, a train row stays train, and a ``test_sft`` row stays in ``test_sft``. The other rows fill
    what is free: test up to :func:`n_test_rows` of all rows, by the lowest
    ``seeded_int(seed, "split", prompt_id)``, and ``test_sft`` up to half the test rows (rounded
    down: H4 splits its 2,000 test rows 50/50), by the lowest ``seeded_int(seed, "sft", prompt_id)``.
    Without history the split is a function of the rows and the seed only; with it, a refresh adds
    its new rows around the published ones (so the test split can exceed its target when earlier
    test rows are many, and never takes a published train row to reach it).
    """
    history = history or {}
    keys = list(keys)
    n_test = n_test_rows(len(keys), test_size)
    fixed_test = {i for i, p in keys if history.get(p, "").startswith("test")}
    free = [(p, i) for i, p in keys if p not in history]
    test = fixed_test | _lowest_ranked(free, max(0, n_test - len(fixed_test)), seed)
    in_test = [(i, p) for i, p in keys if i in test]
    fixed_sft = {i for i, p in in_test if history.get(p) == "test_sft"}
    undecided = [(p, i) for i, p in in_test if history.get(p) not in ("test_sft", "test_other")]
    n_sft = len(test) // 2
    sft = fixed_sft | _lowest_ranked(undecided, max(0, n_sft - len(fixed_sft)), seed, "sft")
    return test, sft


def gen_messages(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """A conversation without its final assistant message (the ``*_gen`` splits' ``messages``)."""
    out = [dict(m) for m in messages]
    return out[:-1] if out and out[-1].get("role") == "assistant" else out


def _gen_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "messages": gen_messages(row["messages"])} if "messages" in row else dict(row)


def split_binarized(
    rows: Sequence[dict[str, Any]],
    test_size: float | int = 0.1,
    seed: int = 42,
    history: Mapping[str, str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Split binarized rows into the six H4 splits (:data:`H4_SPLITS`).

    ``train_prefs`` / ``test_prefs`` and the ``test_sft`` half are decided by :func:`assign_splits`
    (a row's rank depends only on its own prompt and the seed, so adding rows moves at most the rows
    at the boundary, and none that ``history`` places); ``train_sft`` is ``train_prefs``; the
    ``*_gen`` splits are the ``*_sft`` rows with ``messages`` cut before the final assistant message.
    Rows keep their input order within a split.
    """
    test, sft = assign_splits(((row["instruction_id"], row["prompt_id"]) for row in rows), test_size, seed, history)
    train_rows = [row for row in rows if row["instruction_id"] not in test]
    test_rows = [row for row in rows if row["instruction_id"] in test]
    sft_rows = [row for row in test_rows if row["instruction_id"] in sft]
    return {
        "train_prefs": train_rows,
        "test_prefs": test_rows,
        "train_sft": list(train_rows),
        "test_sft": sft_rows,
        "train_gen": [_gen_row(row) for row in train_rows],
        "test_gen": [_gen_row(row) for row in sft_rows],
    }


def split_test_ids(keys: Iterable[tuple[str, str]], test_size: float | int = 0.1, seed: int = 42) -> set[str]:
    """The instruction ids whose rows :func:`split_binarized` puts in ``test_prefs`` (no history),
    from key columns: :func:`assign_splits`' first set."""
    return assign_splits(keys, test_size, seed)[0]


def _lowest_ranked(items: Iterable[tuple[str, Any]], n: int, seed: int, salt: str = "split") -> set[Any]:
    """The tie-breakers of the ``n`` items with the lowest ``(seeded_int(seed, salt, prompt_id),
    tie-breaker)``, for ``(prompt_id, tie-breaker)`` items."""
    if n <= 0:
        return set()
    ranked = ((seeded_int(seed, salt, prompt), tie) for prompt, tie in items)
    return {tie for _, tie in heapq.nsmallest(n, ranked)}
