"""Split assignment that honours earlier releases: a test row never moves to train, a train row
never moves to test, a test_sft row stays in test_sft; new rows fill what is free."""

from __future__ import annotations

import pytest

from ultrafeedback.tasks.pairs.pairs import assign_splits, gen_messages, n_test_rows, split_binarized


def _keys(n: int, start: int = 0) -> list[tuple[str, str]]:
    return [(f"i{k:05d}", f"p{k:05d}") for k in range(start, start + n)]


def _history(keys: list[tuple[str, str]], test: set[str], sft: set[str]) -> dict[str, str]:
    return {
        prompt: ("test_sft" if ident in sft else "test_other") if ident in test else "train" for ident, prompt in keys
    }


@pytest.mark.parametrize("test_size", [0.1, 0.25, 7])
def test_a_refresh_never_moves_a_published_row(test_size: float) -> None:
    first = _keys(200)
    test1, sft1 = assign_splits(first, test_size, seed=3)
    history = _history(first, test1, sft1)

    grown = _keys(300)  # 100 new rows
    test2, sft2 = assign_splits(grown, test_size, seed=3, history=history)
    old = {ident for ident, _ in first}
    assert test2 & old == test1  # every published test row stays test, no published train row joins it
    assert sft2 & old == sft1
    assert sft2 <= test2 and len(sft2) == len(test2) // 2
    assert len(test2) == max(len(test1), n_test_rows(len(grown), test_size))
    # without history the grown set is split afresh: some published rows would move
    fresh, _ = assign_splits(grown, test_size, seed=3)
    assert fresh & old != test1 or test_size == 7


def test_rows_that_left_and_came_back_keep_their_split() -> None:
    keys = _keys(50)
    test, sft = assign_splits(keys, 10, seed=1)
    history = _history(keys, test, sft)
    back = keys[25:]  # half the rows are gone in a later release
    test2, sft2 = assign_splits(back, 10, seed=1, history=history)
    assert test2 == {ident for ident, _ in back if ident in test}  # no new rows: nothing fills the gap
    assert sft2 == {ident for ident, _ in back if ident in sft}


def test_an_older_two_split_release_keeps_test_rows_and_halves_them_anew() -> None:
    keys = _keys(40)
    test, _ = assign_splits(keys, 8, seed=2)
    history = {prompt: "test" if ident in test else "train" for ident, prompt in keys}  # no test_sft known
    test2, sft2 = assign_splits(keys, 8, seed=2, history=history)
    assert test2 == test and len(sft2) == 4 and sft2 <= test


def test_split_binarized_gives_the_six_h4_splits() -> None:
    rows = [
        {
            "instruction_id": ident,
            "prompt_id": prompt,
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "a"}],
        }
        for ident, prompt in _keys(21)
    ]
    splits = split_binarized(rows, 5, seed=4)
    assert {k: len(v) for k, v in splits.items()} == {
        "train_prefs": 16,
        "test_prefs": 5,
        "train_sft": 16,
        "test_sft": 2,
        "train_gen": 16,
        "test_gen": 2,
    }
    assert splits["train_sft"] == splits["train_prefs"]
    assert all(row["messages"] == [{"role": "user", "content": row["prompt_id"]}] for row in splits["test_gen"])
    assert gen_messages([{"role": "user", "content": "q"}]) == [{"role": "user", "content": "q"}]
