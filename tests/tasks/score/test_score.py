"""The scored join: every rating lands on the completion the judge saw in that slot, whatever the
shuffle; what is missing or unparseable stays null; only results under the current keys count."""

from __future__ import annotations

from tests.tasks.annotate.shard_inputs import ASPECTS, make_spec, shard_inputs
from ultrafeedback.infra.llm.judge_format import aspect_block, aspect_reply
from ultrafeedback.records import AspectAnnotation, Critique
from ultrafeedback.tasks.annotate.jobs import aspect_keys, critique_key_for, judge_kind, judge_model_id
from ultrafeedback.tasks.score.score import build_scored


def annotation(spec, key: str, instruction_id: str, aspect: str, ids: list[str], raw: str) -> AspectAnnotation:
    return AspectAnnotation(
        annotation_key=key,
        instruction_id=instruction_id,
        aspect=aspect,
        completion_ids=ids,
        raw=raw,
        judge_model=judge_model_id(spec),
        judge_kind=judge_kind(spec),
    )


def hashes(inputs) -> dict[str, str]:
    return {i: c.response_hash for i, c in inputs.completions.items()}


def rated(spec, inputs, rating_of) -> dict[str, AspectAnnotation]:
    """An annotation per (instruction, aspect) under its current key, rating each text
    ``rating_of(completion id, aspect)`` in the (shuffled) order the judge saw them."""
    out = {}
    for iid in inputs.instructions:
        for aspect, (key, ids) in aspect_keys(spec, iid, inputs.available(iid), hashes(inputs)).items():
            blocks = [
                aspect_block(aspect, slot, rating_of(cid, aspect), f"about {cid}", "1, 3", "clear")
                for slot, cid in enumerate(ids, start=1)
            ]
            out[key] = annotation(spec, key, iid, aspect, ids, aspect_reply(blocks))
    return out


def ratings_by_id(rows) -> dict[str, dict[str, str]]:
    return {r.completion_id: {a: getattr(r, f"{a}_rating") for a in ASPECTS} for r in rows}


def test_each_rating_lands_on_the_completion_it_was_given_for(tmp_path):
    spec = make_spec(tmp_path)
    inputs = shard_inputs()
    wanted = {"i0-0": "5", "i0-1": "1", "i1-0": "2", "i1-1": "4"}
    annotations = rated(spec, inputs, lambda cid, aspect: wanted[cid])
    # the judge saw at least one set in another order than the slots (else a swap would not show)
    assert any(a.completion_ids != sorted(a.completion_ids) for a in annotations.values())
    rows = build_scored(spec, inputs.instructions, inputs.requests, inputs.completions, annotations, {})
    assert ratings_by_id(rows) == {cid: dict.fromkeys(ASPECTS, rating) for cid, rating in wanted.items()}
    by_id = {r.completion_id: r for r in rows}
    assert by_id["i0-1"].honesty_rationale == "about i0-1"
    assert by_id["i0-1"].truthfulness_type == ["1", "3"]
    assert by_id["i0-0"].fine_grained_score == 5.0
    assert by_id["i1-0"].critique is None and by_id["i1-0"].overall_score is None  # no critique stored


def test_a_rating_of_another_text_of_the_same_completion_is_never_joined(tmp_path):
    """A completion rewritten after it was judged (a second run of a non-deterministic model):
    the stored ratings and critique were made on the old text, so the row gets none of them."""
    spec = make_spec(tmp_path)
    inputs = shard_inputs()
    annotations = rated(spec, inputs, lambda cid, aspect: "4")
    old = inputs.completions["i0-1"]
    critiques = {
        critique_key_for(spec, "i0-1", old.response_hash): Critique(
            critique_key=critique_key_for(spec, "i0-1", old.response_hash),
            completion_id="i0-1",
            instruction_id="i0",
            raw="Fine.\nOverall Score: 9",
            critique="Fine.",
            overall_score=9.0,
            judge_model=judge_model_id(spec),
            judge_kind=judge_kind(spec),
        )
    }
    rewritten = old.model_copy(update={"response": old.response + " (a different answer)", "response_hash": ""})
    completions = {**inputs.completions, "i0-1": type(old)(**rewritten.model_dump())}
    rows = build_scored(spec, inputs.instructions, inputs.requests, completions, annotations, critiques)
    by_id = {r.completion_id: r for r in rows}
    assert ratings_by_id(rows)["i0-1"] == dict.fromkeys(ASPECTS, None)
    assert ratings_by_id(rows)["i0-0"] == dict.fromkeys(ASPECTS, None)  # rated beside the old text
    assert by_id["i0-1"].overall_score is None
    assert ratings_by_id(rows)["i1-0"] == dict.fromkeys(ASPECTS, "4")  # the other instruction is untouched


def test_a_missing_or_unparseable_annotation_leaves_its_aspect_null(tmp_path):
    spec = make_spec(tmp_path)
    inputs = shard_inputs()
    annotations = rated(spec, inputs, lambda cid, aspect: "3")
    (honesty_i0,) = [a for a in annotations.values() if a.instruction_id == "i0" and a.aspect == "honesty"]
    annotations[honesty_i0.annotation_key] = honesty_i0.model_copy(update={"raw": "I cannot rate these."})
    (truth_i1,) = [k for k, a in annotations.items() if a.instruction_id == "i1" and a.aspect == "truthfulness"]
    del annotations[truth_i1]
    ratings = ratings_by_id(
        build_scored(spec, inputs.instructions, inputs.requests, inputs.completions, annotations, {})
    )
    assert ratings["i0-0"] == {"honesty": None, "truthfulness": "3"}
    assert ratings["i1-1"] == {"honesty": "3", "truthfulness": None}


def with_stored_ratings(annotations, rating: str, version: str) -> dict[str, AspectAnnotation]:
    """The annotations as annotate stores them: with ratings parsed (here: made up, ``rating`` for
    every text) by parser ``version``."""
    from ultrafeedback.tasks.annotate.parse import ParsedRating, items_json

    return {
        key: a.model_copy(
            update={
                "parsed": items_json([ParsedRating(rating, "stored", ["2"], "stored") for _ in a.completion_ids]),
                "parser_version": version,
            }
        )
        for key, a in annotations.items()
    }


def test_ratings_stored_by_the_current_parser_are_joined_without_parsing_the_answer_again(tmp_path):
    from ultrafeedback.tasks.annotate.parse import parser_version

    spec = make_spec(tmp_path)
    inputs = shard_inputs()
    annotations = with_stored_ratings(rated(spec, inputs, lambda cid, aspect: "3"), "5", parser_version())
    rows = build_scored(spec, inputs.instructions, inputs.requests, inputs.completions, annotations, {})
    assert {r for ratings in ratings_by_id(rows).values() for r in ratings.values()} == {"5"}  # the stored ones
    assert {r.truthfulness_type_rationale for r in rows} == {"stored"}


def test_ratings_stored_by_another_parser_version_are_parsed_again_from_the_raw_answer(tmp_path):
    spec = make_spec(tmp_path)
    inputs = shard_inputs()
    annotations = with_stored_ratings(rated(spec, inputs, lambda cid, aspect: "3"), "5", "an-older-parser")
    rows = build_scored(spec, inputs.instructions, inputs.requests, inputs.completions, annotations, {})
    assert {r for ratings in ratings_by_id(rows).values() for r in ratings.values()} == {"3"}  # from `raw`


def test_annotate_stores_what_the_parser_makes_of_each_answer(tmp_path):
    from ultrafeedback.tasks.annotate.parse import items_json, parse_aspect, parser_version, stored_or_parsed

    spec = make_spec(tmp_path)
    inputs = shard_inputs()
    for a in rated(spec, inputs, lambda cid, aspect: "4").values():
        parsed = parse_aspect(a.aspect, a.raw, len(a.completion_ids))
        stored = stored_or_parsed(a.aspect, a.raw, len(a.completion_ids), items_json(parsed.items), parser_version())
        assert stored == parsed


def test_results_under_an_older_key_are_not_joined(tmp_path):
    spec = make_spec(tmp_path)
    inputs = shard_inputs()
    stale = {
        "old-key": annotation(spec, "old-key", "i0", "honesty", ["i0-0", "i0-1"], "#### Output for Text 1\nRating: 1")
    }
    rows = build_scored(spec, inputs.instructions, inputs.requests, inputs.completions, stale, {})
    assert all(r.honesty_rating is None for r in rows)


def test_critiques_and_a_failed_completion(tmp_path):
    spec = make_spec(tmp_path)
    inputs = shard_inputs()
    del inputs.completions["i1-1"]  # its generation failed: the row is absent, the model still listed
    critiques = {
        critique_key_for(spec, cid, hashes(inputs)[cid]): Critique(
            critique_key=critique_key_for(spec, cid, hashes(inputs)[cid]),
            completion_id=cid,
            instruction_id=cid.split("-")[0],
            raw="Good.\nOverall Score: 7.5",
            critique="Good.",
            overall_score=7.5,
            judge_model=judge_model_id(spec),
            judge_kind=judge_kind(spec),
        )
        for cid in inputs.completions
    }
    rows = build_scored(spec, inputs.instructions, inputs.requests, inputs.completions, {}, critiques)
    assert sorted(r.completion_id for r in rows) == ["i0-0", "i0-1", "i1-0"]
    (i1,) = [r for r in rows if r.instruction_id == "i1"]
    assert i1.models == ["sim-0", "sim-1"] and i1.overall_score == 7.5
    assert [(r.instruction_id, r.position) for r in rows] == [("i0", 0), ("i0", 1), ("i1", 0)]
