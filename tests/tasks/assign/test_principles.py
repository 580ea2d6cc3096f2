"""The packaged principle prompts and the reference source -> principle distributions (§3)."""

from __future__ import annotations

import hashlib
import math

import pytest

from ultrafeedback.records import PRINCIPLES
from ultrafeedback.spec import Source
from ultrafeedback.tasks.annotate.prompts import CALIBRATION_CUT
from ultrafeedback.tasks.assign.principles import (
    PRINCIPLES_FILE,
    PRINCIPLES_VERSION,
    README_DISTRIBUTIONS,
    REFERENCE_DISTRIBUTIONS,
    PrinciplesError,
    load_principles,
    validate_principles,
)


def test_pool_sizes_match_the_original() -> None:
    loaded = load_principles()
    assert {name: len(prompts) for name, prompts in loaded.items()} == {
        "helpfulness": 11,
        "honesty": 11,
        "truthfulness": 11,
        "verbalized_calibration": 1,
        "harmlessness": 11,
    }
    assert set(loaded) == set(PRINCIPLES)


@pytest.mark.parametrize(
    ("principle", "low", "high"),
    [
        ("helpfulness", 21, 30),
        ("honesty", 26, 56),
        ("truthfulness", 19, 32),
        ("verbalized_calibration", 90, 110),
    ],
)
def test_prompt_lengths_follow_the_reference(principle: str, low: int, high: int) -> None:
    prompts = load_principles()[principle]
    paraphrases = prompts[1:] if principle == "helpfulness" else prompts  # #1 is the definition
    assert all(low <= len(p.split()) <= high for p in paraphrases), [len(p.split()) for p in paraphrases]


def test_helpfulness_paraphrases_address_the_assistant() -> None:
    prompts = load_principles()["helpfulness"]
    assert prompts[0].startswith("The assistant should")
    assert all(p.startswith("As an AI assistant, ") for p in prompts[1:])


def test_all_prompts_are_distinct() -> None:
    everything = [p for prompts in load_principles().values() for p in prompts]
    assert len(set(everything)) == len(everything)


def test_calibration_prompt_has_the_answer_format_and_one_cut_marker() -> None:
    (prompt,) = load_principles()["verbalized_calibration"]
    assert prompt.count(CALIBRATION_CUT) == 1
    for line in ("[Question]", "[Answer]", "Confidence: ["):
        assert f"\n{line}" in prompt
    assert "80%" in prompt and "placeholders" in prompt
    head = prompt.split(CALIBRATION_CUT)[0].strip()
    assert head.endswith(".") and head.count(". ") == 1  # two sentences survive the critique's cut


def test_load_returns_a_fresh_copy() -> None:
    first = load_principles()
    first["honesty"].clear()
    assert len(load_principles()["honesty"]) == 11


def test_version_is_a_hash_of_the_file() -> None:
    assert PRINCIPLES_VERSION == hashlib.sha256(PRINCIPLES_FILE.read_bytes()).hexdigest()[:12]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (["x"], "mapping"),
        ({"kindness": ["x"]}, "unknown principle"),
        ({"honesty": []}, "non-empty list"),
        ({"honesty": ["a", "  "]}, r"honesty\[1\]"),
        ({"honesty": ["a", 3]}, r"honesty\[1\]"),
        ({"honesty": ["a", "a "]}, "repeat"),
    ],
)
def test_validate_rejects_malformed_sets(data: object, message: str) -> None:
    with pytest.raises(PrinciplesError, match=message):
        validate_principles(data, origin="x.yaml")


@pytest.mark.parametrize("table", [REFERENCE_DISTRIBUTIONS, README_DISTRIBUTIONS])
def test_distributions_are_valid_source_weights(table: dict[str, dict[str, float]]) -> None:
    assert set(table) == {"evol_instruct", "ultrachat", "sharegpt", "flan", "truthful_qa", "false_qa"}
    for name, weights in table.items():
        assert math.isclose(sum(weights.values()), 1.0), name
        assert "harmlessness" not in weights
        Source(name=name, loader="hf", path="x", principles=weights)  # the spec accepts them


def test_reference_distributions_are_the_released_code_marginals() -> None:
    assert REFERENCE_DISTRIBUTIONS["ultrachat"] == {
        "helpfulness": 0.6,
        "truthfulness": 0.2,
        "honesty": 0.18,
        "verbalized_calibration": 0.02,
    }
    assert REFERENCE_DISTRIBUTIONS["flan"] == {"helpfulness": 0.8, "verbalized_calibration": 0.2}
    assert REFERENCE_DISTRIBUTIONS["false_qa"] == {
        "truthfulness": 0.5,
        "honesty": 0.45,
        "verbalized_calibration": 0.05,
    }
    assert README_DISTRIBUTIONS["truthful_qa"] == {"truthfulness": 1.0}
