"""Specs that contradict themselves are refused when they are read, one line per contradiction
naming the keys; ``validate`` and ``build`` exit 2 before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.ultrafeedback.test_cli import assert_refused_before_prefect, run_cli, write_spec
from ultrafeedback.cli import EXIT_INPUT, main
from ultrafeedback.spec import validate_dict
from ultrafeedback.spec_checks import SpecContradiction, contradictions


def base(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "t",
        "sources": [
            {"name": "a", "loader": "jsonl", "path": "a.jsonl", "quota": 10},
            {"name": "b", "loader": "jsonl", "path": "b.jsonl", "quota": 5},
        ],
        "models": [{"id": f"m{i}", "backend": "embedded"} for i in range(4)],
        "completions_per_instruction": 4,
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def refused(data: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecContradiction) as err:
        validate_dict(data)
    assert str(err.value).splitlines() == err.value.lines
    return err.value.lines


def test_a_consistent_spec_has_no_contradiction():
    assert contradictions(validate_dict(base())) == []


@pytest.mark.parametrize(
    ("extra", "start"),
    [
        (
            {"pairs": {"score": "overall"}, "judge": {"critique": False}, "binarize": {"rule": "argilla"}},
            "pairs.score=overall, judge.critique=false: pairs are ranked by the critique's overall score",
        ),
        (
            {"judge": {"critique": False}},
            "binarize.rule=h4, judge.critique=false: the H4 rule picks the chosen completion by the critique's",
        ),
        (
            {"judge": {"aspects": []}, "pairs": {"score": "overall"}, "binarize": {"rule": "argilla"}},
            "binarize.rule=argilla, judge.aspects=[]: the Argilla rule picks the chosen completion by the mean",
        ),
        (
            {"judge": {"aspects": []}},
            "pairs.score=fine_grained, judge.aspects=[]: pairs are ranked by the mean of the aspect ratings",
        ),
        (
            {"completions_per_instruction": 5},
            "completions_per_instruction=5, models: 5 distinct models per instruction, but the pool has only 4",
        ),
        ({"binarize": {"exclude_sources": ["truthful_qa"]}}, "binarize.exclude_sources: 'truthful_qa' is not a source"),
        ({"binarize": {"exclude_sources": ["a", "b"]}}, "binarize.exclude_sources, sources: every source is excluded"),
        ({"binarize": {"test_size": 2.5}}, "binarize.test_size=2.5: neither a fraction below 1 nor a whole number"),
        (
            {"gates": {"min_instructions": 16}},
            "gates.min_instructions=16, sources[*].quota: the quotas add up to at most 15 instructions",
        ),
        (
            {"gates": {"min_pairs": 91}},
            "gates.min_pairs=91, sources[*].quota, completions_per_instruction=4: at most 90 pairs",
        ),
        (
            {"judge": {"sampling": {"temperature": 0, "cut_at": "\n\n\n\n"}}},
            "judge.sampling.cut_at: the cut applies to generated completions only, never to the judge",
        ),
        ({"sampling": {"cut_at": ""}}, "sampling.cut_at: an empty cut would remove every response"),
        (
            {"publish": {"targets": [{"kind": "store"}, {"kind": "local"}]}},
            "publish.targets[1].kind=local, publish.targets[1].uri: the folder or bucket URL is missing",
        ),
        (
            {"publish": {"targets": [{"kind": "store", "uri": "/elsewhere"}]}},
            "publish.targets[0].kind=store, publish.targets[0].uri: a store target publishes to the store",
        ),
    ],
)
def test_each_contradiction_is_one_line_naming_its_keys(extra: dict[str, Any], start: str):
    (line,) = refused(base(**extra))
    assert line.startswith(start), line
    assert "\n" not in line


def test_critiques_alone_rank_pairs_and_binarize_without_aspects():
    assert contradictions(validate_dict(base(judge={"aspects": []}, pairs={"score": "overall"}))) == []


def test_every_contradiction_is_listed_not_only_the_first():
    lines = refused(base(judge={"critique": False, "aspects": []}, completions_per_instruction=6))
    assert [line.split(":")[0] for line in lines] == [
        "pairs.score=fine_grained, judge.aspects=[]",
        "binarize.rule=h4, judge.critique=false",
        "completions_per_instruction=6, models",
    ]


def test_a_source_without_quota_bounds_nothing():
    data = base(gates={"min_instructions": 10**6, "min_pairs": 10**9})
    data["sources"][1].pop("quota")
    assert contradictions(validate_dict(data)) == []


# --------------------------------------------------------------------------- the command line


def test_validate_exits_2_with_one_line_per_contradiction(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    spec = write_spec(tmp_path, pairs={"score": "overall"}, judge={"critique": False})
    assert main(["validate", str(spec)]) == EXIT_INPUT
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: pairs.score=overall, judge.critique=false: pairs are ranked by the critique's overall score, but no "
        "critique is asked for, so no completion has an overall score (set judge.critique: true or pairs.score: "
        "fine_grained)",
        "error: binarize.rule=h4, judge.critique=false: the H4 rule picks the chosen completion by the critique's "
        "overall score, but no critique is asked for, so no completion has an overall score (set judge.critique: "
        "true or binarize.rule: argilla)",
    ]


def test_an_override_can_make_a_spec_contradict_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["validate", str(write_spec(tmp_path)), "--set", "completions_per_instruction=2"]) == EXIT_INPUT
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: completions_per_instruction=2, models: 2 distinct models"), line


def test_build_refuses_a_contradiction_before_prefect_starts(tmp_path: Path):
    spec = write_spec(tmp_path, judge={"critique": False}, binarize={"rule": "h4"}, pairs={"score": "fine_grained"})
    assert_refused_before_prefect(run_cli("build", str(spec)), "error: binarize.rule=h4, judge.critique=false: ")
