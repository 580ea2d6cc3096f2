"""A release's changelog: rows added, removed and changed per config and split with the reasons,
in the manifest and on the card, checked against two releases with known differences."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tests.tasks.publish.changelog_check import check_changelog, read_split
from ultrafeedback.infra.store import Store
from ultrafeedback.records import ScoredCompletion
from ultrafeedback.tasks.pairs.pairs import binarize, build_pairs, split_binarized
from ultrafeedback.tasks.publish.changelog import Digests, diff_releases, row_digests
from ultrafeedback.tasks.publish.history import split_history
from ultrafeedback.tasks.publish.publish import ReleaseTables, publish_release

MODELS = ["m-a", "m-b", "m-c", "m-d"]


def _rows(instruction: str, models: list[str], scores: list[float], response: str = "") -> list[dict[str, Any]]:
    return [
        ScoredCompletion(
            completion_id=f"{instruction}-{model}",
            instruction_id=instruction,
            source="src",
            instruction=f"Prompt {instruction}",
            correct_answers=["None"],
            incorrect_answers=["None"],
            models=models,
            position=position,
            model=model,
            principle="helpfulness",
            system_prompt="Be helpful.",
            response=f"{model} on {instruction}{response if position == 0 else ''}",
            helpfulness_rating=str(int(score) // 2 or 1),
            helpfulness_rationale="r",
            critique="c",
            overall_score=score,
            fine_grained_score=score / 2,
            judge_model="judge",
            judge_kind="model",
        ).model_dump()
        for position, (model, score) in enumerate(zip(models, scores, strict=True))
    ]


SCORES = [8.0, 5.0, 3.0, 6.0]


def _v1() -> list[dict[str, Any]]:
    return [row for name in "ABCDEGHIJK" for row in _rows(name, MODELS, SCORES)]


def _v2() -> list[dict[str, Any]]:
    rows = [row for name in "AGHIJK" for row in _rows(name, MODELS, SCORES)]
    rows += _rows("B", ["m-a", "m-b", "m-c", "m-e"], SCORES)  # m-d left, m-e joined
    rows += _rows("C", MODELS, SCORES, response=" (regenerated)")  # one response differs
    rows += _rows("D", MODELS, [8.0, 7.0, 3.0, 6.0])  # the same texts, re-judged
    rows += _rows("F", MODELS, SCORES)  # new; E is gone
    return rows


def _publish(store: Store, rows: list[dict[str, Any]], **kwargs: Any) -> Any:
    scored = pd.DataFrame(rows)
    binarized = split_binarized(binarize(scored, "h4", 42), 3, seed=42, history=split_history(store))
    tables = ReleaseTables(scored, build_pairs(scored), binarized)
    return publish_release(store, "unit", tables, {}, {}, **kwargs)


@pytest.fixture
def releases(tmp_path: Path) -> tuple[Any, Any]:
    store = Store(str(tmp_path / "store"), "unit")
    first = _publish(store, _v1())
    second = _publish(
        store,
        _v2(),
        explain_removed=lambda ids: dict.fromkeys(ids, "quota_reduced"),
        change_notes=["source `src`: 1 of the 10 instructions released in v1 were removed (quota_reduced)"],
    )
    return first, second


def test_the_changelog_names_what_changed_and_why(releases: tuple[Any, Any]) -> None:
    first, second = releases
    assert first.manifest["changes"] == {"parent": None, "configs": None, "notes": []}
    changes = second.manifest["changes"]
    assert changes["parent"] == 1 and changes["parent_content_hash"] == first.manifest["content_hash"]
    assert changes["configs"]["completions"]["train"] == {
        "added": 1,
        "removed": 1,
        "changed": 3,
        "unchanged": 6,
        "reasons": {
            "added": {"new_instruction": 1},
            "removed": {"quota_reduced": 1},
            "changed": {"new_model": 1, "re_judged": 1, "regenerated": 1},
        },
    }
    pairs = changes["configs"]["pairs"]["train"]
    assert pairs["reasons"]["added"].get("new_instruction") and pairs["reasons"]["removed"].get("quota_reduced")
    assert set(pairs["reasons"]["added"]) <= {"new_instruction", "new_model", "re_judged"}
    # a test row stays test, a train row stays train (the split honours v1)
    for split in ("train_prefs", "test_prefs", "train_sft", "test_sft", "train_gen", "test_gen"):
        assert "moved_split" not in changes["configs"]["binarized"][split]["reasons"]["added"]
    check_changelog(Path(first.uri), Path(second.uri), second.manifest)
    card = (Path(second.uri) / "README.md").read_text()
    assert "## Changes since v1" in card and "new_instruction 1" in card and "quota_reduced" in card
    assert "1 of the 10 instructions released in v1 were removed" in card
    assert json.loads((Path(second.uri) / "manifest.json").read_text())["changes"] == changes
    first_card = (Path(first.uri) / "README.md").read_text()
    assert "The first release of this dataset" in first_card


def test_test_rows_of_the_parent_never_move_to_train(releases: tuple[Any, Any]) -> None:
    first, second = releases
    before = {row["prompt_id"] for row in read_split(Path(first.uri), "binarized", "test_prefs")}
    after_train = {row["prompt_id"] for row in read_split(Path(second.uri), "binarized", "train_prefs")}
    after_test = {row["prompt_id"] for row in read_split(Path(second.uri), "binarized", "test_prefs")}
    assert before and not before & after_train
    assert before & (after_train | after_test) <= after_test


def test_row_digests_see_every_value_and_the_order_of_lists() -> None:
    table = pa.table(
        {
            "a": ["x", "x", "x", None],
            "b": [[1.0, 2.0], [2.0, 1.0], [1.0, 2.0], [1.0, 2.0]],
            "c": [{"k": "v"}, {"k": "v"}, {"k": "w"}, {"k": "v"}],
        }
    )
    digests = row_digests(table)
    assert len(set(digests.tolist())) == 4
    assert np.array_equal(row_digests(table.slice(2)), digests[2:])  # independent of the batch


def test_a_parent_without_a_split_counts_its_rows_as_a_new_split() -> None:
    parent, new = Digests(), Digests()
    rows = pa.table({"prompt_id": ["p"], "instruction_id": ["i"], "x": [1]})
    parent.add("binarized", "train_prefs", rows)
    new.add("binarized", "train_prefs", rows)
    new.add("binarized", "train_sft", rows)
    changes = diff_releases(parent, new)["binarized"]
    assert changes["train_prefs"]["unchanged"] == 1
    assert changes["train_sft"]["reasons"]["added"] == {"new_split": 1}
