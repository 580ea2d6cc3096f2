"""Aggregate the scored completions with Dask: leaderboards, distributions and the Table 1 row.

Input: the stage Parquet of ``ScoredCompletion`` rows (``{store}/{dataset}/scored/*.parquet``).
Everything is computed with known reductions (``groupby().agg``, ``value_counts``, ``sum``), which
Dask runs as tree reductions without a full shuffle, so the same code serves a laptop and a
``distributed`` cluster at 256k+ rows (DESIGN §5). All results are small; they come back as pandas
tables for the dataset card and as list-of-dict rows for Prefect table artifacts.

Token counts use one named tokenizer, ``regex-wordpunct``: runs of letters/digits/marks/underscore,
or runs of other non-space characters (NLTK's ``WordPunctTokenizer`` rule ``\\w+|[^\\w\\s]+`` with
Unicode classes). It is cheap, needs no model download, and is recorded in the result: the paper's
Table 1 does not say which tokenizer produced its 185.1 / 305.3 / 143.1, so lengths are comparable
between our releases, not with the paper's numbers.

#pairs is computed here, from counts, with exactly the rule of ``tasks.pairs.build_pairs``: per
instruction C(n, 2) minus, for each distinct score, C(m, 2), where n counts the completions with a
score and m those sharing one score. Both the fine-grained and the overall count are reported;
``pairs`` is the one named by ``pair_score``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ultrafeedback.records import ASPECTS
from ultrafeedback.tasks.pairs.pairs import SCORE_COLUMNS, TIE_DECIMALS

TOKENIZER = "regex-wordpunct"
"""The name recorded with every token statistic."""

TOKEN_PATTERN = r"[\p{L}\p{N}\p{M}_]+|[^\p{L}\p{N}\p{M}_\s\p{Z}]+"
"""RE2 syntax (pyarrow.compute), Unicode-aware: a word run, or a run of punctuation/symbols."""

RATING_LABELS: tuple[str, ...] = ("1", "2", "3", "4", "5", "N/A", "null", "other")
"""Columns of the rating distribution; "other" counts values the parser should never emit."""

OVERALL_BUCKETS: tuple[str, ...] = (*[str(i) for i in range(1, 11)], "null")
"""overall_score histogram buckets: floor of the score (1-10), and null."""

ROUND = 4
"""Decimals kept in float results. Sums over differently partitioned data differ in the last bits;
rounding keeps the card (and so a release's content hash) stable across reruns of the same data."""

_COLUMNS = [
    "completion_id",
    "instruction_id",
    "source",
    "instruction",
    "model",
    "response",
    "critique",
    *[f"{aspect}_rating" for aspect in ASPECTS],
    "overall_score",
    "fine_grained_score",
    "judge_model",
    "judge_kind",
]


def count_tokens(texts: pd.Series | list[str | None]) -> pd.Series:
    """Tokens per text under ``regex-wordpunct`` (float64; a null text gives NaN)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = texts if isinstance(texts, pd.Series) else pd.Series(texts, dtype="object")
    array = pa.array(values, from_pandas=True)
    if not pa.types.is_large_string(array.type):
        array = array.cast(pa.large_string())
    counts = pc.count_substring_regex(array, TOKEN_PATTERN)
    return pd.Series(counts.to_numpy(zero_copy_only=False), index=values.index, dtype="float64")


def _rating_value(labels: pd.Series) -> pd.Series:
    """Integer ratings as floats; N/A, null and anything else as NaN (excluded from means)."""
    return pd.to_numeric(labels.where(labels.isin(["1", "2", "3", "4", "5"])), errors="coerce").astype("float64")


def _rating_label(labels: pd.Series) -> pd.Series:
    known = ["1", "2", "3", "4", "5", "N/A"]
    out = labels.astype("object").where(labels.isin(known), "other")
    return out.where(labels.notna(), "null").astype("object")


def _labels(values: pd.Series, fmt: str) -> pd.Series:
    """Format non-null numbers as text buckets; null becomes "null"."""
    out = pd.Series("null", index=values.index, dtype="object")
    present = values.notna()
    out[present] = [fmt.format(v) for v in values[present].tolist()]
    return out


def _overall_bucket(scores: pd.Series) -> pd.Series:
    return _labels(np.floor(scores.clip(lower=1, upper=10)), "{:.0f}")


def _prepare(part: pd.DataFrame) -> pd.DataFrame:
    """Per-partition derived columns: token counts, numeric ratings, labels and score keys."""
    out = pd.DataFrame(index=part.index)
    out["instruction_id"] = part["instruction_id"].astype("object")
    out["source"] = part["source"].astype("object")
    out["model"] = part["model"].astype("object")
    out["judge_model"] = part["judge_model"].astype("object")
    out["judge_kind"] = part["judge_kind"].astype("object")
    out["completion_id"] = part["completion_id"].astype("object")
    # The prompt repeats on each of its k completion rows: tokenize it once per partition.
    # factorize numbers ids by first appearance, so code i is the i-th first occurrence.
    codes, _ = pd.factorize(part["instruction_id"])
    first = ~pd.Series(codes).duplicated().to_numpy()
    out["prompt_tokens"] = count_tokens(part["instruction"][first]).to_numpy()[codes]
    out["response_tokens"] = count_tokens(part["response"])
    out["critique_tokens"] = count_tokens(part["critique"])
    out["has_critique"] = part["critique"].notna().astype("int64")
    rated = pd.Series(0, index=part.index, dtype="int64")
    for aspect in ASPECTS:
        labels = part[f"{aspect}_rating"]
        out[f"{aspect}_value"] = _rating_value(labels)
        out[f"{aspect}_label"] = _rating_label(labels)
        rated += labels.notna().astype("int64")
    out["ratings"] = rated
    for kind, column in SCORE_COLUMNS.items():
        value = pd.to_numeric(part[column], errors="coerce").astype("float64")
        out[column] = value
        out[f"{kind}_key"] = value.round(TIE_DECIMALS)
    out["overall_bucket"] = _overall_bucket(out["overall_score"])
    out["fine_grained_bucket"] = _labels(out["fine_grained_score"], "{:.2f}")
    return out


def _meta() -> pd.DataFrame:
    empty = pd.DataFrame(
        {
            c: pd.Series(dtype="object")
            if c not in ("overall_score", "fine_grained_score")
            else pd.Series(dtype="float64")
            for c in _COLUMNS
        }
    )
    return _prepare(empty)


# --------------------------------------------------------------------------- the result


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-able rows: NaN becomes None, numpy scalars become Python numbers."""
    rows = []
    for row in frame.to_dict("records"):
        clean = {}
        for key, value in row.items():
            if hasattr(value, "item"):
                value = value.item()
            if isinstance(value, float) and math.isnan(value):
                value = None
            clean[str(key)] = value
        rows.append(clean)
    return rows


@dataclass
class AggregateResult:
    """What ``aggregate`` computed. Tables are pandas frames; ``to_dict`` is JSON-able.

    Attributes:
        stats: the Table 1 row and totals (prompts, completions, critiques, ratings,
            feedback_items, pairs, pairs_fine_grained, pairs_overall, avg_*_tokens, tokenizer, ...).
        leaderboard: one row per model, best mean fine-grained score first.
        by_source: one row per source.
        rating_distribution: one row per aspect, a column per label in ``RATING_LABELS``.
        overall_histogram: bucket, count (floor of overall_score; "10" counts the 10s that the
            original overall_score bug produced, §4.6).
        fine_grained_histogram: bucket (score to 2 decimals), count.
        completions_per_prompt: completions, prompts (how many prompts have that many).
        judges: judge_model, judge_kind, completions.
        elapsed_s: wall time of the computation (not part of ``to_dict``: it differs per run).
    """

    stats: dict[str, Any]
    leaderboard: pd.DataFrame
    by_source: pd.DataFrame
    rating_distribution: pd.DataFrame
    overall_histogram: pd.DataFrame
    fine_grained_histogram: pd.DataFrame
    completions_per_prompt: pd.DataFrame
    judges: pd.DataFrame
    tokenizer: str = TOKENIZER
    elapsed_s: float = field(default=0.0, compare=False)

    TABLES = (
        "leaderboard",
        "by_source",
        "rating_distribution",
        "overall_histogram",
        "fine_grained_histogram",
        "completions_per_prompt",
        "judges",
    )

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        """Every table as list-of-dict rows (the shape Prefect ``create_table_artifact`` takes)."""
        return {name: _records(getattr(self, name)) for name in self.TABLES}

    def to_dict(self) -> dict[str, Any]:
        """A deterministic, JSON-able dict (no timings), for manifests, cards and hashes."""
        return {"tokenizer": self.tokenizer, "stats": dict(self.stats), **self.tables()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AggregateResult:
        """Rebuild a result from ``to_dict`` output (e.g. read back from the store)."""
        return cls(
            stats=dict(data["stats"]),
            tokenizer=data.get("tokenizer", TOKENIZER),
            **{name: pd.DataFrame(list(data.get(name, []))) for name in cls.TABLES},
        )

    @property
    def heuristic_completions(self) -> int:
        """Completions rated by a heuristic judge (the card must say so prominently)."""
        return int(self.stats.get("heuristic_completions", 0))


# --------------------------------------------------------------------------- the computation


def _pairs_from_counts(per_instruction: Any, per_score: Any, n_column: str) -> Any:
    """Lazy #non-tied pairs: sum C(n, 2) over instructions minus sum C(m, 2) over (instruction, score)."""
    n = per_instruction[n_column]
    m = per_score
    return (n * (n - 1) // 2).sum() - (m * (m - 1) // 2).sum()


def _input_files(path: str, storage_options: dict[str, Any]) -> list[str]:
    """The Parquet files behind a file, folder or glob, sorted, with their protocol.

    A folder means its ``*.parquet`` files: the store's atomic writes leave ``.tmp-*`` files there
    while a write is in flight, and those must not be read.
    """
    import fsspec

    fs, _, paths = fsspec.get_fs_token_paths(path, storage_options=storage_options)
    files: list[str] = []
    for item in paths:
        if fs.isdir(item):
            files += list(fs.glob(item.rstrip("/") + "/*.parquet"))
        elif fs.exists(item):
            files.append(item)
    if not files:
        raise FileNotFoundError(f"no scored Parquet at {path!r}")
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    return [f if protocol in ("file", "local") else f"{protocol}://{f}" for f in sorted(files)]


def _compute(client: Any, objects: dict[str, Any]) -> dict[str, Any]:
    import dask

    names = list(objects)
    if client is None:
        values = dask.compute(*objects.values())
    else:
        values = client.compute(list(objects.values()), sync=True)
    return dict(zip(names, values, strict=True))


def _round(frame: pd.DataFrame) -> pd.DataFrame:
    floats = frame.select_dtypes("float").columns
    frame[floats] = frame[floats].round(ROUND)
    return frame


def aggregate(
    scored_parquet_path_or_glob: str,
    storage_options: dict[str, Any] | None = None,
    client: Any = None,
    *,
    pair_score: str = "fine_grained",
) -> AggregateResult:
    """Compute the leaderboards, distributions and Table 1 statistics of the scored completions.

    Args:
        scored_parquet_path_or_glob: a folder, file, glob or list-like fsspec path of ScoredCompletion
            Parquet (``s3://bucket/ds/scored/*.parquet`` works with ``storage_options``).
        storage_options: fsspec options for remote paths (credentials, endpoint_url).
        client: a ``distributed.Client`` (see ``infra.dask_cluster.dask_client``); None uses Dask's
            local threaded scheduler.
        pair_score: which pair count ``stats["pairs"]`` reports (``spec.pairs.score``).

    Duplicate completion ids (two runs that raced on one shard) are counted in
    ``stats["duplicate_completion_ids"]``; the gates decide whether that is acceptable. The other
    numbers count rows as they are.
    """
    import dask.dataframe as dd

    if pair_score not in SCORE_COLUMNS:
        raise ValueError(f"pair_score must be one of {sorted(SCORE_COLUMNS)}, got {pair_score!r}")
    started = time.perf_counter()
    files = _input_files(scored_parquet_path_or_glob, storage_options or {})
    raw = dd.read_parquet(files, columns=_COLUMNS, storage_options=storage_options or {})
    df = raw.map_partitions(_prepare, meta=_meta())

    aspect_values = {f"{a}_value": "mean" for a in ASPECTS}
    leaderboard = df.groupby("model").agg(
        {
            "completion_id": "count",
            "fine_grained_score": "mean",
            "overall_score": "mean",
            **aspect_values,
            "response_tokens": "mean",
        }
    )
    by_source = df.groupby("source").agg(
        {
            "completion_id": "count",
            "fine_grained_score": "mean",
            "overall_score": "mean",
            "prompt_tokens": "mean",
            "response_tokens": "mean",
        }
    )
    source_prompts = df.groupby("source")["instruction_id"].nunique()
    per_instruction = df.groupby("instruction_id").agg(
        {
            "prompt_tokens": "max",
            "completion_id": "count",
            "fine_grained_key": "count",
            "overall_key": "count",
        }
    )
    lazy: dict[str, Any] = {
        "leaderboard": leaderboard,
        "by_source": by_source,
        "source_prompts": source_prompts,
        "judges": df.groupby(["judge_model", "judge_kind"])["completion_id"].count(),
        "totals": df[["has_critique", "ratings", "response_tokens", "critique_tokens"]].sum(),
        "completions": df["completion_id"].count(),
        "unique_completions": df["completion_id"].nunique(),
        "prompts": per_instruction["completion_id"].count(),
        "prompt_tokens": per_instruction["prompt_tokens"].sum(),
        "completions_per_prompt": per_instruction["completion_id"].value_counts(),
        "overall_histogram": df["overall_bucket"].value_counts(),
        "fine_grained_histogram": df["fine_grained_bucket"].value_counts(),
    }
    for aspect in ASPECTS:
        lazy[f"dist_{aspect}"] = df[f"{aspect}_label"].value_counts()
    for kind in SCORE_COLUMNS:
        ties = df.groupby(["instruction_id", f"{kind}_key"])["completion_id"].count()
        lazy[f"pairs_{kind}"] = _pairs_from_counts(per_instruction, ties, f"{kind}_key")
    got = _compute(client, lazy)

    completions = int(got["completions"])
    prompts = int(got["prompts"])
    totals = got["totals"]
    critiques = int(totals["has_critique"])
    ratings = int(totals["ratings"])
    judges = got["judges"].rename("completions").reset_index().sort_values(["judge_kind", "judge_model"])
    heuristic = int(judges.loc[judges["judge_kind"] == "heuristic", "completions"].sum())

    def avg(total: float, count: int) -> float | None:
        return round(float(total) / count, 1) if count else None

    stats: dict[str, Any] = {
        "prompts": prompts,
        "completions": completions,
        "critiques": critiques,
        "ratings": ratings,
        "feedback_items": ratings + critiques,
        "pairs": int(got[f"pairs_{pair_score}"]),
        "pair_score": pair_score,
        "pairs_fine_grained": int(got["pairs_fine_grained"]),
        "pairs_overall": int(got["pairs_overall"]),
        "avg_prompt_tokens": avg(got["prompt_tokens"], prompts),
        "avg_response_tokens": avg(totals["response_tokens"], completions),
        "avg_critique_tokens": avg(totals["critique_tokens"], critiques),
        "tokenizer": TOKENIZER,
        "duplicate_completion_ids": completions - int(got["unique_completions"]),
        "models": int(len(got["leaderboard"])),
        "sources": int(len(got["by_source"])),
        "heuristic_completions": heuristic,
    }

    board = got["leaderboard"].rename(
        columns={
            "completion_id": "completions",
            "fine_grained_score": "mean_fine_grained",
            "overall_score": "mean_overall",
            "response_tokens": "mean_response_tokens",
            **{f"{a}_value": f"mean_{a}" for a in ASPECTS},
        }
    )
    board = _round(board.reset_index())
    board = board.sort_values(["mean_fine_grained", "model"], ascending=[False, True], na_position="last")

    sources = got["by_source"].join(got["source_prompts"].rename("prompts"))
    sources = sources.rename(
        columns={
            "completion_id": "completions",
            "fine_grained_score": "mean_fine_grained",
            "overall_score": "mean_overall",
            "prompt_tokens": "mean_prompt_tokens",
            "response_tokens": "mean_response_tokens",
        }
    )
    sources = _round(sources.reset_index())
    sources = sources[
        [
            "source",
            "prompts",
            "completions",
            "mean_fine_grained",
            "mean_overall",
            "mean_prompt_tokens",
            "mean_response_tokens",
        ]
    ].sort_values("source")

    dist_rows = []
    for aspect in ASPECTS:
        counts = got[f"dist_{aspect}"]
        dist_rows.append({"aspect": aspect, **{label: int(counts.get(label, 0)) for label in RATING_LABELS}})
    distribution = pd.DataFrame(dist_rows, columns=["aspect", *RATING_LABELS])

    overall = got["overall_histogram"]
    overall_hist = pd.DataFrame(
        [{"bucket": b, "count": int(overall.get(b, 0))} for b in OVERALL_BUCKETS], columns=["bucket", "count"]
    )
    fine = got["fine_grained_histogram"]
    fine_hist = pd.DataFrame(
        [{"bucket": str(b), "count": int(c)} for b, c in fine.items()], columns=["bucket", "count"]
    )
    fine_hist = fine_hist.sort_values("bucket", key=lambda s: s.map(lambda b: (b == "null", b)))

    per_prompt = got["completions_per_prompt"]
    per_prompt_table = pd.DataFrame(
        [{"completions": int(k), "prompts": int(v)} for k, v in sorted(per_prompt.items())],
        columns=["completions", "prompts"],
    )

    return AggregateResult(
        stats=stats,
        leaderboard=board.reset_index(drop=True),
        by_source=sources.reset_index(drop=True),
        rating_distribution=distribution,
        overall_histogram=overall_hist,
        fine_grained_histogram=fine_hist.reset_index(drop=True),
        completions_per_prompt=per_prompt_table,
        judges=judges.reset_index(drop=True),
        elapsed_s=round(time.perf_counter() - started, 3),
    )
