"""HuggingFaceH4/ultrafeedback_binarized's layout on a fixture whose answers are known by
construction: the six splits and their sizes, TruthfulQA decontamination, completion order.

The fixture goes source files -> ingest -> (scored rows built from the ingested instructions, with
chosen scores fixed) -> the pairs stage -> a streamed release, as a build does after scoring:

* ``evol_instruct``: 20 prompts; ``sharegpt``: 10 prompts, 2 of which equal TruthfulQA questions
  after normalisation (one of them is a question TruthfulQA's quota leaves out: H4 matches against
  every question, not only the sampled ones) and one that differs by a character;
  ``truthful_qa``: 4 questions, quota 3.
* H4 rule with ``test_size: 8``, ``truthful_qa`` excluded and decontaminated: 20 + 8 = 28 binarized
  rows -> train 20 / test 8 / test_sft 4.
* Slots hold the models ``m-delta, m-alpha, m-charlie, m-bravo`` with overall scores 9, 6, 9, 3: H4
  takes the first of the two 9s, so ``chosen`` is ``m-delta`` in slot order and ``m-charlie`` in
  model order (alpha, bravo, charlie, delta).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.tasks.pairs.scored_data import write_scored_shards
from ultrafeedback.infra.store import Store
from ultrafeedback.records import ScoredCompletion
from ultrafeedback.spec import Spec, validate_dict
from ultrafeedback.tasks.ingest.ingest import ingest
from ultrafeedback.tasks.ingest.task import BENCHMARK_JSON
from ultrafeedback.tasks.pairs.pairs import H4_SPLITS, assign_splits, n_test_rows
from ultrafeedback.tasks.pairs.task import pairs_task
from ultrafeedback.tasks.publish.publish import ShardedTables, publish_release

SLOTS = [("m-delta", 9.0), ("m-alpha", 6.0), ("m-charlie", 9.0), ("m-bravo", 3.0)]
TQA = [
    "What happens if you swallow gum?",
    "Can you see the Great Wall of China from space?",
    "Do we only use ten percent of our brains?",
    "Is it dangerous to wake a sleepwalker?",
]
CONTAMINATED = ["  What happens if you swallow gum?\n", "Is it dangerous to wake a sleepwalker?  "]
"""Equal to TruthfulQA questions after normalisation (ends trimmed); the second is one of the
questions TruthfulQA's quota of 3 leaves out."""
NEAR_MISS = "What happens if you swallow gum??"
"""Not an exact match: it stays."""


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _spec(tmp_path: Path, order: str) -> Spec:
    _write(
        tmp_path / "evol.jsonl", [{"q": f"Evol task {i}: describe the {i * 37}th animal you know."} for i in range(20)]
    )
    share = [{"q": f"ShareGPT ask {i}: write a limerick about the number {i * 101}."} for i in range(7)]
    _write(tmp_path / "share.jsonl", share + [{"q": q} for q in [*CONTAMINATED, NEAR_MISS]])
    _write(tmp_path / "tqa.jsonl", [{"question": q, "best": "x", "wrong": "y"} for q in TQA])
    return validate_dict(
        {
            "name": "h4",
            "seed": 3,
            "store": str(tmp_path / "store"),
            "sources": [
                {"name": "evol_instruct", "loader": "jsonl", "path": "evol.jsonl", "fields": {"instruction": "q"}},
                {"name": "sharegpt", "loader": "jsonl", "path": "share.jsonl", "fields": {"instruction": "q"}},
                {
                    "name": "truthful_qa",
                    "loader": "jsonl",
                    "path": "tqa.jsonl",
                    "fields": {"instruction": "question", "correct_answers": "best", "incorrect_answers": "wrong"},
                    "quota": 3,
                },
            ],
            "models": [{"id": model, "backend": "embedded"} for model, _ in SLOTS],
            "completion_order": order,
            "ingest": {"dedup": "none"},  # as the original: cross-source repeats stay in the pool
            "binarize": {
                "rule": "h4",
                "test_size": 8,
                "seed": 42,
                "exclude_sources": ["truthful_qa"],
                "decontaminate_sources": ["truthful_qa"],
            },
        },
        base_dir=str(tmp_path),
    )


def _scored(instructions: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for item in instructions:
        for position, (model, score) in enumerate(SLOTS):
            rows.append(
                ScoredCompletion(
                    completion_id=f"{item.id}-{position}",
                    instruction_id=item.id,
                    source=item.source,
                    instruction=item.instruction,
                    correct_answers=item.correct_answers,
                    incorrect_answers=item.incorrect_answers,
                    models=[m for m, _ in SLOTS],
                    position=position,
                    model=model,
                    principle="helpfulness",
                    system_prompt="Be helpful.",
                    response=f"{model} answers {item.instruction}",
                    overall_score=score,
                    fine_grained_score=score / 2,
                    critique="ok",
                    judge_model="judge",
                    judge_kind="model",
                ).model_dump()
            )
    return rows


def _release(tmp_path: Path, order: str) -> tuple[Store, dict[str, Any], Path, list[Any]]:
    spec = _spec(tmp_path, order)
    store = Store(spec.store, spec.name)
    result = ingest(spec)
    store.write_json(BENCHMARK_JSON, result.benchmark)  # what the ingest stage records
    write_scored_shards(store, _scored(result.instructions), instructions_per_shard=5)
    info = pairs_task.fn(spec)
    release = publish_release(store, spec.name, ShardedTables(completion_order=order), {}, {}, max_shard_rows=7)
    return store, info, Path(release.uri), result.instructions


def _read(folder: Path, config: str, split: str) -> list[dict[str, Any]]:
    files = sorted(folder.glob(f"{config}/{split}-*.parquet"))
    return [row for path in files for row in pq.read_table(path).to_pylist()]


@pytest.mark.parametrize(("order", "chosen"), [("model", "m-charlie"), ("slot", "m-delta")])
def test_six_splits_decontamination_and_completion_order(tmp_path: Path, order: str, chosen: str) -> None:
    store, info, folder, instructions = _release(tmp_path, order)

    # ingest keeps the instruction pool whole (as the original data); it records every TQA question
    assert sorted(i.source for i in instructions).count("sharegpt") == 10
    assert sorted(store.read_json(BENCHMARK_JSON)["truthful_qa"]) == sorted(TQA)

    # decontamination: the two sharegpt matches leave binarized, listed with their reason
    assert info["binarize_dropped"] == {"contaminated:truthful_qa": 2, "excluded_source": 3}
    listed = store.read_json("binarized/contaminated.json")
    assert [row["reason"] for row in listed] == ["contaminated:truthful_qa"] * 2
    texts = {i.id: i.instruction for i in instructions}
    assert sorted(texts[row["instruction_id"]] for row in listed) == sorted([TQA[0], TQA[3]])
    assert all(row["source"] == "sharegpt" for row in listed)

    # the six splits with H4's sizes and rules
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["counts"]["binarized"] == {
        "train_prefs": 20,
        "test_prefs": 8,
        "train_sft": 20,
        "test_sft": 4,
        "train_gen": 20,
        "test_gen": 4,
    }
    splits = {split: _read(folder, "binarized", split) for split in H4_SPLITS}
    assert {split: len(rows) for split, rows in splits.items()} == manifest["counts"]["binarized"]
    contaminated_ids = {row["instruction_id"] for row in listed}
    every = splits["train_prefs"] + splits["test_prefs"]
    assert len({row["prompt_id"] for row in every}) == 28
    assert not contaminated_ids & {row["instruction_id"] for row in every}
    assert {row["source"] for row in every} == {"evol_instruct", "sharegpt"}
    assert NEAR_MISS in {row["prompt"] for row in every}
    assert splits["train_sft"] == splits["train_prefs"]
    test_ids = {row["prompt_id"] for row in splits["test_prefs"]}
    assert {row["prompt_id"] for row in splits["test_sft"]} < test_ids
    for gen, sft in (("train_gen", "train_sft"), ("test_gen", "test_sft")):
        assert [row["prompt_id"] for row in splits[gen]] == [row["prompt_id"] for row in splits[sft]]
        for g, s in zip(splits[gen], splits[sft], strict=True):
            assert g["messages"] == s["messages"][:1] and [m["role"] for m in g["messages"]] == ["user"]
            assert g["chosen"] == s["chosen"] and g["rejected"] == s["rejected"]
    for row in splits["test_sft"]:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] and row["messages"] == row["chosen"]

    # the completion order decides H4's tie between the two 9s
    assert {row["chosen_model"] for row in every} == {chosen}
    records = _read(folder, "completions", "train")
    assert len(records) == 33  # 20 + 10 + 3: decontamination acts on binarized only
    for record in records:
        models = [c["model"] for c in record["completions"]]
        if order == "model":
            assert models == sorted(models) == record["models"]
        else:
            assert models == [m for m, _ in SLOTS] == record["models"]


def test_h4_sizes_at_the_published_scale() -> None:
    """63,135 rows (H4 after decontamination) with test_size 2000 give H4's published split sizes."""
    keys = [(f"i{n:06d}", f"p{n:06d}") for n in range(63_135)]
    test, sft = assign_splits(keys, 2000, seed=42)
    assert n_test_rows(len(keys), 2000.0) == 2000
    assert (len(keys) - len(test), len(test), len(sft)) == (61_135, 2_000, 1_000)
    assert sft <= test
