"""Pairs (all non-tied), the H4 and Argilla binarization rules, and the train/test split."""

from __future__ import annotations

import hashlib
import os
import random
from collections import Counter

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from ultrafeedback.keys import content_key  # noqa: E402
from ultrafeedback.records import ScoredCompletion  # noqa: E402
from ultrafeedback.tasks.pairs.pairs import (  # noqa: E402
    _pair_key,
    binarize,
    build_pairs,
    n_test_rows,
    split_binarized,
)

MODELS = ["m-a", "m-b", "m-c", "m-d"]


def _row(iid: str, pos: int, fg: float | None, overall: float | None, **kw: object) -> dict:
    """One validated ScoredCompletion row (model_dump), as the scored stage stores it."""
    values = {
        "completion_id": f"{iid}-c{pos}",
        "instruction_id": iid,
        "source": "evol_instruct",
        "instruction": f"prompt of {iid}",
        "correct_answers": ["None"],
        "incorrect_answers": ["None"],
        "models": MODELS,
        "position": pos,
        "model": MODELS[pos % len(MODELS)],
        "principle": "helpfulness",
        "system_prompt": "be helpful",
        "response": f"response {pos} of {iid}",
        "critique": "fine",
        "overall_score": overall,
        "fine_grained_score": fg,
        "judge_model": "heuristic-v1",
        "judge_kind": "heuristic",
    }
    values.update(kw)
    return ScoredCompletion(**values).model_dump()


def _frame(spec: dict[str, list[tuple[float | None, float | None]]]) -> pd.DataFrame:
    """instruction id -> [(fine_grained, overall) per slot]."""
    rows = [_row(iid, pos, fg, ov) for iid, slots in spec.items() for pos, (fg, ov) in enumerate(slots)]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- build_pairs


def test_pairs_drop_ties_scores_4_4_3_2_give_5() -> None:
    scored = _frame({"i1": [(4, 1), (4, 2), (3, 3), (2, 4)]})
    pairs = build_pairs(scored, "fine_grained")
    assert len(pairs) == 5  # C(4,2) = 6 minus the one tie
    assert all(p.score_chosen > p.score_rejected for p in pairs)
    assert {(p.chosen_id, p.rejected_id) for p in pairs} == {
        ("i1-c0", "i1-c2"),
        ("i1-c0", "i1-c3"),
        ("i1-c1", "i1-c2"),
        ("i1-c1", "i1-c3"),
        ("i1-c2", "i1-c3"),
    }
    by_ids = {(p.chosen_id, p.rejected_id): p for p in pairs}
    assert by_ids[("i1-c0", "i1-c3")].margin == 2.0
    assert by_ids[("i1-c0", "i1-c3")].chosen == "response 0 of i1"
    assert by_ids[("i1-c0", "i1-c3")].rejected_model == "m-d"
    for pair in pairs:
        assert pair.pair_id == content_key("pair", pair.chosen_id, pair.rejected_id)
        assert pair.prompt == "prompt of i1" and pair.instruction_id == "i1"


def test_pairs_by_overall_score_use_the_other_column() -> None:
    scored = _frame({"i1": [(4, 1), (4, 2), (3, 3), (2, 4)]})
    pairs = build_pairs(scored, "overall")
    assert len(pairs) == 6  # overall scores are all distinct
    best = [p for p in pairs if p.chosen_id == "i1-c3"]
    assert len(best) == 3 and all(p.score_chosen == 4 for p in best)


def test_null_scores_take_part_in_no_pair() -> None:
    scored = _frame({"i1": [(5, 9), (None, None), (3, 2)], "i2": [(None, 1), (2, 2)]})
    pairs = build_pairs(scored, "fine_grained")
    assert [(p.chosen_id, p.rejected_id) for p in pairs] == [("i1-c0", "i1-c2")]


def test_equal_means_from_different_arithmetic_are_ties() -> None:
    # The same mean computed two ways can differ in the last bit; it is still a tie.
    a, c = 0.1 + 0.2, 0.3
    assert a != c
    scored = _frame({"i1": [(a, 1), (c, 2), (2.0, 3)]})
    assert len(build_pairs(scored, "fine_grained")) == 2


def test_pairs_order_does_not_depend_on_input_order() -> None:
    spec = {f"i{n}": [(random.Random(n * 10 + s).randint(1, 5), 1.0) for s in range(4)] for n in range(20)}
    scored = _frame(spec)
    shuffled = scored.sample(frac=1.0, random_state=3)
    first, second = build_pairs(scored), build_pairs(shuffled)
    assert [p.pair_id for p in first] == [p.pair_id for p in second]
    assert [p.instruction_id for p in first] == sorted(p.instruction_id for p in first)


def test_a_repeated_completion_id_counts_once_last_write_wins() -> None:
    scored = _frame({"i1": [(4, 1), (3, 1)]})
    stale = scored.iloc[[1]].assign(fine_grained_score=5.0)
    pairs = build_pairs(pd.concat([stale, scored]), "fine_grained")
    assert [(p.chosen_id, p.rejected_id) for p in pairs] == [("i1-c0", "i1-c1")]


def test_fast_pair_key_equals_the_contract_key() -> None:
    for chosen, rejected in [("abc", "def"), ('é"\\x\n', "東京"), ("\u2028", "\x00"), ("a/b", "\ud7ff")]:
        assert _pair_key(chosen, rejected) == content_key("pair", chosen, rejected)


def test_unknown_score_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="score must be one of"):
        build_pairs(_frame({"i1": [(1, 1), (2, 2)]}), "mean")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- binarize: H4


def test_h4_chosen_is_first_max_overall_and_ties_are_kept() -> None:
    scored = _frame({"i1": [(1, 7), (1, 9), (5, 9), (1, 3)], "i2": [(3, 5), (4, 5)]})
    rows = {r["instruction_id"]: r for r in binarize(scored, "h4", seed=42)}
    assert rows["i1"]["chosen_id"] == "i1-c1"  # first of the two 9s, despite the fine-grained score
    assert rows["i1"]["score_chosen"] == 9
    assert rows["i1"]["rejected_id"] != "i1-c1"
    # i2: both completions score 5; H4 keeps the pair (the responses differ)
    assert rows["i2"]["score_chosen"] == rows["i2"]["score_rejected"] == 5
    assert {rows["i2"]["chosen_id"], rows["i2"]["rejected_id"]} == {"i2-c0", "i2-c1"}


def test_h4_rejected_never_repeats_chosen_signature() -> None:
    rows = [
        _row("i1", 0, 3, 8, model="m-x", response="same"),
        _row("i1", 1, 3, 8, model="m-x", response="same"),
        _row("i1", 2, 3, 2, model="m-y", response="other"),
    ]
    for seed in range(20):
        (row,) = binarize(pd.DataFrame(rows), "h4", seed=seed)
        assert row["rejected_id"] == "i1-c2"


def test_h4_skips_instructions_with_fewer_than_two_scored_completions() -> None:
    scored = _frame({"i1": [(3, 5)], "i2": [(3, 5), (3, None)], "i3": [(3, 5), (2, 4)]})
    assert [r["instruction_id"] for r in binarize(scored, "h4", seed=1)] == ["i3"]


def test_h4_is_deterministic_per_instruction_not_per_run() -> None:
    spec = {f"i{n:02d}": [(1, float(s % 3)) for s in range(4)] for n in range(30)}
    scored = _frame(spec)
    base = {r["instruction_id"]: r["rejected_id"] for r in binarize(scored, "h4", seed=7)}
    again = {r["instruction_id"]: r["rejected_id"] for r in binarize(scored.sample(frac=1, random_state=1), "h4", 7)}
    assert base == again
    # the row of an instruction does not change when others are added or removed
    subset = scored[scored["instruction_id"].isin(["i03", "i17"])]
    assert {r["instruction_id"]: r["rejected_id"] for r in binarize(subset, "h4", seed=7)} == {
        "i03": base["i03"],
        "i17": base["i17"],
    }
    other_seed = {r["instruction_id"]: r["rejected_id"] for r in binarize(scored, "h4", seed=8)}
    assert other_seed != base  # 30 instructions x 3 candidates: a different seed changes some


def test_binarized_rows_are_trl_conversations() -> None:
    scored = _frame({"i1": [(2, 4), (4, 8)]})
    (row,) = binarize(scored, "h4", seed=0)
    prompt = "prompt of i1"
    assert row["prompt"] == prompt
    assert row["prompt_id"] == hashlib.sha256(prompt.encode()).hexdigest()
    assert row["chosen"] == [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": "response 1 of i1"},
    ]
    assert row["rejected"][1]["content"] == "response 0 of i1"
    assert row["messages"] == row["chosen"] and row["messages"] is not row["chosen"]
    assert (row["score_chosen"], row["score_rejected"]) == (8.0, 4.0)
    assert (row["chosen_model"], row["rejected_model"], row["source"]) == ("m-b", "m-a", "evol_instruct")


def test_exclude_sources_drops_their_rows() -> None:
    rows = [_row("i1", p, 3, 5 + p, source="truthful_qa") for p in range(2)]
    rows += [_row("i2", p, 3, 5 + p) for p in range(2)]
    out = binarize(pd.DataFrame(rows), "h4", seed=1, exclude_sources=["truthful_qa"])
    assert [r["instruction_id"] for r in out] == ["i2"]


# --------------------------------------------------------------------------- binarize: Argilla


def test_argilla_uses_mean_rating_and_drops_ties() -> None:
    scored = _frame(
        {
            "i1": [(3.5, 10), (4.25, 1), (4.25, 2), (2.0, 3)],  # best mean, first in slot order: c1
            "i2": [(3.0, 4), (3.0, 9)],  # all tied on the mean: dropped
            "i3": [(5.0, 1), (5.0, 2), (4.0, 3)],  # two best tied; rejected must be strictly lower
        }
    )
    rows = {r["instruction_id"]: r for r in binarize(scored, "argilla", seed=3)}
    assert set(rows) == {"i1", "i3"}
    assert rows["i1"]["chosen_id"] == "i1-c1" and rows["i1"]["score_chosen"] == 4.25
    assert rows["i1"]["rejected_id"] in {"i1-c0", "i1-c3"}
    assert rows["i3"]["chosen_id"] == "i3-c0" and rows["i3"]["rejected_id"] == "i3-c2"
    for seed in range(10):
        for row in binarize(scored, "argilla", seed=seed):
            assert row["score_chosen"] > row["score_rejected"]


def test_dropped_instructions_are_counted_by_reason() -> None:
    rows = [_row("tq", p, 3, 5 + p, source="truthful_qa") for p in range(2)]
    rows += [_row("one", 0, 3, 5)]
    rows += [_row("tied", p, 4.0, 6) for p in range(3)]
    rows += [_row("same", p, 3, 7, model="m-x", response="same") for p in range(2)]
    rows += [_row("ok", p, 1.0 + p, 1.0 + p) for p in range(2)]
    frame = pd.DataFrame(rows)
    h4: Counter[str] = Counter()
    assert [r["instruction_id"] for r in binarize(frame, "h4", 1, ["truthful_qa"], h4)] == ["ok", "tied"]
    assert h4 == {"excluded_source": 1, "fewer_than_2_scored": 1, "identical_completions": 1}
    argilla: Counter[str] = Counter()
    assert [r["instruction_id"] for r in binarize(frame, "argilla", 1, ["truthful_qa"], argilla)] == ["ok"]
    assert argilla == {"excluded_source": 1, "fewer_than_2_scored": 1, "all_tied": 2}


def test_unknown_rule_is_rejected() -> None:
    with pytest.raises(ValueError, match="rule"):
        binarize(_frame({"i1": [(1, 1), (2, 2)]}), "zephyr")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- splits


def _rows(n: int) -> list[dict]:
    return [
        {
            "prompt_id": hashlib.sha256(f"p{i}".encode()).hexdigest(),
            "instruction_id": f"id{i:05d}",
            "messages": [{"role": "user", "content": f"p{i}"}, {"role": "assistant", "content": "a"}],
            "i": i,
        }
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("n", "test_size", "expected"),
    [
        (100, 0.1, 10),
        (101, 0.1, 11),  # fractions round up, as datasets' train_test_split
        (100, 7, 7),
        (100, 7.0, 7),  # the spec's float field turns YAML 7 into 7.0: still a count
        (2, 0.01, 1),
        (2, 0.99, 1),
        (5, 50, 4),  # never all rows into test
        (1, 0.5, 0),
        (0, 0.5, 0),
    ],
)
def test_split_sizes(n: int, test_size: float, expected: int) -> None:
    assert n_test_rows(n, test_size) == expected
    splits = split_binarized(_rows(n), test_size, seed=42)
    assert len(splits["test_prefs"]) == expected
    assert len(splits["train_prefs"]) == n - expected


@pytest.mark.parametrize("bad", [-1, 1.5, float("nan")])
def test_split_rejects_bad_sizes(bad: float) -> None:
    with pytest.raises(ValueError):
        split_binarized(_rows(10), bad, seed=1)


def test_split_is_deterministic_and_stable_when_rows_are_added() -> None:
    rows = _rows(200)
    first = split_binarized(rows, 0.1, seed=5)
    assert first == split_binarized(rows, 0.1, seed=5)
    assert [r["i"] for r in first["train_prefs"]] == sorted(r["i"] for r in first["train_prefs"])
    test_ids = {r["i"] for r in first["test_prefs"]}
    assert test_ids != {r["i"] for r in split_binarized(rows, 0.1, seed=6)["test_prefs"]}
    # shuffling the input does not change membership
    shuffled = random.Random(1).sample(rows, len(rows))
    assert {r["i"] for r in split_binarized(shuffled, 0.1, seed=5)["test_prefs"]} == test_ids
    # adding rows moves rows only across the boundary: old test rows are nested, never reshuffled
    grown = split_binarized(_rows(400), 0.1, seed=5)
    grown_old = {r["i"] for r in grown["test_prefs"] if r["i"] < 200}
    assert grown_old <= test_ids or test_ids <= grown_old
