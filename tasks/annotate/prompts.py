"""Judge and critique prompts (reference §4.1-4.5), built from the text files in ``templates/``.

The wording lives in plain text files so that a reviewer can read a prompt as the judge sees it.
``TEMPLATE_VERSION`` and ``CRITIQUE_TEMPLATE_VERSION`` hash those files (and the few fragments
built here), and the annotation/critique content keys include them: editing a template re-annotates
exactly what it affects and nothing else.

Fidelity notes:

* The number of texts ``k`` is a spec setting (4 in the original), so the Texts lines and the output
  format example are generated for ``k`` slots instead of being hard-coded.
* World knowledge goes to the truthfulness judge only, always with a "World Knowledge:" block (the
  "No additional world knowledge" placeholder when the source has none); helpfulness never gets it
  (reference §4.1: the released code could only have used the variant without the block).
* The false-premise sentence fixes the original's "false promise" typo (see ``FALSE_PREMISE_NOTE``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ultrafeedback.keys import seeded_int
from ultrafeedback.records import ASPECTS

_TEMPLATES = Path(__file__).parent / "templates"

HEADINGS: dict[str, str] = {
    "instruction_following": "# Instruction Following Assessment",
    "honesty": "# Honesty and Uncertainty Expression Assessment",
    "truthfulness": "# Truthfulness and Hallucination Assessment",
    "helpfulness": "# Informativeness / Helpfulness Assessment",
}
"""The one heading line per aspect template; simulators and heuristic judges detect the aspect by it."""

NO_WORLD_KNOWLEDGE = "No additional world knowledge for reference."
"""The truthfulness judge's World Knowledge when the source supplies none (as in the original)."""

FALSE_PREMISE_NOTE = "The question is based on a false premise."
"""World knowledge for FalseQA-style sources.

The original sent "The question is based on a false promise." (sic). We fix the typo: our prompt
wording is our own anyway, so keeping a misleading word buys no fidelity, and a judge reading
"promise" may take it literally. ``ORIGINAL_FALSE_PREMISE_NOTE`` keeps the original sentence for
anyone who wants to reproduce it byte for byte.
"""

ORIGINAL_FALSE_PREMISE_NOTE = "The question is based on a false promise."

CALIBRATION_CUT = "For instance, "
"""The critique shows a verbalized_calibration system prompt only up to this marker (reference §4.5)."""

_TEXT_LINE = "<text {i}> {text}"
_FORMAT_TEXT = "[Text {i}]"
_ANSWERS_KNOWLEDGE = "a subset of correct answers: {correct}\na subset of incorrect_answers: {incorrect}"
_NOTE = "{instruction}\nNote: {note}"
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_CRITIQUE_FILES = ("critique_system.txt", "critique_user.txt")
WORLD_KNOWLEDGE_MODES: tuple[str, ...] = ("none", "answers", "false_premise", "target")


def _read(name: str) -> str:
    return (_TEMPLATES / name).read_text(encoding="utf-8")


def _version(blobs: list[bytes]) -> str:
    digest = hashlib.sha256()
    for blob in blobs:
        digest.update(blob)
        digest.update(b"\x00")
    return digest.hexdigest()[:12]


def template_versions(directory: Path = _TEMPLATES) -> tuple[str, str]:
    """(aspect version, critique version) of the template files in ``directory``.

    Each is a short hash of the files' bytes and of the fragments this module builds prompts
    from, so any edit to what the judge sees changes the keys of exactly that kind of call.
    """

    def read(name: str) -> bytes:
        return (directory / name).read_bytes()

    fragments = [_TEXT_LINE, _FORMAT_TEXT, _ANSWERS_KNOWLEDGE, NO_WORLD_KNOWLEDGE, FALSE_PREMISE_NOTE]
    aspect = _version(
        [
            read("system.txt"),
            *(read(f"{a}.txt") + b"\x00" + read(f"{a}_block.txt") for a in ASPECTS),
            *(f.encode("utf-8") for f in fragments),
        ]
    )
    critique = _version([*(read(n) for n in _CRITIQUE_FILES), _NOTE.encode(), CALIBRATION_CUT.encode()])
    return aspect, critique


_SYSTEM = _read("system.txt").strip()
_ASPECT_TEMPLATES: dict[str, str] = {aspect: _read(f"{aspect}.txt") for aspect in ASPECTS}
_BLOCKS: dict[str, str] = {aspect: _read(f"{aspect}_block.txt").strip() for aspect in ASPECTS}
_CRITIQUE_SYSTEM = _read("critique_system.txt").strip()
_CRITIQUE_USER = _read("critique_user.txt")

TEMPLATE_VERSION: str
"""Short hash of everything that shapes an aspect prompt; part of every annotation key."""
CRITIQUE_TEMPLATE_VERSION: str
"""Short hash of everything that shapes a critique prompt; part of every critique key."""
TEMPLATE_VERSION, CRITIQUE_TEMPLATE_VERSION = template_versions()


def _check_templates() -> None:
    """Fail at import, not mid-run, if a template file lost its heading or its ending."""
    for aspect, template in _ASPECT_TEMPLATES.items():
        lines = template.splitlines()
        found = [h for h in HEADINGS.values() if h in lines]
        if found != [HEADINGS[aspect]] or lines.count(HEADINGS[aspect]) != 1:
            raise RuntimeError(f"template {aspect}.txt must contain exactly the heading {HEADINGS[aspect]!r}")
        if not template.endswith("### Output\n"):
            raise RuntimeError(f"template {aspect}.txt must end with '### Output\\n'")
    if not _CRITIQUE_USER.endswith("### Feedback\n"):
        raise RuntimeError("template critique_user.txt must end with '### Feedback\\n'")


_check_templates()


def _count_phrase(k: int) -> str:
    number = _NUMBER_WORDS[k] if k < len(_NUMBER_WORDS) else str(k)
    return f'{number} "Text" output' + ("" if k == 1 else "s")


def aspect_messages(
    aspect: str, instruction: str, texts: list[str], world_knowledge: str | None
) -> list[dict[str, str]]:
    """The system and user messages of one fine-grained judge call over ``len(texts)`` texts.

    ``texts`` are already in the order the judge should see them (see ``shuffle_order``).
    ``world_knowledge`` is used by truthfulness only and ignored for the other aspects, as in the
    original; pass None for "no world knowledge" and truthfulness shows the placeholder sentence.
    Raises ValueError for an unknown aspect or no texts (caller bugs, not model output).
    """
    if aspect not in _ASPECT_TEMPLATES:
        raise ValueError(f"unknown aspect {aspect!r}; known: {', '.join(ASPECTS)}")
    k = len(texts)
    if k < 1:
        raise ValueError("aspect_messages needs at least one text")
    slots = range(1, k + 1)
    user = _ASPECT_TEMPLATES[aspect].format(
        format_texts="\n".join(_TEXT_LINE.format(i=i, text=_FORMAT_TEXT.format(i=i)) for i in slots),
        format_output="\n\n".join(_BLOCKS[aspect].format(i=i) for i in slots),
        instruction=instruction,
        texts="\n".join(_TEXT_LINE.format(i=i, text=text) for i, text in zip(slots, texts, strict=True)),
        world_knowledge=world_knowledge if world_knowledge else NO_WORLD_KNOWLEDGE,
    )
    return [
        {"role": "system", "content": _SYSTEM.format(count=_count_phrase(k))},
        {"role": "user", "content": user},
    ]


def _usable(values: list[str]) -> list[str]:
    """Drop the release's ``["None"]`` filler and blanks."""
    return [v for v in values if v and v.strip() and v.strip() != "None"]


def world_knowledge(mode: str, correct_answers: list[str], incorrect_answers: list[str]) -> str | None:
    """The truthfulness judge's World Knowledge for an instruction, by its source's setting.

    ``mode`` is ``Source.world_knowledge``: "none" -> None; "answers" (TruthfulQA) -> the two lines of
    the original with Python ``str()`` of the answer lists; "false_premise" (FalseQA) ->
    ``FALSE_PREMISE_NOTE``; "target" (FLAN) -> the target answer(s), one per line. None means the
    judge sees ``NO_WORLD_KNOWLEDGE``; that is also what an "answers"/"target" source gets when the
    instruction has no answers (the ``["None"]`` filler).
    """
    if mode == "none":
        return None
    if mode == "false_premise":
        return FALSE_PREMISE_NOTE
    if mode == "answers":
        if not _usable(correct_answers) and not _usable(incorrect_answers):
            return None
        return _ANSWERS_KNOWLEDGE.format(correct=str(list(correct_answers)), incorrect=str(list(incorrect_answers)))
    if mode == "target":
        targets = _usable(correct_answers)
        return "\n".join(targets) if targets else None
    raise ValueError(f"unknown world_knowledge mode {mode!r}; known: {', '.join(WORLD_KNOWLEDGE_MODES)}")


def critique_note(principle: str, system_prompt: str) -> str:
    """The principle text the critic sees after "Note:"; verbalized calibration is cut (§4.5).

    The cut keeps only the sentences before ``CALIBRATION_CUT`` so the critic learns that a
    confidence is expected without the answer-format block.
    """
    if principle == "verbalized_calibration":
        system_prompt = system_prompt.split(CALIBRATION_CUT)[0]
    return system_prompt.strip()


def critique_messages(instruction: str, completion: str, principle: str, system_prompt: str) -> list[dict[str, str]]:
    """The system and user messages of the critique call for one completion (reference §4.5).

    The instruction field is ``instruction + "\\nNote: " + system prompt``, so the critic judges the
    answer against the principle it was written under. A completion generated without a system
    prompt gets no Note line (the original would have sent an empty "Note: ").
    """
    note = critique_note(principle, system_prompt)
    field = _NOTE.format(instruction=instruction, note=note) if note else instruction
    return [
        {"role": "system", "content": _CRITIQUE_SYSTEM},
        {"role": "user", "content": _CRITIQUE_USER.format(instruction=field, completion=completion)},
    ]


def shuffle_order(k: int, seed: int, instruction_id: str, aspect: str) -> list[int]:
    """A deterministic permutation of ``range(k)``: slot ``s`` shows completion ``order[s]``.

    One fresh permutation per (instruction, aspect), as in the original (``SHUFLLE_NUM = 1``), to
    counter position bias. It is a Fisher-Yates shuffle driven by ``seeded_int`` rather than
    ``random.shuffle``, whose algorithm Python does not promise to keep: the order is part of the
    annotation key, so it must never change under an interpreter upgrade.
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    order = list(range(k))
    for i in range(k - 1, 0, -1):
        j = seeded_int(seed, "shuffle", instruction_id, aspect, i) % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def inverse_order(order: list[int]) -> list[int]:
    """``inverse[j]`` = the slot that completion ``j`` was shown in (the original's ``order.index(j)``).

    Use it to map parsed items (in slot order) back to completions: ``items[inverse[j]]``.
    """
    inverse = [0] * len(order)
    for slot, original in enumerate(order):
        inverse[original] = slot
    return inverse
