"""Judge output parsing: the §4.4 contract, what we tolerate beyond it, and every failure reason."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from ultrafeedback.records import ASPECTS, TYPED_ASPECTS
from ultrafeedback.tasks.annotate.parse import (
    ASPECT_REASONS,
    CRITIQUE_REASONS,
    NO_TYPE,
    fine_grained_score,
    parse_aspect,
    parse_critique,
)


def block(aspect: str, i: int, rating: str = "4", types: str = "1, 3", hashes: str | None = None) -> str:
    """One well-formed output block as the template asks for it."""
    header = f"{hashes or ('#####' if aspect == 'honesty' else '####')} Output for Text {i}"
    if aspect in TYPED_ASPECTS:
        return f"{header}\nType: {types}\nRationale: Types of text {i}.\nRating: {rating}\nRationale: Text {i} is fine."
    return f"{header}\nRating: {rating}\nRationale: Text {i} is fine."


def output(aspect: str, n: int = 4, **kwargs: str) -> str:
    return "\n\n".join(block(aspect, i, **kwargs) for i in range(1, n + 1))


def replace_in_block(raw: str, index: int, old: str, new: str) -> str:
    """``raw`` with ``old`` replaced by ``new`` in its ``index``-th block only."""
    blocks = raw.split("\n\n")
    assert old in blocks[index]
    blocks[index] = blocks[index].replace(old, new, 1)
    return "\n\n".join(blocks)


def unheaded(raw: str, label_numbers: dict[int, int] | None = None) -> str:
    """``raw`` without its header lines; block i's rating label names text ``label_numbers[i]``."""
    blocks = [b.split("\n", 1)[1] for b in raw.split("\n\n")]
    for i, number in (label_numbers or {}).items():
        blocks[i - 1] = blocks[i - 1].replace("Rating:", f"Rating for text {number}:")
    return "\n\n".join(blocks)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(("aspect", "n"), itertools.product(ASPECTS, [2, 4]))
def test_round_trip(aspect: str, n: int) -> None:
    raw = "\n\n".join(block(aspect, i, rating=str(i)) for i in range(1, n + 1))
    parsed = parse_aspect(aspect, raw, n)
    assert parsed.ok and parsed.reason is None
    assert [item.rating for item in parsed.items] == [str(i) for i in range(1, n + 1)]
    assert [item.rationale for item in parsed.items] == [f"Text {i} is fine." for i in range(1, n + 1)]
    if aspect in TYPED_ASPECTS:
        assert all(item.type == ["1", "3"] for item in parsed.items)
        assert [item.type_rationale for item in parsed.items] == [f"Types of text {i}." for i in range(1, n + 1)]
    else:
        assert all(item.type is None and item.type_rationale is None for item in parsed.items)


REAL_OUTPUT = {
    # The original judge's answers as the §4.3 templates ask for them (honesty: five hashes, N/A
    # for creative writing; typed aspects: Type and its rationale before Rating).
    "honesty": (
        "##### Output for Text 1\nRating: 5\nRationale: Confident and correct.\n\n"
        "##### Output for Text 2\nRating: N/A\nRationale: A poem; honesty does not apply.\n\n"
        "##### Output for Text 3\nRating: 2\nRationale: Confident but wrong.\n\n"
        '##### Output for Text 4\nRating: 3\nRationale: Hedges with "I guess".'
    ),
    "truthfulness": (
        "#### Output for Text 1\nType: None\nRationale: No hallucination.\n"
        "Rating: 5\nRationale: Matches world knowledge.\n\n"
        "#### Output for Text 2\nType: 1, 3\nRationale: A wrong date and a contradiction.\n"
        "Rating: 2\nRationale: Severe hallucination.\n\n"
        "#### Output for Text 3\nType: 2\nRationale: Adds facts not in the input.\n"
        "Rating: 3\nRationale: Partial hallucination.\n\n"
        "#### Output for Text 4\nType: None\nRationale: No hallucination.\n"
        "Rating: 4\nRationale: An insignificant slip."
    ),
}


def test_the_original_judges_output_parses() -> None:
    honesty = parse_aspect("honesty", REAL_OUTPUT["honesty"], 4)
    assert honesty.ok, honesty.detail
    assert [item.rating for item in honesty.items] == ["5", "N/A", "2", "3"]
    assert honesty.items[3].rationale == 'Hedges with "I guess".'
    truthfulness = parse_aspect("truthfulness", REAL_OUTPUT["truthfulness"], 4)
    assert truthfulness.ok, truthfulness.detail
    assert [item.rating for item in truthfulness.items] == ["5", "2", "3", "4"]
    assert [item.type for item in truthfulness.items] == [NO_TYPE, ["1", "3"], ["2"], NO_TYPE]
    assert truthfulness.items[1].type_rationale == "A wrong date and a contradiction."


@pytest.mark.parametrize("aspect", ASPECTS)
def test_headerless_blocks_are_refused(aspect: str) -> None:
    """The original parser took headerless blocks in order; a block must now say which text it rates."""
    parsed = parse_aspect(aspect, unheaded(output(aspect)), 4)
    assert not parsed.ok and parsed.reason == "unnumbered_block", parsed.detail


@pytest.mark.parametrize("aspect", ASPECTS)
def test_headerless_blocks_numbered_by_their_rating_label_map_by_number(aspect: str) -> None:
    raw = unheaded("\n\n".join(block(aspect, i, rating=str(i)) for i in range(1, 5)), {i: i for i in range(1, 5)})
    parsed = parse_aspect(aspect, "\n\n".join(reversed(raw.split("\n\n"))), 4)
    assert parsed.ok, parsed.detail
    assert [item.rating for item in parsed.items] == ["1", "2", "3", "4"]


def test_multiline_rationale_is_kept() -> None:
    raw = replace_in_block(output("honesty", 2), 0, "is fine.", "is *fine*.\nIt hedges well_")
    assert parse_aspect("honesty", raw, 2).items[0].rationale == "Text 1 is *fine*.\nIt hedges well_"


TOLERATED = {
    "crlf": lambda raw: raw.replace("\n", "\r\n"),
    "trailing_spaces": lambda raw: raw.replace("\n", "  \n") + "   ",
    "preamble_and_trailer": lambda raw: "Here is my assessment:\n\n" + raw + "\n\nOverall, text 2 is best.",
    "code_fence": lambda raw: "```\n" + raw + "\n```",
    "rule_between_blocks": lambda raw: raw.replace("\n\n", "\n\n---\n\n"),
    "rating_fraction": lambda raw: raw.replace("Rating: 4", "Rating: 4/5"),
    "rating_bracketed": lambda raw: raw.replace("Rating: 4", "Rating: [4]"),
    "bold_label_colon_inside": lambda raw: raw.replace("Rating: 4", "**Rating:** 4"),
    "bold_label_colon_outside": lambda raw: raw.replace("Rating: 4", "**Rating**: 4"),
    "bulleted_labels": lambda raw: raw.replace("Rating:", "- Rating:").replace("Rationale:", "- Rationale:"),
    "label_case": lambda raw: raw.replace("Rating:", "rating:").replace("Rationale:", "RATIONALE:"),
    "rating_for_text_label": lambda raw: re.sub(
        r"Text (\d)\n((?:.*\n)*?)Rating: 4", r"Text \1\n\2Rating for text \1: 4", raw
    ),
    "rating_with_scale_name": lambda raw: raw.replace("Rating: 4", "Rating: 4 (Almost There)"),
    "rating_out_of_5": lambda raw: raw.replace("Rating: 4", "Rating: 4 out of 5"),
    "rating_bold_value": lambda raw: raw.replace("Rating: 4", "Rating: **4**"),
    "rating_point_zero": lambda raw: raw.replace("Rating: 4", "Rating: 4.0"),
    "rationale_for_rating_label": lambda raw: raw.replace("Rationale: Text", "Rationale for rating: Text"),
    "bold_value": lambda raw: raw.replace("Rationale: Text 1 is fine.", "Rationale: **Text 1 is fine.**"),
    "value_on_next_line": lambda raw: raw.replace("Rating: 4", "Rating:\n4"),
    "blank_line_between_fields": lambda raw: raw.replace("\nRationale: Text", "\n\nRationale: Text"),
    "bold_header_with_colon": lambda raw: raw.replace("#### Output for Text", "**Output for Text").replace(
        "\nRating", ":**\nRating", 1
    ),
    "five_hashes": lambda raw: raw.replace("#### Output", "##### Output"),
    "blocks_out_of_order": lambda raw: "\n\n".join(reversed(raw.split("\n\n"))),
}


@pytest.mark.parametrize(("aspect", "variant"), itertools.product(["instruction_following", "truthfulness"], TOLERATED))
def test_tolerated_variants(aspect: str, variant: str) -> None:
    raw = TOLERATED[variant](output(aspect, rating="4"))
    parsed = parse_aspect(aspect, raw, 4)
    assert parsed.ok, parsed.detail
    assert [item.rating for item in parsed.items] == ["4"] * 4
    assert [item.rationale for item in parsed.items] == [f"Text {i} is fine." for i in range(1, 5)]


def test_blocks_out_of_order_map_by_their_number() -> None:
    raw = "\n\n".join(reversed([block("honesty", i, rating=str(i)) for i in range(1, 5)]))
    assert [item.rating for item in parse_aspect("honesty", raw, 4).items] == ["1", "2", "3", "4"]


HEADER_STYLES = [
    "#### Output for Text {i}",
    "##### Output for Text {i}",
    "Output for Text {i}:",
    "Text {i}",
    "### Text {i}",
    "Text {i}:",
    "**Text {i}:**",
    "**Response {i}**",
    "## Completion {i}",
]


def headed(aspect: str, i: int, style: str, rating: str | None = None) -> str:
    """Block ``i`` rated ``i`` (or ``rating``) under a header in ``style``."""
    body = block(aspect, i, rating=rating or str(i)).split("\n", 1)[1]
    return f"{style.format(i=i)}\n{body}"


@pytest.mark.parametrize(("style", "order"), itertools.product(HEADER_STYLES, itertools.permutations(range(1, 5))))
def test_every_order_maps_ratings_by_the_blocks_number(style: str, order: tuple[int, ...]) -> None:
    raw = "\n\n".join(headed("truthfulness", i, style) for i in order)
    parsed = parse_aspect("truthfulness", raw, 4)
    assert parsed.ok, parsed.detail
    assert [item.rating for item in parsed.items] == ["1", "2", "3", "4"]
    assert [item.rationale for item in parsed.items] == [f"Text {i} is fine." for i in range(1, 5)]


def test_text_2_before_text_1_does_not_swap_the_ratings() -> None:
    """The issue's case: "Text 2 ... Rating: 5 / Text 1 ... Rating: 2" gave text 1 a 5."""
    raw = "Text 2\nRating: 5\nRationale: Complete.\n\nText 1\nRating: 2\nRationale: Off topic."
    parsed = parse_aspect("instruction_following", raw, 2)
    assert parsed.ok and [item.rating for item in parsed.items] == ["2", "5"]
    assert [item.rationale for item in parsed.items] == ["Off topic.", "Complete."]


def mutate(rng: random.Random, aspect: str) -> str:
    """Four blocks rated 1..4 by number, shuffled, in mixed header styles, with one random defect."""
    order = rng.sample(range(1, 5), 4)
    blocks = [headed(aspect, i, rng.choice(HEADER_STYLES)) for i in order]
    at = rng.randrange(4)
    defect = rng.choice(["none", "renumber", "unheaded", "unknown_header", "label_names_other", "no_headers"])
    if defect == "renumber":
        head, body = blocks[at].split("\n", 1)
        blocks[at] = re.sub(r"\d", str(rng.choice([n for n in range(0, 6) if n != order[at]])), head) + "\n" + body
    elif defect == "unheaded":
        blocks[at] = blocks[at].split("\n", 1)[1]
    elif defect == "unknown_header":
        blocks[at] = f"Evaluation of text {order[at]}\n" + blocks[at].split("\n", 1)[1]
    elif defect == "label_names_other":
        other = rng.choice([n for n in range(1, 5) if n != order[at]])
        blocks[at] = blocks[at].replace("Rating:", f"Rating for text {other}:")
    elif defect == "no_headers":
        blocks = [b.split("\n", 1)[1] for b in blocks]
    return "\n\n".join(blocks)


@pytest.mark.parametrize("aspect", ["honesty", "helpfulness"])
def test_no_defect_can_give_a_rating_to_another_text(aspect: str) -> None:
    rng = random.Random(10)
    outcomes = []
    for _ in range(600):
        parsed = parse_aspect(aspect, mutate(rng, aspect), 4)
        outcomes.append(parsed.ok)
        if parsed.ok:
            assert [item.rating for item in parsed.items] == ["1", "2", "3", "4"]
        else:
            assert parsed.reason in ASPECT_REASONS and parsed.detail
    assert 0 < sum(outcomes) < len(outcomes)


@pytest.mark.parametrize("value", ["N/A", "n/a", "**N/A**", "NA", "Not applicable", "[N/A]"])
def test_honesty_accepts_na(value: str) -> None:
    raw = replace_in_block(output("honesty", 2), 1, "Rating: 4", f"Rating: {value}")
    parsed = parse_aspect("honesty", raw, 2)
    assert parsed.ok and [item.rating for item in parsed.items] == ["4", "N/A"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("None", NO_TYPE),
        ('["None"]', NO_TYPE),
        ("none (no hallucination)", NO_TYPE),
        ("0", NO_TYPE),
        ("2", ["2"]),
        ("3, 1", ["3", "1"]),
        ("[1, 2, 2]", ["1", "2"]),
        ("1. Contradicts the world", ["1"]),
    ],
)
def test_type_values(value: str, expected: list[str]) -> None:
    parsed = parse_aspect("truthfulness", output("truthfulness", 2, types=value), 2)
    assert parsed.ok and [item.type for item in parsed.items] == [expected, expected]


# --------------------------------------------------------------------------- failures

FOUR_IF = output("instruction_following")
FOUR_TR = output("truthfulness")
FOUR_HO = output("honesty")
FOUR_HE = output("helpfulness")

FAILURES = [
    ("empty_output", "honesty", ""),
    ("empty_output", "honesty", "  \n\n "),
    ("block_count", "instruction_following", output("instruction_following", 3)),
    ("block_count", "instruction_following", FOUR_IF + "\n\n" + block("instruction_following", 5)),
    ("block_count", "instruction_following", FOUR_IF.replace("Output for Text 4", "Output for Text 3")),
    ("block_count", "instruction_following", FOUR_IF.replace("Text 4", "Text 2")),  # text 2 twice, no 4
    ("block_count", "instruction_following", "\n\n".join(reversed(FOUR_IF.split("\n\n")[:3]))),
    ("block_count", "instruction_following", re.sub(r"Text (\d)", lambda m: f"Text {int(m[1]) - 1}", FOUR_IF)),
    ("block_count", "honesty", "\n\n".join(headed("honesty", i, "**Response {i}**") for i in (1, 2, 3, 3))),
    ("unnumbered_block", "instruction_following", "Sure!\n\n" + unheaded(FOUR_IF)),
    ("unnumbered_block", "instruction_following", "Rating: 5\nRationale: All good.\n\n" + FOUR_IF),
    ("unnumbered_block", "truthfulness", unheaded(FOUR_TR, {1: 1, 2: 2, 4: 4})),
    ("number_mismatch", "instruction_following", replace_in_block(FOUR_IF, 0, "Rating: 4", "Rating for text 2: 4")),
    (
        "number_mismatch",
        "truthfulness",
        replace_in_block(FOUR_TR, 1, "Rationale: Text 2", "Rationale for text 3: Text 2"),
    ),
    (
        "number_mismatch",
        "honesty",
        replace_in_block(unheaded(FOUR_HO, {i: i for i in range(1, 5)}), 0, "Rationale:", "Rationale for text 2:"),
    ),
    ("duplicate_field", "instruction_following", replace_in_block(FOUR_IF, 1, "Rating: 4", "Rating: 4\nRating: 2")),
    ("duplicate_field", "instruction_following", FOUR_IF + "\n\nMy final verdict:\nRating: 5"),
    ("block_count", "instruction_following", FOUR_IF.replace("#### Output for Text 3", "#### Text 3 (the poem)")),
    ("duplicate_field", "helpfulness", replace_in_block(FOUR_HE, 2, "Type: 1, 3", "Type: 1\nType: 2")),
    ("missing_rating", "instruction_following", replace_in_block(FOUR_IF, 2, "Rating: 4\n", "")),
    ("missing_rating", "instruction_following", replace_in_block(FOUR_IF, 2, "Rating: 4", "Rating: high")),
    ("ambiguous_rating", "instruction_following", replace_in_block(FOUR_IF, 0, "Rating: 4", "Rating: Text 1 gets 4")),
    ("ambiguous_rating", "honesty", replace_in_block(FOUR_HO, 0, "Rating: 4", "Rating: on a scale of 1 to 5, 4")),
    ("ambiguous_rating", "truthfulness", replace_in_block(FOUR_TR, 2, "Rating: 4", "Rating: 4, better than text 1")),
    ("ambiguous_rating", "honesty", replace_in_block(FOUR_HO, 1, "Rating: 4", "Rating: N/A (4 if scored)")),
    ("ambiguous_rating", "instruction_following", replace_in_block(FOUR_IF, 3, "Rating: 4", "Rating: 4-5")),
    ("rating_out_of_range", "instruction_following", replace_in_block(FOUR_IF, 0, "Rating: 4", "Rating: 6")),
    ("rating_out_of_range", "instruction_following", replace_in_block(FOUR_IF, 0, "Rating: 4", "Rating: 8/10")),
    ("rating_out_of_range", "honesty", replace_in_block(FOUR_HO, 0, "Rating: 4", "Rating: 0")),
    ("rating_out_of_range", "helpfulness", replace_in_block(FOUR_HE, 3, "Rating: 4", "Rating: 3.5")),
    ("na_not_allowed", "instruction_following", replace_in_block(FOUR_IF, 1, "Rating: 4", "Rating: N/A")),
    ("na_not_allowed", "truthfulness", replace_in_block(FOUR_TR, 1, "Rating: 4", "Rating: N/A")),
    ("na_not_allowed", "helpfulness", replace_in_block(FOUR_HE, 1, "Rating: 4", "Rating: N/A")),
    ("missing_rationale", "honesty", replace_in_block(FOUR_HO, 1, "\nRationale: Text 2 is fine.", "")),
    (
        "missing_rationale",
        "instruction_following",
        replace_in_block(FOUR_IF, 1, "Rationale: Text 2 is fine.", "Rationale:"),
    ),
    ("missing_rationale", "truthfulness", replace_in_block(FOUR_TR, 0, "Rationale: Types of text 1.\n", "")),
    ("missing_rationale", "truthfulness", replace_in_block(FOUR_TR, 3, "\nRationale: Text 4 is fine.", "")),
    ("missing_type", "truthfulness", replace_in_block(FOUR_TR, 2, "Type: 1, 3\n", "")),
    ("missing_type", "helpfulness", replace_in_block(FOUR_HE, 2, "Type: 1, 3", "Type: unclear")),
    ("type_out_of_range", "truthfulness", replace_in_block(FOUR_TR, 2, "Type: 1, 3", "Type: 1, 4")),
]


def test_failure_table_covers_every_reason() -> None:
    assert {reason for reason, _, _ in FAILURES} == set(ASPECT_REASONS) - {"parser_error"}


@pytest.mark.parametrize(("reason", "aspect", "raw"), FAILURES)
def test_failure_reasons(reason: str, aspect: str, raw: str) -> None:
    parsed = parse_aspect(aspect, raw, 4)
    assert not parsed.ok
    assert parsed.reason == reason, parsed.detail
    assert parsed.detail and parsed.items == []


@pytest.mark.parametrize(
    "raw",
    [
        None,
        42,
        "#### Output for Text",
        "Rating:",
        "####\n\n####",
        "\x00" * 10,
        "Output for Text 99999999999999999999",
    ],
)
def test_never_raises_on_model_output(raw: object) -> None:
    parsed = parse_aspect("truthfulness", raw, 4)  # type: ignore[arg-type]
    assert not parsed.ok and parsed.reason in ASPECT_REASONS


@pytest.mark.parametrize(("aspect", "n"), [("harmlessness", 4), ("honesty", 0)])
def test_caller_errors_raise(aspect: str, n: int) -> None:
    with pytest.raises(ValueError):
        parse_aspect(aspect, FOUR_IF, n)


# --------------------------------------------------------------------------- critique


@pytest.mark.parametrize(
    ("tail", "score"),
    [
        ("Overall Score: 7.5", 7.5),
        ("Overall Score: 8/10", 8.0),
        ("Overall Score: 8 / 10", 8.0),
        ("Overall Score: 1", 1.0),  # the §4.6 bug turned this into 10
        ("Overall Score: 1/10", 1.0),
        ("Overall Score: 10", 10.0),
        ("Overall Score: 6.", 6.0),
        ("**Overall Score:** 6", 6.0),
        ("overall score: [9]", 9.0),
        ("Overall Score: 3\n\nThe answer needs sources.", 3.0),
        ("Overall Score: 8 out of 10", 8.0),
        ("Overall Score: 7 (clear, but cite a source)", 7.0),
        ("Overall Score:\n7", 7.0),
        ("- Overall Score: 5", 5.0),
        ("## Overall Score: 5", 5.0),
    ],
)
def test_critique_scores(tail: str, score: float) -> None:
    parsed = parse_critique(f"The answer is vague.\nAdd an example.\n{tail}")
    assert parsed.ok and parsed.reason is None
    assert parsed.overall_score == score
    assert parsed.critique == "The answer is vague.\nAdd an example."


def test_critique_reads_the_score_field_not_prose() -> None:
    parsed = parse_critique("Terse; I'd give an overall score: 2 for brevity alone.\nOverall Score: 6")
    assert parsed.ok and parsed.overall_score == 6.0
    assert parsed.critique == "Terse; I'd give an overall score: 2 for brevity alone."


@pytest.mark.parametrize("lead", ["### Feedback\n", "### Feedback:\n", "Feedback\n", "\n  ### Feedback\n\n"])
def test_critique_drops_a_repeated_feedback_heading(lead: str) -> None:
    parsed = parse_critique(f"{lead}Too short.\r\nOverall Score: 4")
    assert parsed.ok and parsed.critique == "Too short." and parsed.overall_score == 4.0


CRITIQUE_FAILURES = [
    ("empty_output", ""),
    ("missing_score", "Good answer, nothing to add."),
    ("missing_score", "Good answer.\nOverall Score: N/A"),
    ("score_out_of_range", "Bad.\nOverall Score: 0"),
    ("score_out_of_range", "Bad.\nOverall Score: 0.8"),
    ("score_out_of_range", "Great.\nOverall Score: 11"),
    ("bad_scale", "Fine.\nOverall Score: 4/5"),
    ("ambiguous_score", "Fine.\nOverall Score: 6\nOn reflection,\nOverall Score: 7"),
    ("ambiguous_score", "Fine.\nOverall Score: [1-10]"),  # the template's placeholder echoed
    ("ambiguous_score", "Fine.\nOverall Score: on a scale of 1 to 10, 7"),
    ("ambiguous_score", "Fine.\nOverall Score: 1 to 10 scale: 7"),
    ("missing_score", "Fine, I would give it an overall score: 7."),  # prose, not the score field
    ("missing_critique", "### Feedback\nOverall Score: 7"),
]


def test_critique_failure_table_covers_every_reason() -> None:
    assert {reason for reason, _ in CRITIQUE_FAILURES} == set(CRITIQUE_REASONS)


@pytest.mark.parametrize(("reason", "raw"), CRITIQUE_FAILURES)
def test_critique_failure_reasons(reason: str, raw: str) -> None:
    parsed = parse_critique(raw)
    assert not parsed.ok and parsed.reason == reason and parsed.detail
    assert parsed.overall_score is None


def test_repeated_equal_score_is_accepted() -> None:
    parsed = parse_critique("Fine.\nOverall Score: 7\n(Overall Score: 7/10)")
    assert parsed.ok and parsed.overall_score == 7.0 and parsed.critique == "Fine."


# --------------------------------------------------------------------------- fine-grained score


@pytest.mark.parametrize(
    ("ratings", "expected"),
    [
        (["5", "4", "3", "2"], 3.5),
        (["4", "N/A", "5", "3"], 4.0),
        (["3", "", "5"], 4.0),
        (["N/A"], None),
        ([], None),
    ],
)
def test_fine_grained_score(ratings: list[str], expected: float | None) -> None:
    assert fine_grained_score(ratings) == expected
