"""Judge and critique prompts: structure the judge and the simulator rely on (reference §4.1-4.5)."""

from __future__ import annotations

import itertools
import re
import shutil
from pathlib import Path

import pytest

from ultrafeedback.records import ASPECTS, TYPED_ASPECTS
from ultrafeedback.tasks.annotate import prompts
from ultrafeedback.tasks.annotate.prompts import (
    CALIBRATION_CUT,
    CRITIQUE_TEMPLATE_VERSION,
    FALSE_PREMISE_NOTE,
    HEADINGS,
    NO_WORLD_KNOWLEDGE,
    TEMPLATE_VERSION,
    aspect_messages,
    critique_messages,
    inverse_order,
    shuffle_order,
    template_versions,
    world_knowledge,
)
from ultrafeedback.tasks.assign.principles import load_principles

TEXTS = ["first answer", "second answer", "third answer", "fourth answer", "fifth answer"]


def _user(aspect: str, k: int = 4, knowledge: str | None = None, instruction: str = "Name a prime.") -> str:
    messages = aspect_messages(aspect, instruction, TEXTS[:k], knowledge)
    assert [m["role"] for m in messages] == ["system", "user"]
    return messages[1]["content"]


@pytest.mark.parametrize("aspect", ASPECTS)
def test_each_aspect_has_exactly_its_own_heading(aspect: str) -> None:
    messages = aspect_messages(aspect, "Name a prime.", TEXTS[:4], None)
    lines = messages[1]["content"].splitlines()
    found = {name: lines.count(heading) for name, heading in HEADINGS.items()}
    assert found == {name: int(name == aspect) for name in HEADINGS}
    assert not any(h in messages[0]["content"] for h in HEADINGS.values())


@pytest.mark.parametrize(("aspect", "k"), itertools.product(ASPECTS, [1, 2, 4, 5]))
def test_prompt_has_k_text_slots_and_k_output_blocks(aspect: str, k: int) -> None:
    user = _user(aspect, k)
    format_part, annotation_part = user.split("\n---\n\n## Annotation\n")
    assert "## Format\n\n### Input\n" in format_part
    assert [f"<text {i}> [Text {i}]" for i in range(1, k + 1)] == re.findall(r"<text \d+> \[Text \d+\]", user)
    assert [f"<text {i}> {TEXTS[i - 1]}" for i in range(1, k + 1)] == re.findall(
        r"^<text \d+> \w+ answer$", annotation_part, re.M
    )
    hashes = "#####" if aspect == "honesty" else "####"
    headers = re.findall(r"^(#+) Output for Text (\d+)$", format_part, re.M)
    assert headers == [(hashes, str(i)) for i in range(1, k + 1)]
    assert format_part.count("Type: [") == (k if aspect in TYPED_ASPECTS else 0)
    assert user.endswith(
        "### Input\nInstruction: Name a prime.\n\nTexts:\n"
        + "\n".join(f"<text {i}> {TEXTS[i - 1]}" for i in range(1, k + 1))
        + ("\n\nWorld Knowledge:\n" + NO_WORLD_KNOWLEDGE if aspect == "truthfulness" else "")
        + "\n\n### Output\n"
    )


@pytest.mark.parametrize(
    ("k", "word"), [(1, 'one "Text" output '), (2, 'two "Text" outputs'), (4, 'four "Text" outputs')]
)
def test_system_message_counts_the_texts(k: int, word: str) -> None:
    system = aspect_messages("honesty", "Q", TEXTS[:k], None)[0]["content"]
    assert word in system


def test_world_knowledge_goes_to_truthfulness_only() -> None:
    knowledge = "a subset of correct answers: ['7']"
    assert _user("truthfulness", knowledge=knowledge).count("World Knowledge:") == 2
    assert f"World Knowledge:\n{knowledge}\n\n### Output\n" in _user("truthfulness", knowledge=knowledge)
    for aspect in ("instruction_following", "honesty", "helpfulness"):
        user = _user(aspect, knowledge=knowledge)
        assert "World Knowledge" not in user and knowledge not in user


def test_truthfulness_without_knowledge_shows_the_placeholder() -> None:
    assert f"World Knowledge:\n{NO_WORLD_KNOWLEDGE}\n" in _user("truthfulness", knowledge=None)


def test_braces_in_instruction_and_texts_are_kept_verbatim() -> None:
    user = aspect_messages("helpfulness", "Fill {x} and {{y}}", ["a {text_1}", "b"], None)[1]["content"]
    assert "Instruction: Fill {x} and {{y}}\n" in user and "<text 1> a {text_1}\n" in user


@pytest.mark.parametrize(("aspect", "texts"), [("harmlessness", ["a"]), ("honesty", []), ("Honesty", ["a"])])
def test_aspect_messages_rejects_caller_errors(aspect: str, texts: list[str]) -> None:
    with pytest.raises(ValueError):
        aspect_messages(aspect, "Q", texts, None)


@pytest.mark.parametrize(
    ("mode", "correct", "incorrect", "expected"),
    [
        ("none", ["x"], ["y"], None),
        (
            "answers",
            ["Paris", "It's Paris"],
            ["Lyon"],
            "a subset of correct answers: ['Paris', \"It's Paris\"]\na subset of incorrect_answers: ['Lyon']",
        ),
        ("answers", ["None"], ["None"], None),
        ("false_premise", ["None"], ["None"], FALSE_PREMISE_NOTE),
        ("target", ["(B) 42"], ["None"], "(B) 42"),
        ("target", ["None"], ["None"], None),
    ],
)
def test_world_knowledge_modes(
    mode: str, correct: list[str], incorrect: list[str], expected: str | None
) -> None:
    assert world_knowledge(mode, correct, incorrect) == expected


def test_false_premise_sentence_fixes_the_typo() -> None:
    assert FALSE_PREMISE_NOTE == "The question is based on a false premise."


def test_unknown_world_knowledge_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="known: none, answers, false_premise, target"):
        world_knowledge("web", [], [])


def test_critique_prompt_layout() -> None:
    system, user = critique_messages("Add 2 and 3.", "It is 5.", "honesty", "  Say when unsure.  ")
    assert system["role"] == "system" and user["role"] == "user"
    assert "act as a teacher" in user["content"]
    assert (
        "---\n\n### Instruction\nAdd 2 and 3.\nNote: Say when unsure.\n\n### Answer\nIt is 5.\n\n---\n"
        in (user["content"])
    )
    assert "### Feedback\n[Your feedback]\nOverall Score: [1-10]\n" in user["content"]
    assert user["content"].endswith("### Feedback\n")


def test_critique_cuts_the_calibration_prompt_before_its_example() -> None:
    (prompt,) = load_principles()["verbalized_calibration"]
    user = critique_messages("Q?", "A.", "verbalized_calibration", prompt)[1]["content"]
    note = user.split("Note: ", 1)[1].split("\n\n### Answer", 1)[0]
    assert note == prompt.split(CALIBRATION_CUT)[0].strip()
    assert len(re.findall(r"[.!?](?:\s|$)", note)) == 2
    assert "For instance" not in user and "[Question]" not in user


def test_critique_keeps_other_principles_whole() -> None:
    prompt = "Be helpful. For instance, give examples."
    user = critique_messages("Q?", "A.", "helpfulness", prompt)[1]["content"]
    assert f"Note: {prompt}\n" in user


def test_critique_without_system_prompt_has_no_note() -> None:
    user = critique_messages("Q?", "A.", "helpfulness", "")[1]["content"]
    assert "Note:" not in user and "### Instruction\nQ?\n\n### Answer" in user


def test_versions_are_short_hashes_of_the_files(tmp_path: Path) -> None:
    assert re.fullmatch(r"[0-9a-f]{12}", TEMPLATE_VERSION)
    assert re.fullmatch(r"[0-9a-f]{12}", CRITIQUE_TEMPLATE_VERSION)
    copy = tmp_path / "templates"
    shutil.copytree(Path(prompts.__file__).parent / "templates", copy)
    assert template_versions(copy) == (TEMPLATE_VERSION, CRITIQUE_TEMPLATE_VERSION)
    honesty = copy / "honesty.txt"
    honesty.write_text(honesty.read_text().replace("creative writing", "poetry"))
    assert template_versions(copy) == (template_versions(copy)[0], CRITIQUE_TEMPLATE_VERSION)
    assert template_versions(copy)[0] != TEMPLATE_VERSION
    critique = copy / "critique_user.txt"
    critique.write_text(critique.read_text().replace("teacher", "tutor"))
    assert template_versions(copy)[1] != CRITIQUE_TEMPLATE_VERSION


@pytest.mark.parametrize("k", range(0, 8))
def test_shuffle_is_a_deterministic_permutation(k: int) -> None:
    order = shuffle_order(k, 7, "inst-1", "honesty")
    assert sorted(order) == list(range(k))
    assert order == shuffle_order(k, 7, "inst-1", "honesty")
    inverse = inverse_order(order)
    assert [order[inverse[j]] for j in range(k)] == list(range(k))
    assert inverse == [order.index(j) for j in range(k)]


def test_shuffle_is_pinned() -> None:
    # annotation keys contain the shown order: a change here silently re-annotates every dataset
    assert shuffle_order(4, 0, "x", "honesty") == [2, 3, 0, 1]


def test_shuffle_covers_all_orders_and_depends_on_every_input() -> None:
    seen = {tuple(shuffle_order(4, 0, f"inst-{i}", "honesty")) for i in range(500)}
    assert len(seen) == 24
    base = [shuffle_order(4, 0, f"inst-{i}", "honesty") for i in range(50)]
    assert base != [shuffle_order(4, 1, f"inst-{i}", "honesty") for i in range(50)]
    assert base != [shuffle_order(4, 0, f"inst-{i}", "truthfulness") for i in range(50)]
