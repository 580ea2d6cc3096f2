"""Judge output parsing: the §4.4 contract, what we tolerate beyond it, and every failure reason."""

from __future__ import annotations

import itertools

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
        return (
            f"{header}\nType: {types}\nRationale: Types of text {i}.\n"
            f"Rating: {rating}\nRationale: Text {i} is fine."
        )
    return f"{header}\nRating: {rating}\nRationale: Text {i} is fine."


def output(aspect: str, n: int = 4, **kwargs: str) -> str:
    return "\n\n".join(block(aspect, i, **kwargs) for i in range(1, n + 1))


def replace_in_block(raw: str, index: int, old: str, new: str) -> str:
    """``raw`` with ``old`` replaced by ``new`` in its ``index``-th block only."""
    blocks = raw.split("\n\n")
    assert old in blocks[index]
    blocks[index] = blocks[index].replace(old, new, 1)
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
        assert [item.type_rationale for item in parsed.items] == [
            f"Types of text {i}." for i in range(1, n + 1)
        ]
    else:
        assert all(item.type is None and item.type_rationale is None for item in parsed.items)


@pytest.mark.parametrize("aspect", ASPECTS)
def test_original_headerless_blocks_are_accepted(aspect: str) -> None:
    raw = "\n\n".join(b.split("\n", 1)[1] for b in output(aspect).split("\n\n"))
    parsed = parse_aspect(aspect, raw, 4)
    assert parsed.ok and len(parsed.items) == 4


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
    "rating_for_text_label": lambda raw: raw.replace("Rating: 4", "Rating for text 1: 4"),
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


@pytest.mark.parametrize(
    ("aspect", "variant"), itertools.product(["instruction_following", "truthfulness"], TOLERATED)
)
def test_tolerated_variants(aspect: str, variant: str) -> None:
    raw = TOLERATED[variant](output(aspect, rating="4"))
    parsed = parse_aspect(aspect, raw, 4)
    assert parsed.ok, parsed.detail
    assert [item.rating for item in parsed.items] == ["4"] * 4
    assert [item.rationale for item in parsed.items] == [f"Text {i} is fine." for i in range(1, 5)]


def test_blocks_out_of_order_map_by_their_number() -> None:
    raw = "\n\n".join(reversed([block("honesty", i, rating=str(i)) for i in range(1, 5)]))
    assert [item.rating for item in parse_aspect("honesty", raw, 4).items] == ["1", "2", "3", "4"]


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

FAILURES = [
    ("empty_output", "honesty", ""),
    ("empty_output", "honesty", "  \n\n "),
    ("block_count", "instruction_following", output("instruction_following", 3)),
    ("block_count", "instruction_following", FOUR_IF + "\n\n" + block("instruction_following", 5)),
    ("block_count", "instruction_following", FOUR_IF.replace("Output for Text 4", "Output for Text 3")),
    (
        "block_count",
        "instruction_following",
        "Sure!\n\n" + "\n\n".join(b.split("\n", 1)[1] for b in FOUR_IF.split("\n\n")),
    ),
    ("missing_rating", "instruction_following", replace_in_block(FOUR_IF, 2, "Rating: 4\n", "")),
    ("missing_rating", "instruction_following", replace_in_block(FOUR_IF, 2, "Rating: 4", "Rating: high")),
    ("rating_out_of_range", "instruction_following", replace_in_block(FOUR_IF, 0, "Rating: 4", "Rating: 6")),
    ("rating_out_of_range", "honesty", replace_in_block(output("honesty"), 0, "Rating: 4", "Rating: 0")),
    (
        "rating_out_of_range",
        "helpfulness",
        replace_in_block(output("helpfulness"), 3, "Rating: 4", "Rating: 3.5"),
    ),
    ("na_not_allowed", "instruction_following", replace_in_block(FOUR_IF, 1, "Rating: 4", "Rating: N/A")),
    ("na_not_allowed", "truthfulness", replace_in_block(FOUR_TR, 1, "Rating: 4", "Rating: N/A")),
    ("na_not_allowed", "helpfulness", replace_in_block(output("helpfulness"), 1, "Rating: 4", "Rating: N/A")),
    (
        "missing_rationale",
        "honesty",
        replace_in_block(output("honesty"), 1, "\nRationale: Text 2 is fine.", ""),
    ),
    (
        "missing_rationale",
        "instruction_following",
        replace_in_block(FOUR_IF, 1, "Rationale: Text 2 is fine.", "Rationale:"),
    ),
    ("missing_rationale", "truthfulness", replace_in_block(FOUR_TR, 0, "Rationale: Types of text 1.\n", "")),
    ("missing_rationale", "truthfulness", replace_in_block(FOUR_TR, 3, "\nRationale: Text 4 is fine.", "")),
    ("missing_type", "truthfulness", replace_in_block(FOUR_TR, 2, "Type: 1, 3\n", "")),
    (
        "missing_type",
        "helpfulness",
        replace_in_block(output("helpfulness"), 2, "Type: 1, 3", "Type: unclear"),
    ),
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
    ],
)
def test_critique_scores(tail: str, score: float) -> None:
    parsed = parse_critique(f"The answer is vague.\nAdd an example.\n{tail}")
    assert parsed.ok and parsed.reason is None
    assert parsed.overall_score == score
    assert parsed.critique == "The answer is vague.\nAdd an example."


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
