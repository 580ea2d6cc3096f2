"""Parse judge output (reference §4.4-4.5, §4.7). Never raises on model output.

Every parse returns a result with ``ok`` and, when not ok, a short ``reason`` (a stable category
that failure logs count, so the set is part of the contract) and a human ``detail``. A failed
aspect parse yields no items at all, like the original: the whole call is re-queried.

The aspect parser's one promise: a rating is given to text i only when the judge's answer says,
in so many words, that it is text i's. The original parser split the answer on blank lines and
took the blocks in order of appearance; the template asks for a header ``#### Output for Text i``
(``#####`` for honesty) on every block, so the original judge's real output always names its
texts, and that name, not the position, decides where a rating goes. What is accepted:

* **Numbered blocks.** A block starts at a header line naming a text: ``#### Output for Text 2``,
  ``### Text 2``, ``Text 2:``, ``**Response 2**``, ``Completion 2``, ``Answer 2`` (0-6 ``#``,
  optional bold and colon, the whole line). Blocks may come in any order and may contain blank
  lines between fields. Without any header line, the answer must be blank-line-separated blocks
  each numbered by a field label that names its text (``Rating for text 2: 5``). The numbers must
  be exactly 1..n, each once (``block_count`` otherwise); a block that names no text, or a rating
  outside every block (in a preamble), is ``unnumbered_block``; a field label naming another text
  than its block's header (``### Text 1`` / ``Rating for text 2:``) is ``number_mismatch``.
* **Fields.** ``Rating:``, ``Rationale:``, ``Type:`` at the start of a line, case-insensitive, with
  an optional bullet (``- ``) and bold/italic markers around the label (``**Rating:** 4``); a
  qualifier ``for text i`` / ``for rating`` / ``for type`` is allowed. A label with an empty value
  takes the next line as its value; bold markers around a value are dropped. A value runs to the
  next label or to the first blank line; what follows a blank line up to the next label (closing
  remarks, a second paragraph of a rationale) is ignored. One ``Rating`` per block (and one
  ``Type`` for truthfulness and helpfulness), else ``duplicate_field``.
* **Ratings** come from the rating field only, and the value must *start* with the rating:
  ``4``, ``4/5``, ``[4]``, ``**4**``, ``4 out of 5``, ``4 (Almost There)``, ``4.0``. Any other digit
  in the value makes it ``ambiguous_rating`` (``Text 1 gets 4``, ``on a scale of 1 to 5, 4``,
  ``4 for text 1``), since reading its first integer, as the original did, can pick the wrong one.
  The rating must be an integer 1..5 on a scale of 5 (``rating_out_of_range`` for 0, 6, 3.5,
  4/10). ``N/A`` (also ``n/a``, ``NA``, ``Not applicable``) is accepted for honesty only, which is
  where the original emits it (creative writing); elsewhere it is ``na_not_allowed``.
* **Rationales**: each rating needs a non-empty rationale; for truthfulness and helpfulness,
  ``Type`` and ``Rating`` each take the first ``Rationale`` that follows them.
* Also tolerated: ``\\r\\n`` / ``\\r`` line ends, trailing spaces, lines that are only
  ``---``/``***`` rules or code fences (read as blank lines), a preamble without fields.

Type representation: a flat ``list[str]`` of the identifiers in first-seen order without repeats
(``["1", "3"]``); "no type" is ``NO_TYPE`` = ``["None"]``. The released parser produced the bare
string ``"None"`` and the published data show ``["0"]`` for one no-hallucination row (reference
§4.4 item 6, not yet verified over the whole release); we keep the judge's own word in a list so
the Arrow schema stays ``list<string>`` and nothing is invented. A publisher that wants the
release's spelling maps ``["None"]`` to ``["0"]`` in one place. A lone ``0`` from the judge is
read as "no type" too; any other identifier outside 1..3 fails with ``type_out_of_range``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

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
    "unnumbered_block",
    "number_mismatch",
    "duplicate_field",
    "missing_rating",
    "ambiguous_rating",
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

_TEXT_NUMBER = r"(?:text|response|completion|answer)\s*#?\s*(\d+)"
_HEADER = re.compile(
    r"^\s*#{0,6}\s*(?:\*\*|__)?\s*(?:output\s+for\s+)?(?:the\s+)?"
    + _TEXT_NUMBER
    + r"\s*(?:\*\*|__)?\s*:?\s*(?:\*\*|__)?\s*:?\s*$",
    re.IGNORECASE,
)
_LABEL = re.compile(
    r"^\s*(?:[-*+]\s+)?(?:\*\*|__|\*|_)?\s*(rating|rationale|type)"
    r"(?:\s+for\s+(?:the\s+)?(?:" + _TEXT_NUMBER + r"|rating|type|types|identification))?"
    r"\s*(?:\*\*|__|\*|_)?\s*:\s*(?:\*\*|__|\*|_)?\s*(.*)$",
    re.IGNORECASE,
)
_BOLD_EDGES = re.compile(r"^(?:\*\*|__)|(?:\*\*|__)$")
_RULE = re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,}|```\w*)\s*$")
_INT = re.compile(r"(?<![\d.])(\d+)(\.\d+)?")
_DIGIT = re.compile(r"\d")
_WRAP = r"[\s\[\]()\"'*_]*"
_RATING_VALUE = re.compile(
    r"^" + _WRAP + r"(\d+)(\.\d+)?" + _WRAP + r"(?:(?:/|out\s+of)\s*(\d+)" + _WRAP + r")?(.*)$",
    re.IGNORECASE | re.DOTALL,
)
_NA = re.compile(r"^" + _WRAP + r"(?:n/?a\b|not\s+applicable)(.*)$", re.IGNORECASE | re.DOTALL)
_NONE = re.compile(r"^[\s\[\]\"'*_(]*none\b", re.IGNORECASE)


@dataclass(frozen=True)
class _Field:
    label: str
    """"rating", "rationale" or "type"."""
    value: str
    text: int | None
    """The text the label names (``Rating for text 2:``), if it names one."""


def _normalise(raw: str) -> list[str]:
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    return ["" if _RULE.match(line) else line.rstrip() for line in text.split("\n")]


def _chunks(lines: list[str]) -> list[list[str]]:
    """Blank-line-separated chunks of non-blank lines."""
    chunks: list[list[str]] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line)
        elif current:
            chunks.append(current)
            current = []
    return chunks


def _named_text(fields: list[_Field], where: str) -> int | None:
    """The one text the fields' labels name, if any; two different ones fail."""
    named = sorted({f.text for f in fields if f.text is not None})
    if len(named) > 1:
        raise _Fail("number_mismatch", f"{where}: field labels name texts {named}")
    return named[0] if named else None


def _numbered_blocks(lines: list[str]) -> list[tuple[int, list[_Field]]]:
    """(text number, fields) of every block, in order of appearance; every block is numbered."""
    headers = [(index, int(m.group(1))) for index, line in enumerate(lines) if (m := _HEADER.match(line))]
    if not headers:
        blocks = []
        for chunk in _chunks(lines):
            fields = _fields(chunk)
            number = _named_text(fields, "a block")
            if number is None:
                first = chunk[0].strip()[:60]
                raise _Fail("unnumbered_block", f"a block names no text (no 'Text i' header): {first!r}")
            blocks.append((number, fields))
        return blocks
    if _fields(lines[: headers[0][0]]):
        raise _Fail("unnumbered_block", "fields before the first 'Text i' header belong to no text")
    bounds = [index for index, _ in headers[1:]] + [len(lines)]
    blocks = []
    for (start, number), end in zip(headers, bounds, strict=True):
        fields = _fields(lines[start + 1 : end])
        named = _named_text(fields, f"text {number}")
        if named is not None and named != number:
            raise _Fail("number_mismatch", f"the block headed text {number} has a label for text {named}")
        blocks.append((number, fields))
    return blocks


def _split_blocks(lines: list[str], n: int) -> list[list[_Field]]:
    """The n blocks' fields in slot order: block i is the one the judge numbered i."""
    blocks = _numbered_blocks(lines)
    numbers = [number for number, _ in blocks]
    if sorted(numbers) != list(range(1, n + 1)):
        repeated = sorted({x for x in numbers if numbers.count(x) > 1})
        missing = [x for x in range(1, n + 1) if x not in numbers]
        extra = sorted({x for x in numbers if not 1 <= x <= n})
        problems = [
            f"{label} {values}"
            for label, values in (("repeated", repeated), ("missing", missing), ("not in 1..n", extra))
            if values
        ]
        raise _Fail("block_count", f"expected texts 1..{n} once each, found {numbers}: {'; '.join(problems)}")
    by_number = dict(blocks)
    return [by_number[i] for i in range(1, n + 1)]


def _fields(block: list[str]) -> list[_Field]:
    """The block's fields in order; a value runs to the next label or the first blank line."""
    out: list[tuple[str, int | None, list[str]]] = []
    closed = True
    for line in block:
        match = _LABEL.match(line)
        if match:
            first = match.group(3).strip()
            number = int(match.group(2)) if match.group(2) else None
            out.append((match.group(1).lower(), number, [first] if first else []))
            closed = False
        elif not line.strip():
            if out and out[-1][2]:
                closed = True
        elif out and not closed:
            out[-1][2].append(line.strip())
    return [
        _Field(label, _BOLD_EDGES.sub("", "\n".join(value).strip()).strip(), number) for label, number, value in out
    ]


def _following_rationale(fields: list[_Field], start: int) -> str | None:
    for f in fields[start + 1 :]:
        if f.label == "rationale":
            return f.value or None
        if f.label in ("rating", "type"):
            return None
    return None


def _no_other_number(rest: str, value: str, slot: int) -> None:
    if _DIGIT.search(rest):
        raise _Fail("ambiguous_rating", f"text {slot}: the rating {value[:60]!r} holds more than one number")


def _rating(aspect: str, value: str, slot: int) -> str:
    """The rating a rating field's value starts with; any other number in the value fails."""
    na = _NA.match(value)
    if na:
        _no_other_number(na.group(1), value, slot)
        if aspect != "honesty":
            raise _Fail("na_not_allowed", f"text {slot}: N/A is allowed for honesty only ({aspect})")
        return NA
    match = _RATING_VALUE.match(value)
    if not match:
        if _DIGIT.search(value):
            raise _Fail("ambiguous_rating", f"text {slot}: the rating {value[:60]!r} does not start with it")
        raise _Fail("missing_rating", f"text {slot}: no number in rating {value[:60]!r}")
    whole, fraction, scale, rest = match.groups()
    _no_other_number(rest, value, slot)
    if fraction and int(fraction[1:]) != 0:
        raise _Fail("rating_out_of_range", f"text {slot}: rating {whole}{fraction} is not an integer 1-5")
    if scale is not None and int(scale) != 5:
        raise _Fail("rating_out_of_range", f"text {slot}: rating {whole}/{scale} is not on the 1-5 scale")
    if str(int(whole)) not in RATINGS:
        raise _Fail("rating_out_of_range", f"text {slot}: rating {int(whole)} is outside 1-5")
    return str(int(whole))


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


def _only(fields: list[_Field], label: str, slot: int) -> int | None:
    """The index of the block's one ``label`` field (None if absent); two of them fail."""
    at = [index for index, f in enumerate(fields) if f.label == label]
    if len(at) > 1:
        raise _Fail("duplicate_field", f"text {slot}: {len(at)} '{label.capitalize()}:' fields in one block")
    return at[0] if at else None


def _parse_block(aspect: str, fields: list[_Field], slot: int) -> ParsedRating:
    at_rating = _only(fields, "rating", slot)
    at_type = _only(fields, "type", slot) if aspect in TYPED_ASPECTS else None
    if at_rating is None:
        raise _Fail("missing_rating", f"text {slot}: no 'Rating:' line")
    rating = _rating(aspect, fields[at_rating].value, slot)
    if aspect not in TYPED_ASPECTS:
        rationale = _following_rationale(fields, at_rating)
        if rationale is None:  # tolerate "Rationale:" before "Rating:" when it is the only one
            rationales = [f.value for f in fields if f.label == "rationale" and f.value]
            rationale = rationales[0] if len(rationales) == 1 else None
        if rationale is None:
            raise _Fail("missing_rationale", f"text {slot}: no rationale for the rating")
        return ParsedRating(rating=rating, rationale=rationale)
    if at_type is None:
        raise _Fail("missing_type", f"text {slot}: no 'Type:' line")
    types = _type_list(fields[at_type].value, slot)
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
        items = [_parse_block(aspect, fields, slot) for slot, fields in enumerate(blocks, start=1)]
    except _Fail as fail:
        return AspectParse(ok=False, reason=fail.reason, detail=fail.detail)
    except Exception as exc:  # a parser bug must not kill a shard: record it as data
        return AspectParse(ok=False, reason="parser_error", detail=f"{type(exc).__name__}: {exc}")
    return AspectParse(ok=True, items=items)


@cache
def parser_version() -> str:
    """This parser's version: a digest of this module's source, so any change to it (a fix, a new
    tolerated form) makes ratings stored by an earlier version be parsed again from the raw text."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def items_json(items: list[ParsedRating]) -> str:
    """A successful parse's items as stored next to the judge's raw text (``AspectAnnotation.parsed``)."""
    return json.dumps([[i.rating, i.rationale, i.type, i.type_rationale] for i in items])


def stored_or_parsed(aspect: str, raw: str, n: int, parsed: str | None, version: str | None) -> AspectParse:
    """The parse of an answer stored with its ratings: the stored items when this parser stored
    them (and they are ``n``), else ``parse_aspect`` of the raw text. Either way the same result:
    the stored items are what this parser returned for this raw text."""
    if parsed is not None and version == parser_version():
        items = [ParsedRating(rating, rationale, kind, why) for rating, rationale, kind, why in json.loads(parsed)]
        if len(items) == n:
            return AspectParse(ok=True, items=items)
    return parse_aspect(aspect, raw, n)


# --------------------------------------------------------------------------- critique

_SCORE_LINE = re.compile(r"^[\s#>*_(-]*overall\s+score\s*(?:\*\*|__)?\s*:(.*)$", re.IGNORECASE)
_SCORE_VALUE = re.compile(
    r"^" + _WRAP + r"(\d+(?:\.\d+)?)" + _WRAP + r"(?:(?:/|out\s+of)\s*(\d+(?:\.\d+)?)" + _WRAP + r")?(.*)$",
    re.IGNORECASE,
)
_FEEDBACK_HEADING = re.compile(r"^\s*#{0,6}\s*(?:\*\*)?feedback(?:\*\*)?\s*:?\s*(?:\*\*)?\s*\n", re.IGNORECASE)


def _score(value: str) -> float:
    """The score a score field's value starts with (``7``, ``7.5``, ``8/10``, ``[9]``)."""
    match = _SCORE_VALUE.match(value)
    if not match:
        if _DIGIT.search(value):
            raise _Fail("ambiguous_score", f"the score {value[:40]!r} does not start with it")
        raise _Fail("missing_score", f"no number after 'Overall Score:' ({value[:30]!r})")
    number, scale, rest = match.groups()
    if _DIGIT.search(rest):
        raise _Fail("ambiguous_score", f"the score {value[:40]!r} holds more than one number")
    if scale is not None and float(scale) != 10.0:
        raise _Fail("bad_scale", f"score {number}/{scale} is not out of 10")
    return float(number)


def parse_critique(raw: str) -> CritiqueParse:
    """Parse a critique answer into its feedback text and overall score (1..10, fractions allowed).

    The score is read from the score field only: a line that starts with ``Overall Score:``
    (reference §4.5; bold, ``#`` or a bullet before the label are allowed, the value may be on the
    next line) whose value starts with the score: ``7``, ``7.5``, ``8/10``, ``8 out of 10``,
    ``[9]``, ``**6**``. A plain "1" is 1, never 10 (the §4.6 bug). A denominator other than 10
    fails (``bad_scale``) rather than being guessed at; any other number in the value
    (``[1-10]`` echoed from the template, ``1 to 10: 7``) makes it ``ambiguous_score``, and so do
    two score lines with different scores. "overall score: 7" inside a sentence is prose, not the
    field. The critique is the text before the first score line, stripped, without a repeated
    leading "### Feedback".
    """
    if not isinstance(raw, str) or not raw.strip():
        return CritiqueParse(ok=False, reason="empty_output", detail="the judge returned no text")
    lines = raw.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    first: int | None = None
    scores: set[float] = set()
    try:
        for index, line in enumerate(lines):
            match = _SCORE_LINE.match(line)
            if not match:
                continue
            value = match.group(1).strip()
            if not value:
                value = next((later.strip() for later in lines[index + 1 :] if later.strip()), "")
            scores.add(_score(value))
            first = index if first is None else first
    except _Fail as fail:
        return CritiqueParse(ok=False, reason=fail.reason, detail=fail.detail)
    if first is None:
        return CritiqueParse(ok=False, reason="missing_score", detail="no line starting with 'Overall Score:'")
    if len(scores) > 1:
        return CritiqueParse(ok=False, reason="ambiguous_score", detail=f"several overall scores: {sorted(scores)}")
    score = scores.pop()
    if not 1.0 <= score <= 10.0:
        return CritiqueParse(ok=False, reason="score_out_of_range", detail=f"overall score {score:g} is outside 1-10")
    critique = _FEEDBACK_HEADING.sub("", "\n".join(lines[:first]).strip() + "\n", count=1).strip()
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
