"""Synthetic scored completions in the sharded store layout (``scored/shard-NNNNN.parquet``), for
the pairs and publish tests and the memory measurement.

The rows cover what the pairs stage must get right: several sources (so instruction-id order and
shard order differ), an excluded source, failed completions (fewer than k rows), null scores, tied
scores, identical completions, duplicate prompts across sources (tied split ranks), non-ASCII text.
"""

from __future__ import annotations

import random
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ultrafeedback.infra.store import Store, arrow_schema
from ultrafeedback.keys import instruction_id
from ultrafeedback.records import ScoredCompletion
from ultrafeedback.spec import Spec, validate_dict

MODELS = ["m-a", "m-b", "m-c", "m-d", "m-e"]
SOURCES = ["evol_instruct", "flan", "sharegpt", "truthful_qa", "ultrachat"]
SCHEMA = arrow_schema(ScoredCompletion)


def scored_rows(n_instructions: int, seed: int = 0, text_bytes: int = 60) -> list[dict[str, Any]]:
    """ScoredCompletion rows (``model_dump()``) for ``n_instructions`` instructions, 4 slots each."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for i in range(n_instructions):
        source = SOURCES[i % len(SOURCES)]
        # every 7th prompt is shared by two sources: two instructions, one prompt_id (tied split rank)
        prompt = (
            f"Prompt {i // 14}: shared" if i % 7 == 0 else f"Prompt {i}: déjà vu? " + "x" * rng.randrange(text_bytes)
        )
        iid = instruction_id(source, prompt)
        models = rng.sample(MODELS, 4)
        for pos, model in enumerate(models):
            if rng.random() < 0.08:
                continue  # a failed completion: the instruction has fewer than k rows
            rating = rng.choice(["1", "2", "3", "4", "5"])
            overall = None if rng.random() < 0.05 else float(rng.choice([3, 5, 5, 7, 8, 9]))
            fine = None if rng.random() < 0.05 else rng.choice([1.0, 2.5, 11 / 3, 4.0, 4.0])
            same = i % 11 == 0  # identical completions: H4 drops the instruction
            rows.append(
                ScoredCompletion(
                    completion_id=f"{iid}-{pos}",
                    instruction_id=iid,
                    source=source,
                    instruction=prompt,
                    correct_answers=["yes"] if source == "truthful_qa" else ["None"],
                    incorrect_answers=["no"] if source == "truthful_qa" else ["None"],
                    models=models,
                    position=pos,
                    model="m-a" if same else model,
                    principle="honesty",
                    system_prompt="Be honest.",
                    response="same" if same else f"Answer {pos} to {i}: " + "y" * rng.randrange(text_bytes),
                    instruction_following_rating=rating,
                    instruction_following_rationale="follows",
                    honesty_rating="N/A" if pos == 3 else rating,
                    honesty_rationale="honest",
                    truthfulness_rating=rating,
                    truthfulness_rationale="true",
                    truthfulness_type=["0"],
                    truthfulness_type_rationale="no hallucination",
                    helpfulness_rating=None if pos == 1 and i % 3 == 0 else rating,
                    helpfulness_rationale=None if pos == 1 and i % 3 == 0 else "helps",
                    helpfulness_type=None if pos == 1 and i % 3 == 0 else ["1", "2"],
                    helpfulness_type_rationale=None if pos == 1 and i % 3 == 0 else "clear",
                    critique=f"Critique {pos}.",
                    overall_score=5.0 if same else overall,
                    fine_grained_score=4.0 if same else fine,
                    judge_model="heuristic-v1" if i % 4 else "gpt-4-0613",
                    judge_kind="heuristic" if i % 4 else "model",
                ).model_dump()
            )
    rng.shuffle(rows)  # the whole-table functions must not depend on row order
    return rows


def shard_tables(rows: list[dict[str, Any]], instructions_per_shard: int) -> list[pa.Table]:
    """The rows as the score stage shards them: whole instructions, shards in (source, id) order."""
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    table = table.sort_by([("source", "ascending"), ("instruction_id", "ascending"), ("position", "ascending")])
    ids = table.column("instruction_id").to_pylist()
    cuts, seen = [0], 0
    for index in range(1, len(ids)):
        if ids[index] != ids[index - 1]:
            seen += 1
            if seen % instructions_per_shard == 0:
                cuts.append(index)
    cuts.append(len(ids))
    return [table.slice(a, b - a) for a, b in zip(cuts, cuts[1:], strict=False)]


def write_scored_shards(
    store: Store, rows: list[dict[str, Any]], instructions_per_shard: int, row_group_rows: int = 7
) -> list[pa.Table]:
    """Write ``scored/shard-NNNNN.parquet`` in small row groups (they read back as several chunks)."""
    tables = shard_tables(rows, instructions_per_shard)
    for shard, table in enumerate(tables):
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=row_group_rows)
        store.write_bytes(f"scored/shard-{shard:05d}.parquet", sink.getvalue().to_pybytes())
    return tables


def pairs_spec(store: str, pairs: dict[str, Any] | None = None, **binarize: Any) -> Spec:
    """A spec whose store is ``store``, with ``pairs`` and ``binarize`` settings (truthful_qa
    excluded from binarization by default, as H4 does)."""
    return validate_dict(
        {
            "name": "unit",
            "store": store,
            "sources": [
                {"name": "evol_instruct", "loader": "jsonl", "path": "unused.jsonl"},
                {"name": "truthful_qa", "loader": "jsonl", "path": "unused.jsonl"},
            ],
            "endpoints": {"openai": {"base_url": "https://api.example.com/v1", "api_key_env": "MY_KEY_ENV"}},
            "models": [{"id": m, "backend": "embedded"} for m in MODELS[:4]],
            "pairs": pairs or {},
            "binarize": {"exclude_sources": ["truthful_qa"], **binarize},
        }
    )
