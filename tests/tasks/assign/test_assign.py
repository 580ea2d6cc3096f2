from __future__ import annotations

from collections import Counter

from ultrafeedback.records import Instruction
from ultrafeedback.spec import validate_dict
from ultrafeedback.tasks.assign.assign import assign, shard_instructions


def make_spec(**extra) -> object:
    data = {
        "name": "t",
        "seed": 3,
        "sources": [
            {"name": "a", "loader": "jsonl", "path": "x.jsonl", "principles": {"helpfulness": 0.5, "honesty": 0.5}},
            {"name": "b", "loader": "jsonl", "path": "y.jsonl", "principles": {"truthfulness": 1.0}},
        ],
        "models": [{"id": f"m{i}", "backend": "embedded"} for i in range(6)],
        "completions_per_instruction": 4,
        "principles": {
            "helpfulness": ["help 1", "help 2"],
            "honesty": ["honest 1"],
            "truthfulness": ["true 1", "true 2", "true 3"],
        },
    }
    data.update(extra)
    return validate_dict(data)


def instructions(n: int = 200) -> list[Instruction]:
    return [
        Instruction(id=f"id{i:04d}", source="a" if i % 2 else "b", instruction=f"q {i}", origin=f"f:{i}")
        for i in range(n)
    ]


def test_k_distinct_models_per_instruction():
    requests = assign(instructions(), make_spec())
    by_instruction: dict[str, list] = {}
    for r in requests:
        by_instruction.setdefault(r.instruction_id, []).append(r)
    assert len(by_instruction) == 200
    for rows in by_instruction.values():
        assert len(rows) == 4
        assert len({r.model for r in rows}) == 4
        assert sorted(r.position for r in rows) == [0, 1, 2, 3]
    assert len({r.request_id for r in requests}) == len(requests)


def test_principles_follow_the_source_distribution_and_prompt_sets():
    spec = make_spec()
    requests = assign(instructions(), spec)
    for r in requests:
        assert r.system_prompt in spec.principles[r.principle]
    b = Counter(r.principle for r in requests if r.source == "b")
    assert set(b) == {"truthfulness"}
    a = Counter(r.principle for r in requests if r.source == "a")
    assert set(a) == {"helpfulness", "honesty"}
    assert 0.35 < a["helpfulness"] / sum(a.values()) < 0.65


def test_assignment_is_deterministic_and_independent_of_other_instructions():
    spec = make_spec()
    full = {r.request_id for r in assign(instructions(), spec)}
    subset = {r.request_id for r in assign(list(reversed(instructions()))[:50], spec)}
    assert subset <= full
    other_seed = {r.request_id for r in assign(instructions(), make_spec(seed=4))}
    assert other_seed != full


def test_sampling_change_changes_request_ids():
    spec = make_spec()
    changed = make_spec(sampling={"temperature": 0.5, "top_p": 1.0, "max_tokens": 1024})
    a = {r.request_id for r in assign(instructions(20), spec)}
    b = {r.request_id for r in assign(instructions(20), changed)}
    assert not a & b


def test_shards():
    shard_of = shard_instructions(instructions(10), 4)
    assert Counter(shard_of.values()) == {0: 4, 1: 4, 2: 2}


def test_unknown_prompt_format_is_a_spec_error_naming_the_model():
    import pytest

    from ultrafeedback.spec import SpecError

    spec = make_spec(models=[{"id": f"m{i}", "backend": "embedded", "prompt_format": "nope"} for i in range(4)])
    with pytest.raises(SpecError, match=r"models\[0\] \(m0\)\.prompt_format: unknown format 'nope'"):
        assign(instructions(2), spec)


def test_pool_order_does_not_matter_and_a_new_model_changes_at_most_one_slot():
    spec = make_spec()
    base = {r.request_id for r in assign(instructions(), spec)}
    models = [{"id": f"m{i}", "backend": "embedded"} for i in range(6)]
    reordered = make_spec(models=list(reversed(models)))
    assert {r.request_id for r in assign(instructions(), reordered)} == base
    grown = assign(instructions(), make_spec(models=[*models, {"id": "m6", "backend": "embedded"}]))
    new_by_instruction = Counter(r.instruction_id for r in grown if r.request_id not in base)
    assert new_by_instruction and max(new_by_instruction.values()) == 1
    assert all(r.model == "m6" for r in grown if r.request_id not in base)
