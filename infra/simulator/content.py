"""What the simulator says: deterministic generations, judge ratings and critiques.

Everything here is a pure function of (seed, model, request content), so a rerun of a pipeline
against the simulator produces the same dataset and a test can predict its answers. Judge ratings
hash the *text being rated* (not its slot), so the same completion gets the same rating whatever
order the shuffle put it in — which lets tests check that the annotate stage maps slots back.

The judge formats are the original annotator's (reference/ultrafeedback.md §4.3): exactly N
blocks separated by one blank line, no preamble, honesty's five-hash header and its "N/A".
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Literal

from ultrafeedback.infra.llm import judge_format
from ultrafeedback.infra.llm.judge_format import aspect_block, aspect_reply

Kind = Literal["generation", "judge_aspect", "critique"]

HEADINGS: dict[str, str] = {
    "# Instruction Following Assessment": "instruction_following",
    "# Honesty and Uncertainty Expression Assessment": "honesty",
    "# Truthfulness and Hallucination Assessment": "truthfulness",
    "# Informativeness / Helpfulness Assessment": "helpfulness",
}
"""The heading line of each aspect's judge template -> the aspect."""

_HEADING_LINES = {aspect: re.compile(rf"(?m)^{re.escape(heading)}[ \t]*$") for heading, aspect in HEADINGS.items()}
_ANNOTATION = re.compile(r"(?m)^## Annotation[ \t]*$")
_MARKER = re.compile(r"(?m)^<text (\d+)>")
_TEXT_END = re.compile(r"(?m)^(?:World Knowledge:|### Output)")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")
_SPACE = re.compile(r"\s+")
_RULE = re.compile(r"(?m)^---[ \t]*$")

_STOPWORDS = frozenset(
    """about above after again against also among and any are because been before being below
    between both but can could did does doing down during each few for from further had has have
    having her here hers him his how into its itself just more most not now off once only other
    our out over own please same she should some such than that the their them then there these
    they this those through too under until very was were what when where which while who whom
    why will with would you your yours write give explain tell make list describe""".split()
)

_RATING_WEIGHTS = (8, 14, 26, 30, 22)
"""Spread of fine-grained ratings 1..5: mostly 3-4 as in the released data; ties and non-ties both occur."""

_SCORES = ("1", "2", "3", "4", "5", "6", "6.5", "7", "7.5", "8", "8.5", "9", "10")
_SCORE_WEIGHTS = (2, 3, 5, 7, 10, 12, 9, 14, 10, 12, 6, 7, 3)

_RATING_WORDS = {
    "instruction_following": (
        "does not address the task goal at all",
        "addresses one aspect of the task poorly",
        "meets the goal but neglects a restriction",
        "is nearly aligned with minor deviations",
        "fully complies with the goal and restrictions",
    ),
    "honesty": (
        "is confidently incorrect",
        "is confident but contains significant mistakes",
        "hedges or contains minor errors",
        "is correct but expresses some uncertainty",
        "is correct and confident",
    ),
    "truthfulness": (
        "is largely hallucinated",
        "contains severe hallucinations",
        "is overall truthful with a partial misunderstanding",
        "has only an insignificant slip",
        "contains no hallucination",
    ),
    "helpfulness": (
        "is severely incorrect",
        "contains errors that may confuse",
        "is correct and meets the requirements",
        "is accurate and informative",
        "is accurate, in-depth and comprehensive",
    ),
}

_OPENERS = (
    "Here is a clear answer about {a}.",
    "Let us look at {a} step by step.",
    "In short, {a} comes down to a few key ideas.",
    "A good way to think about {a} is to start from the basics.",
)
_BODY = (
    "The first point is that {a} depends on {b}, so it helps to consider both together.",
    "Many people confuse {a} with {b}, but the two differ in important ways.",
    "In practice, {a} is usually handled by checking {b} first.",
    "One useful example involves {a} and {b}, which shows the idea concretely.",
    "It is worth noting that {b} can change how {a} behaves.",
    "A common mistake is to ignore {b} when reasoning about {a}.",
    "Overall, {a} and {b} fit together into a consistent picture.",
    "If more detail is needed, the relationship between {a} and {b} is a good place to start.",
)
_FEEDBACK = (
    "The answer addresses {a} but could explain {b} more precisely.",
    "The answer is mostly relevant; the part on {a} lacks a concrete example.",
    "The answer states facts about {a} without support; cite how {b} follows.",
    "The answer is well organised, though the discussion of {b} is repetitive.",
    "The answer misses the role of {b} and should say how it affects {a}.",
)


def _int_hash(*parts: object) -> int:
    blob = "\x1f".join(str(p) for p in parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


def _weighted(h: int, values: tuple[str, ...] | range, weights: tuple[int, ...]) -> str:
    point = h % sum(weights)
    for value, weight in zip(values, weights, strict=True):
        if point < weight:
            return str(value)
        point -= weight
    raise AssertionError("unreachable")


def _keywords(text: str, limit: int = 8) -> list[str]:
    """Content words of a text in order of appearance, deduplicated."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text):
        lower = word.lower().strip("'-")
        if len(lower) > 3 and lower not in _STOPWORDS:
            seen.setdefault(lower, None)
            if len(seen) >= limit:
                break
    return list(seen) or ["the question", "the context"]


# ---------------------------------------------------------------------------- classification
def judge_aspect(user_text: str) -> str | None:
    """The aspect whose template heading line appears in the user message, if any."""
    if "Assessment" not in user_text:
        return None
    for aspect, pattern in _HEADING_LINES.items():
        if pattern.search(user_text):
            return aspect
    return None


def classify(user_text: str) -> tuple[Kind, str | None]:
    """(kind, aspect) of a request from its user message."""
    aspect = judge_aspect(user_text)
    if aspect is not None:
        return "judge_aspect", aspect
    if "Overall Score:" in user_text and "### Feedback" in user_text:
        return "critique", None
    return "generation", None


def judge_texts(user_text: str) -> list[tuple[int, str]]:
    """The texts to rate: (N, text) for each distinct ``<text N>`` after the last ``## Annotation``."""
    starts = [m.end() for m in _ANNOTATION.finditer(user_text)]
    section = user_text[starts[-1] :] if starts else user_text
    markers = list(_MARKER.finditer(section))
    if not markers:
        return []
    texts: dict[int, str] = {}
    for index, match in enumerate(markers):
        if index + 1 < len(markers):
            end = markers[index + 1].start()
        else:
            # the template's trailing lines (World Knowledge, ### Output) are not part of the text
            tails = [m.start() for m in _TEXT_END.finditer(section, match.end())]
            end = tails[0] if tails else len(section)
        number = int(match.group(1))
        texts.setdefault(number, _SPACE.sub(" ", section[match.end() : end]).strip())
    return sorted(texts.items())


# ---------------------------------------------------------------------------- judge
def _rationale(aspect: str, slot: int, rating: str, text: str) -> str:
    words = _keywords(text, 3)
    if rating == "N/A":
        verdict = "is a creative task where honesty does not apply"
    else:
        verdict = _RATING_WORDS[aspect][int(rating) - 1]
    return f"Text {slot} {verdict}; it discusses {', '.join(words)}."


def _types(aspect: str, rating: int, h: int) -> tuple[str, str]:
    if aspect == "truthfulness":
        if rating == 5:
            return "None", "No hallucination is present."
        options = ("1", "2", "3", "1, 3", "1, 2")
        types = options[h % len(options)]
        return types, f"The text shows hallucination of type {types}."
    if rating <= 2:
        options = ("None", "1")
    elif rating == 3:
        options = ("1", "1, 3")
    else:
        options = ("1, 2", "1, 2, 3")
    types = options[h % len(options)]
    if types == "None":
        return types, "The text is neither clear nor useful."
    return types, f"The text satisfies informativeness criteria {types}."


def rating_for(seed: int, model: str, aspect: str, text: str) -> str:
    """The rating the simulated judge gives one text on one aspect: "1".."5" or "N/A" (honesty)."""
    h = _int_hash("rating", seed, model, aspect, text)
    if aspect == "honesty" and (h >> 20) % 100 < 7:
        return "N/A"
    return _weighted(h, range(1, 6), _RATING_WEIGHTS)


def judge_reply(aspect: str, texts: list[tuple[int, str]], seed: int, model: str) -> str:
    """N blocks in the original annotator format, one per text, separated by one blank line."""
    blocks = []
    for slot, text in texts:
        rating = rating_for(seed, model, aspect, text)
        rationale = _rationale(aspect, slot, rating, text)
        types = type_rationale = None
        if aspect in ("truthfulness", "helpfulness"):
            types, type_rationale = _types(aspect, int(rating), _int_hash("type", seed, model, text))
        blocks.append(aspect_block(aspect, slot, rating, rationale, types, type_rationale))
    return aspect_reply(blocks)


def break_judge_reply(reply: str, rng: random.Random) -> str:
    """A judge answer that no faithful parser accepts (the ``unparseable`` fault).

    Either a block is missing or a rating is not a number: both lose information, so even a
    lenient parser (one that forgives a preamble or stray blank lines) must reject them.
    """
    blocks = reply.split("\n\n")
    if rng.random() < 0.5 and len(blocks) > 1:
        return "\n\n".join(blocks[:-1])
    return re.sub(r"(?m)^Rating: .*$", "Rating: excellent", reply, count=1)


# ---------------------------------------------------------------------------- critique
def critique_answer(user_text: str) -> str:
    """The answer being critiqued: after the ``### Answer`` line, up to the next ``---`` rule."""
    start = user_text.find("### Answer")
    if start < 0:
        return _SPACE.sub(" ", user_text).strip()
    body = user_text[start + len("### Answer") :]
    rule = _RULE.search(body)
    if rule is not None:
        body = body[: rule.start()]
    return _SPACE.sub(" ", body).strip()


def score_for(seed: int, model: str, answer: str) -> str:
    """The overall score (1..10, sometimes fractional like "7.5") for one answer."""
    return _weighted(_int_hash("score", seed, model, answer), _SCORES, _SCORE_WEIGHTS)


def critique_reply(user_text: str, seed: int, model: str) -> str:
    """One paragraph of feedback, then ``Overall Score: X`` on its own line."""
    answer = critique_answer(user_text)
    words = _keywords(answer, 6)
    rng = random.Random(_int_hash("critique", seed, model, answer))
    sentences = rng.sample(_FEEDBACK, 2)
    a, b = words[0], words[min(1, len(words) - 1)]
    feedback = " ".join(s.format(a=a, b=b) for s in sentences)
    return judge_format.critique_reply(feedback, score_for(seed, model, answer))


def break_critique_reply(reply: str, rng: random.Random) -> str:
    """A critique without a usable score (the ``unparseable`` fault)."""
    feedback = reply.split("\nOverall Score:", 1)[0]
    if rng.random() < 0.5:
        return feedback
    return f"{feedback}\nOverall Score: excellent"


# ---------------------------------------------------------------------------- generation
def generation_reply(instruction: str, system: str, seed: int, model: str, max_tokens: int | None) -> tuple[str, str]:
    """(text, finish_reason): a few plausible sentences about the instruction's words.

    Its natural length is 20-120 words; a smaller ``max_tokens`` cuts it at that many words with
    finish_reason "length" (one word stands for one token throughout the simulator).
    """
    rng = random.Random(_int_hash("generation", seed, model, system, instruction))
    words = _keywords(instruction)
    target = rng.randint(20, 120)
    first = words[0]
    sentences = [rng.choice(_OPENERS).format(a=first)]
    count = len(sentences[0].split())
    while count < target:
        a, b = rng.sample(words, 2) if len(words) > 1 else (first, "the context")
        sentence = rng.choice(_BODY).format(a=a, b=b)
        sentences.append(sentence)
        count += len(sentence.split())
    if "confidence" in system.lower():
        sentences.append(f"Confidence: {rng.choice((55, 70, 80, 90, 95))}%.")
    tokens = " ".join(sentences).split()
    if max_tokens is not None and len(tokens) > max_tokens:
        return " ".join(tokens[:max_tokens]), "length"
    return " ".join(tokens), "stop"
