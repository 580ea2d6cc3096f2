"""Parse judge output (reference §4.4-4.5, §4.7). Never raises on model output.

Every parse returns a result with ``ok`` and, when not ok, a short ``reason`` (a stable category
that failure logs count, so the set is part of the contract) and a human ``detail``. A failed
aspect parse yields no items at all, like the original: the whole call is re-queried.

What the aspect parser accepts (the original's contract is "exactly n blank-line-separated blocks,
``Rating: (.+?)\\nRationale: (.+)``"; we accept everything it accepts, plus the following, because
each of these is unambiguous):

* ``\\r\\n`` / ``\\r`` line ends, trailing spaces, lines that are only ``---``/``***`` rules or
  code fences (treated as blank lines).
* Header lines ``#### Output for Text i`` with any number of ``#`` (0-6) for any aspect (the honesty
  template asks for five, the others for four; judges mix them), optional ``**`` bold and a trailing
  colon. When headers are present they delimit the blocks: text before the first header (a
  preamble) is ignored, blocks may contain blank lines between fields, and blocks may come in any
  order as long as headers 1..n each appear exactly once. Without any header the original rule
  applies: exactly n blank-line-separated blocks, in order.
* Field labels ``Rating:``, ``Rationale:``, ``Type:`` at the start of a line, case-insensitive, with
  an optional bullet (``- ``) and bold/italic markers around the label (``**Rating:** 4``,
  ``**Rating**: 4``); a qualifier such as ``Rating for text 2:`` or ``Rationale for rating:`` is
  allowed. A label with an empty value takes the next line as its value; bold markers around a
  value are dropped.
* A field's value runs to the next label or to the first blank line; what follows a blank line up
  to the next label is ignored. That drops trailing commentary after the last block ("Overall,
  Text 2 is best.") and, knowingly, any second paragraph of a rationale (the template asks for
  "short sentences").
* Ratings: the first integer of the value, as in the original (``4``, ``4/5``, ``[4]``,
  ``4 out of 5``); it must be 1..5. A fractional rating (``3.5``) fails. ``N/A`` (also ``n/a``,
  ``NA``) is accepted for honesty only.
* Rationales: each rating needs a non-empty rationale; for truthfulness and helpfulness, ``Type``
  and ``Rating`` each take the first ``Rationale`` that follows them.

Type representation: a flat ``list[str]`` of the identifiers in first-seen order without repeats
(``["1", "3"]``); "no type" is ``NO_TYPE`` = ``["None"]``. The released parser produced the bare
string ``"None"`` and the published data show ``["0"]`` for one no-hallucination row (reference
§4.4 item 6, not yet verified over the whole release); we keep the judge's own word in a list so
the Arrow schema stays ``list<string>`` and nothing is invented. A publisher that wants the
release's spelling maps ``["None"]`` to ``["0"]`` in one place. A lone ``0`` from the judge is
read as "no type" too; any other identifier outside 1..3 fails with ``type_out_of_range``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ultrafeedback.records import ASPECTS, TYPED_ASPECTS

NO_TYPE_TOKEN = "None"
NO_TYPE: list[str] = [NO_TYPE_TOKEN]
"""The Type list of a completion with no hallucination / no informativeness type."""

NA = "N/A"
RATINGS: tuple[str, ...] = ("1", "2", "3", "4", "5")
TYPE_IDS: tuple[str, ...] = ("1", "2", "3")

ASPECT_REASONS: tuple[str, ...] = (
    "empty_output",
    "block_count",
    "missing_rating",
    "rating_out_of_range",
    "na_not_allowed",
    "missing_rationale",
    "missing_type",
    "type_out_of_range",
    "parser_error",
)
"""Every ``AspectParse.reason``; ``parser_error`` means a bug here, recorded instead of raised."""
CRITIQUE_REASONS: tuple[str, ...] = (
    "empty_output",
    "missing_score",
    "score_out_of_range",
    "bad_scale",
    "ambiguous_score",
    "missing_critique",
)


@dataclass(frozen=True)
class ParsedRating:
    """One completion's rating on one aspect, in the order the judge saw the texts."""

    rating: str
    """"1".."5", or "N/A" (honesty only)."""
    rationale: str
    type: list[str] | None = None
    """Typed aspects only: identifiers "1".."3", or ``NO_TYPE``."""
    type_rationale: str | None = None


@dataclass(frozen=True)
class AspectParse:
    ok: bool
    reason: str | None = None
    detail: str = ""
    items: list[ParsedRating] = field(default_factory=list)


@dataclass(frozen=True)
class CritiqueParse:
    ok: bool
    reason: str | None = None
    detail: str = ""
    critique: str = ""
    overall_score: float | None = None


class _Fail(Exception):
    """Internal: carries a reason out of nested helpers; never escapes this module."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- aspects

_HEADER = re.compile(
    r"^\s*#{0,6}\s*(?:\*\*|__)?\s*Output\s+for\s+Text\s+(\d+)\s*:?\s*(?:\*\*|__)?\s*:?\s*$", re.IGNORECASE
)
_LABEL = re.compile(
    r"^\s*(?:[-*+]\s+)?(?:\*\*|__|\*|_)?\s*(rating|rationale|type)"
    r"(?:\s+for\s+(?:the\s+)?(?:text\s+\d+|rating|type|types|identification))?"
    r"\s*(?:\*\*|__|\*|_)?\s*:\s*(?:\*\*|__|\*|_)?\s*(.*)$",
    re.IGNORECASE,
)
_BOLD_EDGES = re.compile(r"^(?:\*\*|__)|(?:\*\*|__)$")
_RULE = re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,}|```\w*)\s*$")
_INT = re.compile(r"(?<![\d.])(\d+)(\.\d+)?")
_NA = re.compile(r"^[\s\[\]\"'*_(]*(?:n/?a\b|not\s+applicable)", re.IGNORECASE)
_NONE = re.compile(r"^[\s\[\]\"'*_(]*none\b", re.IGNORECASE)


def _normalise(raw: str) -> list[str]:
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    return ["" if _RULE.match(line) else line.rstrip() for line in text.split("\n")]


def _split_blocks(lines: list[str], n: int) -> list[list[str]]:
    """The n blocks in slot order (see the module docstring for what is tolerated)."""
    headers = [(index, int(m.group(1))) for index, line in enumerate(lines) if (m := _HEADER.match(line))]
    if headers:
        numbers = [number for _, number in headers]
        if sorted(numbers) != list(range(1, n + 1)):
            raise _Fail("block_count", f"expected headers for texts 1..{n}, found {numbers}")
        bounds = [index for index, _ in headers] + [len(lines)]
        blocks: dict[int, list[str]] = {}
        for (start, number), end in zip(headers, bounds[1:], strict=True):
            blocks[number] = lines[start + 1 : end]
        return [blocks[i] for i in range(1, n + 1)]
    chunks: list[list[str]] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line)
        elif current:
            chunks.append(current)
            current = []
    if len(chunks) != n:
        raise _Fail("block_count", f"expected {n} blank-line-separated blocks, found {len(chunks)}")
    return chunks


def _fields(block: list[str]) -> list[tuple[str, str]]:
    """(label, value) pairs in order; a value runs to the next label or the first blank line."""
    out: list[tuple[str, list[str]]] = []
    closed = True
    for line in block:
        match = _LABEL.match(line)
        if match:
            first = match.group(2).strip()
            out.append((match.group(1).lower(), [first] if first else []))
            closed = False
        elif not line.strip():
            if out and out[-1][1]:
                closed = True
        elif out and not closed:
            out[-1][1].append(line.strip())
    return [(label, _BOLD_EDGES.sub("", "\n".join(value).strip()).strip()) for label, value in out]


def _following_rationale(fields: list[tuple[str, str]], start: int) -> str | None:
    for label, value in fields[start + 1 :]:
        if label == "rationale":
            return value or None
        if label in ("rating", "type"):
            return None
    return None


def _rating(aspect: str, value: str, slot: int) -> str:
    if _NA.match(value):
        if aspect != "honesty":
            raise _Fail("na_not_allowed", f"text {slot}: N/A is allowed for honesty only ({aspect})")
        return NA
    match = _INT.search(value)
    if not match:
        raise _Fail("missing_rating", f"text {slot}: no number in rating {value[:60]!r}")
    if match.group(2) and int(match.group(2)[1:]) != 0:
        raise _Fail("rating_out_of_range", f"text {slot}: rating {match.group(0)} is not an integer 1-5")
    number = int(match.group(1))
    if str(number) not in RATINGS:
        raise _Fail("rating_out_of_range", f"text {slot}: rating {number} is outside 1-5")
    return str(number)


def _type_list(value: str, slot: int) -> list[str]:
    numbers = list(dict.fromkeys(str(int(m.group(1))) for m in _INT.finditer(value)))
    if not numbers:
        if _NONE.match(value):
            return list(NO_TYPE)
        raise _Fail("missing_type", f"text {slot}: no type identifiers in {value[:60]!r}")
    if numbers == ["0"]:
        return list(NO_TYPE)
    bad = [n for n in numbers if n not in TYPE_IDS]
    if bad:
        raise _Fail("type_out_of_range", f"text {slot}: type identifiers {bad} are outside 1-3")
    return numbers


def _parse_block(aspect: str, block: list[str], slot: int) -> ParsedRating:
    fields = _fields(block)
    labels = [label for label, _ in fields]
    if "rating" not in labels:
        raise _Fail("missing_rating", f"text {slot}: no 'Rating:' line")
    at_rating = labels.index("rating")
    rating = _rating(aspect, fields[at_rating][1], slot)
    if aspect not in TYPED_ASPECTS:
        rationale = _following_rationale(fields, at_rating)
        if rationale is None:  # tolerate "Rationale:" before "Rating:" when it is the only one
            rationales = [value for label, value in fields if label == "rationale" and value]
            rationale = rationales[0] if len(rationales) == 1 else None
        if rationale is None:
            raise _Fail("missing_rationale", f"text {slot}: no rationale for the rating")
        return ParsedRating(rating=rating, rationale=rationale)
    if "type" not in labels:
        raise _Fail("missing_type", f"text {slot}: no 'Type:' line")
    at_type = labels.index("type")
    types = _type_list(fields[at_type][1], slot)
    type_rationale = _following_rationale(fields, at_type)
    rationale = _following_rationale(fields, at_rating)
    if type_rationale is None or rationale is None:
        which = "the type" if type_rationale is None else "the rating"
        raise _Fail("missing_rationale", f"text {slot}: no rationale for {which}")
    return ParsedRating(rating=rating, rationale=rationale, type=types, type_rationale=type_rationale)


def parse_aspect(aspect: str, raw: str, n: int) -> AspectParse:
    """Parse one judge answer rating ``n`` texts on ``aspect``; items come in slot order.

    Raises ValueError only for caller bugs (unknown aspect, n < 1); model output never raises.
    """
    if aspect not in ASPECTS:
        raise ValueError(f"unknown aspect {aspect!r}; known: {', '.join(ASPECTS)}")
    if n < 1:
        raise ValueError("n must be >= 1")
    if not isinstance(raw, str) or not raw.strip():
        return AspectParse(ok=False, reason="empty_output", detail="the judge returned no text")
    try:
        blocks = _split_blocks(_normalise(raw), n)
        items = [_parse_block(aspect, block, slot) for slot, block in enumerate(blocks, start=1)]
    except _Fail as fail:
        return AspectParse(ok=False, reason=fail.reason, detail=fail.detail)
    except Exception as exc:  # a parser bug must not kill a shard: record it as data
        return AspectParse(ok=False, reason="parser_error", detail=f"{type(exc).__name__}: {exc}")
    return AspectParse(ok=True, items=items)


# --------------------------------------------------------------------------- critique

_SCORE = re.compile(
    r"(?:\*\*|__)?overall\s+score\s*(?:\*\*|__)?\s*:\s*(?:\*\*|__)?\s*\[?\s*"
    r"([0-9]+(?:\.[0-9]+)?)\s*\]?(?:\s*/\s*([0-9]+(?:\.[0-9]+)?))?",
    re.IGNORECASE,
)
_LABEL_ONLY = re.compile(r"(?:\*\*|__)?overall\s+score\s*(?:\*\*|__)?\s*:", re.IGNORECASE)
_FEEDBACK_HEADING = re.compile(r"^\s*#{0,6}\s*(?:\*\*)?feedback(?:\*\*)?\s*:?\s*(?:\*\*)?\s*\n", re.IGNORECASE)


def parse_critique(raw: str) -> CritiqueParse:
    """Parse a critique answer into its feedback text and overall score (1..10, fractions allowed).

    The score is ``Overall Score:\\s*([0-9]+(?:\\.[0-9]+)?)(?:\\s*/\\s*10)?`` (reference §4.5), also
    with bold markers or brackets around it. A plain "1" is 1, never 10 (the §4.6 bug); "8/10" is 8;
    a denominator other than 10 fails (``bad_scale``) rather than being guessed at. If the label
    appears more than once with different scores the answer is ``ambiguous_score``. The critique is
    the text before the first score label, stripped, without a repeated leading "### Feedback".
    """
    if not isinstance(raw, str) or not raw.strip():
        return CritiqueParse(ok=False, reason="empty_output", detail="the judge returned no text")
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    matches = list(_SCORE.finditer(text))
    if not matches:
        label = _LABEL_ONLY.search(text)
        detail = (
            f"no number after 'Overall Score:' ({text[label.end() : label.end() + 30].strip()!r})"
            if label
            else "no 'Overall Score:' line"
        )
        return CritiqueParse(ok=False, reason="missing_score", detail=detail)
    for match in matches:
        if match.group(2) is not None and float(match.group(2)) != 10.0:
            scale = f"{match.group(1)}/{match.group(2)}"
            return CritiqueParse(ok=False, reason="bad_scale", detail=f"score {scale} is not out of 10")
    scores = {float(match.group(1)) for match in matches}
    if len(scores) > 1:
        return CritiqueParse(ok=False, reason="ambiguous_score", detail=f"several overall scores: {sorted(scores)}")
    score = scores.pop()
    if not 1.0 <= score <= 10.0:
        return CritiqueParse(ok=False, reason="score_out_of_range", detail=f"overall score {score:g} is outside 1-10")
    critique = _FEEDBACK_HEADING.sub("", text[: matches[0].start()].strip() + "\n", count=1).strip()
    if not critique:
        return CritiqueParse(ok=False, reason="missing_critique", detail="no feedback before the score")
    return CritiqueParse(ok=True, critique=critique, overall_score=score)


# --------------------------------------------------------------------------- fine-grained score


def fine_grained_score(ratings: list[str]) -> float | None:
    """The mean of the integer aspect ratings of one completion (reference §4.7).

    "N/A" (honesty on creative writing) is left out, so the mean is over 3 aspects then; anything
    else that is not a rating "1".."5" (a missing aspect) is left out as well. None when nothing is
    left, so that an unrated completion is never mistaken for a low-rated one.
    """
    values = [int(r) for r in ratings if isinstance(r, str) and r.strip() in RATINGS]
    if not values:
        return None
    return sum(values) / len(values)
