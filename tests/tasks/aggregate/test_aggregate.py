"""Aggregation with Dask on a real LocalCluster, over Parquet parts of ScoredCompletion rows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from ultrafeedback.infra.dask_cluster import dask_client  # noqa: E402
from ultrafeedback.infra.store import arrow_schema  # noqa: E402
from ultrafeedback.records import ScoredCompletion  # noqa: E402
from ultrafeedback.tasks.aggregate.aggregate import TOKENIZER, AggregateResult, aggregate, count_tokens  # noqa: E402
from ultrafeedback.tasks.pairs.pairs import build_pairs  # noqa: E402


def _row(iid: str, pos: int, model: str, ratings: dict[str, str | None], overall: float | None, **kw) -> dict:
    numeric = [int(v) for v in ratings.values() if v not in (None, "N/A")]
    values = {
        "completion_id": f"{iid}-{pos}",
        "instruction_id": iid,
        "source": kw.pop("source", "flan"),
        "instruction": kw.pop("instruction", "Say hi, please."),  # 5 tokens: Say hi , please .
        "correct_answers": ["None"],
        "incorrect_answers": ["None"],
        "models": ["alpha", "beta", "gamma"],
        "position": pos,
        "model": model,
        "principle": "helpfulness",
        "system_prompt": "",
        "response": kw.pop("response", "Hi there!"),  # 3 tokens
        "critique": kw.pop("critique", "Good."),  # 2 tokens
        **{f"{aspect}_rating": value for aspect, value in ratings.items()},
        "overall_score": overall,
        "fine_grained_score": sum(numeric) / len(numeric) if numeric else None,
        "judge_model": kw.pop("judge_model", "heuristic-v1"),
        "judge_kind": kw.pop("judge_kind", "heuristic"),
    }
    values.update(kw)
    return ScoredCompletion(**values).model_dump()


def _ratings(i: str | None, h: str | None, t: str | None, p: str | None) -> dict[str, str | None]:
    return {"instruction_following": i, "honesty": h, "truthfulness": t, "helpfulness": p}


@pytest.fixture(scope="module")
def scored_rows() -> list[dict]:
    return [
        # i1 (flan): fine-grained 4, 4, 2 -> 2 non-tied pairs; overall 10, 7, 7 -> 2 pairs
        _row("i1", 0, "alpha", _ratings("4", "4", "4", "4"), 10.0),
        _row("i1", 1, "beta", _ratings("5", "N/A", "3", "4"), 7.0),  # N/A excluded: mean 4
        _row("i1", 2, "gamma", _ratings("2", "2", "2", "2"), 7.0, response="Hello, world! Bye."),  # 6 tokens
        # i2 (sharegpt): one unrated aspect, one null critique, one null score
        _row(
            "i2",
            0,
            "alpha",
            _ratings("3", None, "5", "4"),
            None,
            source="sharegpt",
            instruction="東京 is big",  # 3 tokens
            critique=None,
        ),
        _row("i2", 1, "beta", _ratings("1", "1", "1", "1"), 2.5, source="sharegpt", instruction="東京 is big"),
        _row(
            "i2",
            2,
            "gamma",
            _ratings("5", "5", "5", "5"),
            9.5,
            source="sharegpt",
            instruction="東京 is big",
            judge_model="gpt-judge",
            judge_kind="model",
        ),
    ]


@pytest.fixture(scope="module")
def scored_glob(tmp_path_factory: pytest.TempPathFactory, scored_rows: list[dict]) -> str:
    folder = tmp_path_factory.mktemp("scored")
    schema = arrow_schema(ScoredCompletion)
    # three parts, one instruction split across two of them, as checkpointed shards are
    for index, chunk in enumerate([scored_rows[:2], scored_rows[2:4], scored_rows[4:]]):
        pq.write_table(pa.Table.from_pylist(chunk, schema=schema), folder / f"part-{index}.parquet")
    return str(folder / "*.parquet")


@pytest.fixture(scope="module")
def client():
    with dask_client(None, 1) as client:
        yield client


@pytest.fixture(scope="module")
def result(scored_glob: str, client) -> AggregateResult:
    return aggregate(scored_glob, {}, client)


def test_table1_row(result: AggregateResult, scored_rows: list[dict]) -> None:
    stats = result.stats
    assert stats["prompts"] == 2
    assert stats["completions"] == 6
    assert stats["critiques"] == 5
    assert stats["ratings"] == 23  # 24 aspect slots, one unrated; N/A is a rating
    assert stats["feedback_items"] == 28
    assert stats["tokenizer"] == TOKENIZER == "regex-wordpunct"
    assert stats["avg_prompt_tokens"] == round((5 + 3) / 2, 1)  # per prompt, not per completion row
    assert stats["avg_response_tokens"] == round((3 * 5 + 6) / 6, 1)
    assert stats["avg_critique_tokens"] == 2.0
    assert stats["duplicate_completion_ids"] == 0
    assert stats["heuristic_completions"] == 5
    frame = pd.DataFrame(scored_rows)
    assert stats["pairs_fine_grained"] == len(build_pairs(frame, "fine_grained")) == 5
    assert stats["pairs_overall"] == len(build_pairs(frame, "overall")) == 3
    assert stats["pairs"] == stats["pairs_fine_grained"] and stats["pair_score"] == "fine_grained"


def test_leaderboard_means_exclude_na(result: AggregateResult) -> None:
    board = result.leaderboard.set_index("model")
    assert list(result.leaderboard["model"]) == ["alpha", "gamma", "beta"]  # by mean fine-grained: 4, 3.5, 2.5
    beta = board.loc["beta"]
    assert beta["completions"] == 2
    assert beta["mean_honesty"] == 1.0  # "N/A" is excluded, not counted as 0
    assert beta["mean_instruction_following"] == 3.0
    assert beta["mean_fine_grained"] == pytest.approx((4 + 1) / 2)
    assert beta["mean_overall"] == pytest.approx((7.0 + 2.5) / 2)
    alpha = board.loc["alpha"]
    assert alpha["mean_honesty"] == 4.0  # the unrated aspect is excluded
    assert alpha["mean_overall"] == 10.0  # null overall excluded
    assert board.loc["gamma", "mean_response_tokens"] == pytest.approx((6 + 3) / 2)


def test_source_table(result: AggregateResult) -> None:
    sources = result.by_source.set_index("source")
    assert sources.loc["flan", "prompts"] == 1 and sources.loc["flan", "completions"] == 3
    assert sources.loc["sharegpt", "mean_overall"] == pytest.approx((2.5 + 9.5) / 2)


def test_distributions(result: AggregateResult) -> None:
    dist = result.rating_distribution.set_index("aspect")
    assert dist.loc["honesty", "N/A"] == 1
    assert dist.loc["honesty", "null"] == 1
    assert dist.loc["honesty", ["1", "2", "4", "5"]].tolist() == [1, 1, 1, 1]
    assert dist.loc["instruction_following"].drop(["N/A", "null", "other"]).sum() == 6
    hist = dict(zip(result.overall_histogram["bucket"], result.overall_histogram["count"], strict=True))
    assert hist["10"] == 1 and hist["7"] == 2 and hist["9"] == 1 and hist["2"] == 1 and hist["null"] == 1
    assert sum(hist.values()) == 6
    assert result.completions_per_prompt.to_dict("records") == [{"completions": 3, "prompts": 2}]
    judges = {(r["judge_model"], r["judge_kind"]): r["completions"] for r in result.tables()["judges"]}
    assert judges == {("heuristic-v1", "heuristic"): 5, ("gpt-judge", "model"): 1}


def test_result_is_json_and_round_trips(result: AggregateResult) -> None:
    data = json.loads(json.dumps(result.to_dict()))
    assert "elapsed_s" not in data  # run-specific; kept out so reruns hash the same
    back = AggregateResult.from_dict(data)
    assert back.to_dict() == data
    rows = result.tables()["leaderboard"]
    assert isinstance(rows, list) and isinstance(rows[0], dict) and "model" in rows[0]
    assert all(v is None or isinstance(v, str | int | float) for row in rows for v in row.values())


def test_without_a_client_the_local_scheduler_gives_the_same_numbers(scored_glob: str, result) -> None:
    assert aggregate(scored_glob, {}, None).to_dict() == result.to_dict()


def test_overall_pair_count_can_be_the_headline(scored_glob: str, client) -> None:
    assert aggregate(scored_glob, {}, client, pair_score="overall").stats["pairs"] == 3


def test_duplicate_completion_ids_are_reported(tmp_path: Path, scored_rows: list[dict], client) -> None:
    schema = arrow_schema(ScoredCompletion)
    pq.write_table(pa.Table.from_pylist(scored_rows, schema=schema), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pylist(scored_rows[:2], schema=schema), tmp_path / "b.parquet")
    assert aggregate(str(tmp_path), {}, client).stats["duplicate_completion_ids"] == 2


def test_missing_input_is_a_clear_error(tmp_path: Path, client) -> None:
    with pytest.raises(FileNotFoundError, match="no scored Parquet"):
        aggregate(str(tmp_path / "nothing" / "*.parquet"), {}, client)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("Hello, world!", 4),
        ("don't", 3),
        ("naïve café – 東京タワー!!", 5),
        ("  ", 0),
        ("x\u00a0y", 2),
        (None, None),
    ],
)
def test_regex_wordpunct_tokenizer(text: str | None, tokens: int | None) -> None:
    (count,) = count_tokens([text]).tolist()
    assert (count != count and tokens is None) or count == tokens


def test_aggregation_runs_on_a_dask_cluster_of_separate_processes(dask_address: str, scored_glob: str, result) -> None:
    with dask_client(dask_address) as remote:
        before = remote.run(lambda dask_worker: dask_worker.state.transition_counter)
        on_cluster = aggregate(scored_glob, {}, remote)
        workers = remote.run(os.getpid)
        after = remote.run(lambda dask_worker: dask_worker.state.transition_counter)
    assert on_cluster.to_dict() == result.to_dict()
    assert len(workers) == 1 and os.getpid() not in workers.values()
    assert all(after[w] > before[w] for w in after)  # the worker process computed it
