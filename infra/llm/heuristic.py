"""The embedded default judge: a deterministic HEURISTIC, not a model.

No model that installs offline can judge (SmolLM2 rates everything 5), yet the demo must produce
ratings so that every later stage (aggregation, pairs, gates, publish) runs end to end. This module
writes judge text in exactly the original GPT-4 output format (reference §4.3), so it goes through
the same parser as a real judge, and labels itself honestly: every rationale and every critique
starts with ``Heuristic (not a model judgement):`` and rows it rates carry judge kind "heuristic"
and the id :data:`HEURISTIC_JUDGE_ID`. Its ratings are a rough proxy for quality, useful for
plumbing and for ranking obviously broken answers below reasonable ones; they are not evidence
about factual correctness beyond the world knowledge it is given.

Signals, all computed from the texts alone (no randomness, no model):

* **empty / too short**: no alphanumeric content, or fewer words than the request needs
  (1 for a plain question, about 30 for "explain"/"describe", 80 for an essay or story).
* **refusal**: "I'm sorry, but", "I cannot", "as an AI", "I'm unable to", ... near the start of a
  short answer.
* **hedging / uncertainty**: weakeners ("I think", "probably", "perhaps", "maybe", "I'm not sure",
  "I don't know", ...) and a verbalised confidence ("Confidence: 80%").
* **repetition**: the share of repeated word trigrams and sentences repeated verbatim; a high share
  marks degenerate looping output.
* **relevance**: the share of the instruction's content words (stop words removed, crude
  five-letter stemming) that the answer uses.
* **length adequacy**: words against the band the request implies ("in one sentence", "in 50
  words", "briefly" cap the length; "explain", "essay", "in detail" set a floor).
* **format requests honoured**: a list or bullets, numbered steps, a count of items ("list three"),
  one sentence, a word limit, JSON, yes/no, a table, code.
* **truncation**: a long answer whose last character is mid-sentence, or an unclosed code fence.
* **contradiction with world knowledge**: TruthfulQA-style knowledge (lists of correct and incorrect
  answers) flags an answer that matches an incorrect answer better than any correct one; FalseQA's
  "based on a false premise" flags an answer that does not question the premise; a short reference
  answer (FLAN) is looked for in the answer.
* **unverifiable specifics**: many numbers and names that are not in the instruction, when no
  knowledge can check them.
* **creative writing** (write a poem, story, song, lyrics, ...): honesty is "N/A", as the rubric says.

The critique's overall score starts from the mean aspect rating (with no world knowledge, as the
original critique call has none) and then weighs signals the aspects do not: compliance with the
principle note (a confidence percentage when verbalised calibration is asked for, hedging when
honesty is), explanation and structure, truncation and over-length, so it correlates with the
fine-grained score without being a function of it.

Change :data:`HEURISTIC_JUDGE_ID` whenever these rules change: it is part of the annotation key.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field

from ultrafeedback.infra.llm.judge_format import ASPECT_HEADERS, aspect_block, aspect_reply, critique_reply

HEURISTIC_JUDGE_ID = "heuristic-v1"
"""The judge model id recorded in every row this module rates; bump it when a rule changes."""

RATIONALE_PREFIX = "Heuristic (not a model judgement):"
"""The first words of every rationale and critique this module writes."""


_STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not now of off on once only or other our ours ourselves out over
    own same she should so some such than that the their theirs them themselves then there these
    they this those through to too under until up very was we were what when where which while who
    whom why will with would you your yours yourself yourselves also may might must shall one two
    three use using used give write tell explain describe make please want need like get following
    answer question text provide create list generate based something way ways thing things""".split()
)

_NUMBER_WORDS = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}  # fmt: skip

_CREATIVE = re.compile(
    r"\b(write|compose|create|generate|draft|craft|pen|make up|invent|tell)\b[^.?!\n]{0,60}?"
    r"\b(poems?|poetry|stor(?:y|ies)|songs?|lyrics|haikus?|limericks?|sonnets?|raps?|verses?|fables?"
    r"|fairy tales?|tales?|screenplays?|scripts?|fiction|narratives?|jokes?|ballads?|odes?)\b",
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"\b(i'?m sorry,? but|i am sorry,? but|i apologi[sz]e,? but|i cannot|i can'?t|i can not|"
    r"i'?m (?:not able|unable) to|i am (?:not able|unable) to|as an ai\b|as a language model|"
    r"i (?:do not|don'?t) have (?:the ability|access|personal|real-time)|i won'?t be able)",
    re.IGNORECASE,
)
_HEDGES = re.compile(
    r"\b(i think|i believe|i guess|i suppose|probably|perhaps|maybe|possibly|might|it seems|"
    r"it appears|likely|not (?:entirely |completely |100% )?(?:sure|certain)|i'?m not sure|"
    r"i am not sure|uncertain|i (?:do not|don'?t) know|to my knowledge|as far as i know)\b",
    re.IGNORECASE,
)
_DONT_KNOW = re.compile(r"\b(i (?:do not|don'?t) know|i'?m not sure|i am not sure|i have no idea)\b", re.I)
_CONFIDENCE = re.compile(r"\bconfidence\b\W{0,3}(?:level\W{0,3})?(?:is\s+)?(\d{1,3})\s*%", re.IGNORECASE)
_PREMISE_FLAG = re.compile(
    r"\b(false premise|premise|not possible|impossible|isn'?t possible|cannot|can'?t|can not|"
    r"doesn'?t|does not|don'?t|do not|isn'?t|is not|aren'?t|are not|wasn'?t|was not|never|no,|"
    r"not true|untrue|myth|misconception|actually|in fact|incorrect|mistaken|there is no|there are no|"
    r"no such|not accurate|not correct|nonsensical|doesn'?t make sense)\b",
    re.IGNORECASE,
)
_EXPLANATION = re.compile(
    r"\b(because|since|therefore|thus|for example|for instance|e\.g\.|such as|this means|as a result|"
    r"which means|in other words|first(?:ly)?|second(?:ly)?|finally)\b",
    re.IGNORECASE,
)
_LIST_LINE = re.compile(r"^\s*(?:[-*•+]|\d+[.)]|[a-z][.)]|step \d+)\s+\S", re.IGNORECASE | re.MULTILINE)
_NUMBERED_LINE = re.compile(r"^\s*(?:\d+[.)]|step \d+:?)\s+\S", re.IGNORECASE | re.MULTILINE)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _stem(word: str) -> str:
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]  # plural
    return word[:5]


def _content_stems(text: str) -> set[str]:
    return {_stem(w) for w in _words(text) if len(w) > 2 and w not in _STOP_WORDS and not w.isdigit()}


def _one_line(text: str) -> str:
    """Collapse all whitespace: a rationale must stay on one line whatever the texts contain."""
    return " ".join(text.split())


def _quote(text: str, limit: int = 60) -> str:
    text = _one_line(text)
    return f'"{text[: limit - 3]}..."' if len(text) > limit else f'"{text}"'


def _normalise(text: str) -> str:
    return " ".join(_words(text))


# --- what the instruction asks for ---------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    stems: frozenset[str]
    creative: bool
    min_words: int
    max_words: int | None
    wants_list: bool
    wants_numbered: bool
    item_count: int | None
    one_sentence: bool
    wants_json: bool
    yes_no: bool
    wants_table: bool
    wants_code: bool


def _read_request(instruction: str) -> _Request:
    low = instruction.lower()
    max_words: int | None = None
    limit = re.search(
        r"\b(?:in|within|under|at most|no more than|less than|fewer than|maximum of|max)\s+(\d+)\s+words\b",
        low,
    )
    if limit:
        max_words = max(1, round(int(limit.group(1)) * 1.25))
    elif re.search(r"\b(one|a single|1)[- ]word\b", low):
        max_words = 3
    elif re.search(r"\b(in|with|using|as) (one|a single|1) sentence\b|\bone-sentence\b", low):
        max_words = 45
    elif re.search(r"\b(briefly|brief|short|concise|concisely|tl;?dr|in a few words)\b", low):
        max_words = 120
    if re.search(r"\b(essay|article|blog post|report|short story|story|stories)\b", low) and max_words is None:
        min_words = 80
    elif re.search(
        r"\b(explain|describe|elaborate|discuss|compare|analy[sz]e|in detail|detailed|step[- ]by[- ]step|"
        r"guide|how to|how do|how does|how can|why)\b",
        low,
    ):
        min_words = 30 if max_words is None else min(10, max_words)
    else:
        min_words = 1 if "?" in instruction else 3
    if max_words is not None:
        min_words = min(min_words, max_words)
    count = re.search(
        r"\b(?:list|give|name|provide|suggest|write|generate|enumerate|share|offer)\s+"
        r"(?:me\s+|us\s+)?(?:at least\s+)?"
        r"(\d+|two|three|four|five|six|seven|eight|nine|ten)\b",
        low,
    )
    item_count = None
    if count:
        raw = count.group(1)
        item_count = int(raw) if raw.isdigit() else _NUMBER_WORDS[raw]
        item_count = item_count if 2 <= item_count <= 50 else None
    return _Request(
        stems=frozenset(_content_stems(instruction)),
        creative=bool(_CREATIVE.search(instruction)),
        min_words=min_words,
        max_words=max_words,
        wants_list=bool(re.search(r"\b(list|bullet(?:s| points?)?|enumerate|itemi[sz]e)\b", low))
        or item_count is not None,
        wants_numbered=bool(re.search(r"\b(numbered|step[- ]by[- ]step|steps)\b", low)),
        item_count=item_count,
        one_sentence=bool(re.search(r"\b(in|with|using|as) (one|a single|1) sentence\b|\bone-sentence\b", low)),
        wants_json=bool(re.search(r"\bjson\b", low)),
        yes_no=bool(re.search(r"\byes or no\b|\byes/no\b", low)),
        wants_table=bool(re.search(r"\b(table|tabular)\b", low)) and "timetable" not in low,
        wants_code=bool(
            re.search(r"\b(code|function|script|program|implement|snippet|class|regex|sql query)\b", low)
            and re.search(
                r"\b(python|java|javascript|typescript|c\+\+|c#|rust|go|sql|bash|ruby|php|code|"
                r"function|program|script|regex)\b",
                low,
            )
        ),
    )


# --- what the world knowledge says --------------------------------------------------------------


@dataclass(frozen=True)
class _Knowledge:
    correct: tuple[str, ...] = ()
    incorrect: tuple[str, ...] = ()
    false_premise: bool = False


def _parse_list(raw: str) -> list[str]:
    raw = raw.strip()
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = [part for part in re.split(r";|\n", raw.strip("[]")) if part.strip()]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return []
    return [str(v).strip() for v in value if str(v).strip() and str(v).strip().lower() != "none"]


def _read_knowledge(world_knowledge: str | None) -> _Knowledge:
    """TruthfulQA answer lists, FalseQA's false-premise sentence, or a short FLAN reference answer."""
    if not world_knowledge or not world_knowledge.strip():
        return _Knowledge()
    text = world_knowledge.strip()
    low = text.lower()
    if "no additional world knowledge" in low:
        return _Knowledge()
    if "false promise" in low or "false premise" in low:
        return _Knowledge(false_premise=True)
    correct: list[str] = []
    incorrect: list[str] = []
    structured = False
    for line in text.splitlines():
        match = re.match(r"\s*a subset of (in)?correct[ _]answers\s*:\s*(.*)$", line, re.IGNORECASE)
        if match:
            structured = True
            (incorrect if match.group(1) else correct).extend(_parse_list(match.group(2)))
    if structured:
        return _Knowledge(tuple(correct), tuple(incorrect))
    if len(_words(text)) <= 30:  # a short reference answer (FLAN targets)
        return _Knowledge(correct=(text,))
    return _Knowledge()


def _coverage(item: str, answer_norm: str, answer_stems: set[str]) -> float:
    """How much of a reference item the answer states: 1.0 for a verbatim match, else stem overlap."""
    item_norm = _normalise(item)
    if not item_norm:
        return 0.0
    if re.search(rf"(?<![a-z0-9]){re.escape(item_norm)}(?![a-z0-9])", answer_norm):
        return 1.0
    stems = _content_stems(item)
    if len(stems) < 2:
        return 0.0
    return len(stems & answer_stems) / len(stems)


# --- the signals of one answer ------------------------------------------------------------------


@dataclass
class _Signals:
    n_words: int
    empty: bool
    too_short: bool
    too_long: bool
    refusal: bool
    hedged: bool
    dont_know: bool
    confidence: int | None
    repetition: float
    degenerate: bool
    repetitive: bool
    relevance: float | None
    off_topic: bool
    weak_relevance: bool
    format_failures: list[str] = field(default_factory=list)
    truncated: bool = False
    contradicts: str | None = None  # why it contradicts the knowledge
    supported: bool = False
    premise_flagged: bool = False
    unverified_specifics: int = 0
    explains: bool = False
    structured: bool = False

    @property
    def declines(self) -> bool:
        """A refusal or a bare "I don't know" (but not a correction of a false premise)."""
        return (self.refusal or (self.dont_know and self.n_words < 25)) and not self.premise_flagged

    @property
    def confident(self) -> bool:
        return not self.hedged and not self.dont_know and (self.confidence is None or self.confidence > 60)


def _repetition(words: list[str], text: str) -> tuple[float, int]:
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    share = (len(trigrams) - len(set(trigrams))) / len(trigrams) if len(trigrams) >= 8 else 0.0
    sentences = [_normalise(s) for s in re.split(r"(?<=[.!?])\s+|\n+", text) if len(_words(s)) >= 4]
    most = max((sentences.count(s) for s in set(sentences)), default=0)
    return share, most


def _truncated(text: str, n_words: int, creative: bool) -> bool:
    stripped = text.rstrip()
    if stripped.count("```") % 2 == 1:
        return True
    if n_words < 8 or not stripped or creative:  # verse often ends without punctuation
        return False
    last_line = stripped.splitlines()[-1]
    if _LIST_LINE.match(last_line) and len(_words(last_line)) <= 12:
        return False  # a list may end on an unpunctuated short item
    if last_line.lstrip().startswith(("#", "|", "```")):
        return False
    return stripped[-1].isalnum() or stripped[-1] in ",;:-(–"


def _json_ok(text: str) -> bool:
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL | re.IGNORECASE)
    candidates = [fenced.group(1)] if fenced else []
    for opener, closer in (("{", "}"), ("[", "]")):
        start, end = text.find(opener), text.rfind(closer)
        if 0 <= start < end:
            candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            json.loads(candidate)
            return True
        except ValueError:
            continue
    return False


def _items(text: str) -> int:
    lines = len(_LIST_LINE.findall(text))
    if lines >= 2:
        return lines
    first = text.strip().splitlines()[0] if text.strip() else ""
    return len([p for p in re.split(r",|;|\band\b", first.split(":")[-1]) if p.strip()])


def _format_failures(request: _Request, text: str, words: list[str]) -> list[str]:
    failures = []
    if request.wants_list and not (_LIST_LINE.findall(text) or text.count(",") >= 2 or _items(text) >= 2):
        failures.append("it was asked for a list but gives none")
    if request.wants_numbered and len(_NUMBERED_LINE.findall(text)) < 2:
        failures.append("it was asked for numbered steps but does not number them")
    if request.item_count is not None and _items(text) != request.item_count:
        failures.append(f"it was asked for {request.item_count} items but gives {_items(text)}")
    if request.one_sentence and len([s for s in _SENTENCE_SPLIT.split(text.strip()) if _words(s)]) > 1:
        failures.append("it was asked for one sentence but writes several")
    if request.wants_json and not _json_ok(text):
        failures.append("it was asked for JSON but contains no valid JSON")
    if request.yes_no and (not words or words[0] not in {"yes", "no"}):
        failures.append("it was asked for yes or no but does not start with either")
    if request.wants_table and not re.search(r"^\s*\|.*\|", text, re.MULTILINE):
        failures.append("it was asked for a table but gives none")
    if request.wants_code and not (
        "```" in text or re.search(r"^\s*(def |class |import |function |for |if |return |SELECT |#include)", text, re.M)
    ):
        failures.append("it was asked for code but contains none")
    return failures


def _analyse(request: _Request, knowledge: _Knowledge, instruction: str, text: str) -> _Signals:
    text = text.replace("\u2019", "'")  # curly apostrophes: "can’t" must match like "can't"
    words = _words(text)
    n_words = len(words)
    empty = not any(ch.isalnum() for ch in text)
    share, most_repeated = _repetition(words, text)
    answer_stems = _content_stems(text)
    relevance = None
    if len(request.stems) >= 2 and n_words >= 8:  # a short direct answer need not echo the question
        relevance = min(1.0, len(request.stems & answer_stems) / min(len(request.stems), 10))
    head = text.strip()[:200]
    refusal = bool(_REFUSAL.search(head)) and (n_words < 60 or (relevance is not None and relevance < 0.25))
    confidence_match = _CONFIDENCE.search(text)
    signals = _Signals(
        n_words=n_words,
        empty=empty,
        too_short=not empty and n_words < request.min_words,
        too_long=request.max_words is not None and n_words > 2 * request.max_words,
        refusal=refusal,
        hedged=bool(_HEDGES.search(text)),
        dont_know=bool(_DONT_KNOW.search(text)),
        confidence=min(100, int(confidence_match.group(1))) if confidence_match else None,
        repetition=share,
        degenerate=share >= 0.45 or most_repeated >= 3,
        repetitive=share >= 0.2 or most_repeated >= 2,
        relevance=relevance,
        off_topic=relevance is not None and relevance < 0.1 and len(request.stems) >= 3,
        weak_relevance=relevance is not None and relevance < 0.3,
    )
    if empty:
        return signals
    signals.format_failures = _format_failures(request, text, words)
    signals.truncated = _truncated(text, n_words, request.creative)
    signals.explains = bool(_EXPLANATION.search(text))
    signals.structured = len(_LIST_LINE.findall(text)) >= 2 or "\n\n" in text.strip()

    answer_norm = _normalise(text)
    if knowledge.false_premise:
        # "I don't know" neither flags the premise nor plays along with it
        signals.premise_flagged = bool(_PREMISE_FLAG.search(_DONT_KNOW.sub("", text[:400]))) or refusal
        if not signals.premise_flagged and not signals.dont_know:
            signals.contradicts = "it answers as if the premise were true, but the question rests on a false premise"
    elif knowledge.correct or knowledge.incorrect:
        best_correct = max((_coverage(c, answer_norm, answer_stems) for c in knowledge.correct), default=0.0)
        scored = [(_coverage(c, answer_norm, answer_stems), c) for c in knowledge.incorrect]
        best_wrong, wrong_item = max(scored, default=(0.0, ""))
        if len(knowledge.correct) == 1 and not knowledge.incorrect:  # a short reference answer
            ref = _normalise(knowledge.correct[0])
            if ref in {"yes", "no"} and words and words[0] in {"yes", "no"} and words[0] != ref:
                signals.contradicts = f'it answers "{words[0]}" where the reference answer is "{ref}"'
            signals.supported = best_correct >= 0.6 and signals.contradicts is None
        else:
            if best_wrong >= 0.75 and best_wrong > best_correct:
                signals.contradicts = f"it states a known incorrect answer ({_quote(wrong_item)})"
            signals.supported = best_correct >= 0.6 and best_correct >= best_wrong
    else:
        instruction_words = set(_words(instruction))
        specifics = {
            tok
            for tok in re.findall(r"(?<=[a-z,;] )[A-Z][a-z]{2,}\b|\b\d{2,}(?:[.,]\d+)?\b", text)
            if tok.lower() not in instruction_words
        }
        if len(specifics) >= 4 and len(specifics) / max(n_words, 1) > 0.06:
            signals.unverified_specifics = len(specifics)
    return signals


# --- aspect rules -------------------------------------------------------------------------------


def _clamp(value: float, low: int = 1, high: int = 5) -> int:
    return int(max(low, min(high, round(value))))


def _sentence(reasons: list[str]) -> str:
    body = "; ".join(reasons)
    return _one_line(f"{RATIONALE_PREFIX} {body[0].upper()}{body[1:]}.")


def _instruction_following(request: _Request, s: _Signals) -> tuple[int, list[str]]:
    if s.empty:
        return 1, ["the answer is empty, so no part of the instruction is addressed"]
    if s.off_topic:
        return 1, [f"the answer uses almost none of the instruction's key terms ({s.relevance:.0%})"]
    if s.declines:
        return 2, ["the answer declines the task or says it does not know instead of doing it"]
    reasons: list[str] = []
    rating = 5.0
    if s.degenerate:
        rating -= 3
        reasons.append("the answer loops, repeating the same words")
    elif s.repetitive:
        rating -= 1
        reasons.append(f"the answer repeats itself ({s.repetition:.0%} repeated word trigrams)")
    if s.format_failures:
        rating -= min(2, len(s.format_failures))
        reasons.extend(s.format_failures)
    if s.too_short:
        rating -= 1
        reasons.append(f"at {s.n_words} words the answer is shorter than the request needs ({request.min_words}+)")
    if s.too_long:
        rating -= 1
        reasons.append(f"at {s.n_words} words the answer ignores the requested length")
    if s.truncated:
        rating -= 1
        reasons.append("the answer stops mid-sentence")
    if s.weak_relevance:
        rating -= 1
        reasons.append(f"the answer covers few of the instruction's key terms ({s.relevance:.0%})")
    if not reasons:
        reasons.append("the answer addresses the instruction's key terms and honours its format and length requests")
    return _clamp(rating, 2 if not s.degenerate else 1), reasons


def _honesty(request: _Request, s: _Signals) -> tuple[int | str, list[str]]:
    if request.creative:
        return "N/A", ["creative writing, where honesty and uncertainty do not apply"]
    if s.empty:
        return 1, ["the answer is empty, so it expresses neither knowledge nor uncertainty"]
    if s.premise_flagged:
        return 5, ["the answer questions the false premise instead of playing along"]
    if s.contradicts:
        if s.confident:
            return 1, [f"{s.contradicts}, without any expression of uncertainty"]
        return (3 if s.supported else 2), [f"{s.contradicts}, though it hedges"]
    if s.dont_know or (s.refusal and s.n_words < 40):
        return 3, ["the answer declines or says it does not know"]
    if s.degenerate or s.off_topic:
        if s.confident:
            return 2, ["the answer is confident but does not actually answer (it loops or drifts off topic)"]
        return 3, ["the answer hedges but does not actually answer"]
    if s.confidence is not None:
        if s.supported or not (s.truncated or s.weak_relevance or s.format_failures):
            return 5, [f"the answer states a confidence of {s.confidence}% and shows no sign of error"]
        return 3, [f"the answer states a confidence of {s.confidence}% but has visible problems"]
    if s.supported:
        if s.confident:
            return 5, ["the answer agrees with the reference answers and states it confidently"]
        return 4, ["the answer agrees with the reference answers but hedges"]
    if s.hedged:
        return 4, ["the answer expresses uncertainty with weakeners and shows no detected error"]
    if s.weak_relevance or s.repetitive:
        return 3, ["the answer is confident but only loosely addresses the question"]
    return 5, ["the answer is confident and shows no detected error or contradiction"]


def _truthfulness(request: _Request, s: _Signals) -> tuple[list[str], str, int, str]:
    if s.empty:
        return (
            [],
            "nothing is stated, so no hallucination can be identified",
            1,
            "an empty answer conveys no truthful content",
        )
    types: set[str] = set()
    type_reasons: list[str] = []
    rating = 5
    rating_reasons: list[str] = []
    if s.premise_flagged:
        return (
            [],
            "the answer rejects the false premise",
            5,
            "no hallucination detected; the false premise is flagged",
        )
    if s.contradicts:
        types.add("1")
        type_reasons.append(s.contradicts)
        rating = min(rating, 2 if (s.supported or not s.confident) else 1)
        rating_reasons.append("the main claim contradicts the provided world knowledge")
    if s.off_topic:
        types.add("2")
        type_reasons.append("the answer is not aligned with the instruction")
        rating = min(rating, 2)
        rating_reasons.append("most of the content departs from what was asked")
    elif s.weak_relevance:
        types.add("2")
        type_reasons.append("the answer drifts from the instruction's content")
        rating = min(rating, 3)
        rating_reasons.append("part of the content is not grounded in the instruction")
    if s.degenerate:
        types.add("3")
        type_reasons.append("looping repetition is a logical breakdown")
        rating = min(rating, 2)
        rating_reasons.append("the text degenerates into repetition")
    elif s.repetitive:
        types.add("3")
        type_reasons.append("repeated statements suggest a logical slip")
        rating = min(rating, 4)
        rating_reasons.append("some statements are repeated")
    if not types:
        if s.declines:
            rating = 4
            rating_reasons.append("the answer declines, so it states nothing false but also nothing checkable")
        elif s.supported:
            rating_reasons.append("the answer agrees with the provided world knowledge")
        elif s.unverified_specifics:
            rating = 4
            rating_reasons.append(
                f"it makes {s.unverified_specifics} specific claims (names, numbers) that no given knowledge can verify"
            )
        else:
            rating_reasons.append("no contradiction with the instruction or the given knowledge was detected")
    type_reason = "; ".join(type_reasons) if type_reasons else "no contradiction, drift or repetition detected"
    return sorted(types), type_reason, rating, "; ".join(rating_reasons)


def _helpfulness(request: _Request, s: _Signals) -> tuple[list[str], str, int, str]:
    if s.empty:
        return [], "the answer is empty", 1, "an empty answer gives no help"
    informative = s.n_words >= max(15, request.min_words) or (s.supported and not s.contradicts)
    types = []
    if not (s.off_topic or s.declines):
        types.append("1")
    if informative and not s.degenerate:
        types.append("2")
    if not (s.repetitive or s.too_long):
        types.append("3")
    names = {"1": "clear and relevant", "2": "gives useful detail", "3": "concise without repetition"}
    type_reason = ", ".join(names[t] for t in types) if types else "neither relevant, informative nor concise"

    if s.contradicts:
        return types, type_reason, 1, f"severely incorrect: {s.contradicts}"
    if s.degenerate:
        return types, type_reason, (1 if s.weak_relevance else 2), "the repetition makes the answer unusable"
    if s.off_topic:
        return types, type_reason, 2, "the answer does not address the request"
    if s.declines:
        return types, type_reason, 2, "the answer declines or says it does not know"
    if s.premise_flagged:
        rating = 4 if s.n_words >= 10 else 3
        return (
            types,
            type_reason,
            rating,
            "the answer corrects the false premise" + (" and explains it" if rating == 4 else ""),
        )
    issues = list(s.format_failures)
    if s.truncated:
        issues.append("it stops mid-sentence")
    if s.too_short:
        issues.append("it is too short for the request")
    if s.too_long:
        issues.append("it is longer than asked")
    if s.repetitive:
        issues.append("it repeats itself")
    if s.weak_relevance:
        issues.append("it covers few of the instruction's key terms")
    rich = informative and (s.explains or s.structured) and s.n_words >= max(60, request.min_words * 2)
    rating = 3 + (1 if informative else 0) + (1 if rich else 0) - len(issues)
    if issues:
        reason = "; ".join(issues)
    elif rich:
        reason = "relevant, detailed and explained or structured"
    elif informative:
        reason = "relevant and reasonably detailed"
    else:
        reason = "relevant and meets the request, with little detail"
    return types, type_reason, _clamp(rating, 2), reason


# --- public API ---------------------------------------------------------------------------------


def rate(aspect: str, instruction: str, texts: list[str], world_knowledge: str | None = None) -> str:
    """Rate ``texts`` on one aspect and return judge text in the original output format (§4.3).

    One block per text, separated by one blank line, no preamble, no blank line inside a block, so
    the real judge's parser reads it unchanged. Deterministic: the same inputs give the same text,
    and each text's block depends only on that text, so shuffling the slots shuffles the ratings.
    ``world_knowledge`` (the original passes it for truthfulness only) is used for any aspect it
    is given with, since honesty and helpfulness also judge correctness.
    """
    if aspect not in ASPECT_HEADERS:
        raise ValueError(f"unknown aspect {aspect!r}; known: {', '.join(ASPECT_HEADERS)}")
    request = _read_request(instruction)
    knowledge = _read_knowledge(world_knowledge)
    blocks = []
    for i, text in enumerate(texts, start=1):
        s = _analyse(request, knowledge, instruction, text or "")
        if aspect == "instruction_following":
            rating, reasons = _instruction_following(request, s)
            blocks.append(aspect_block(aspect, i, rating, _sentence(reasons)))
        elif aspect == "honesty":
            honesty, reasons = _honesty(request, s)
            blocks.append(aspect_block(aspect, i, honesty, _sentence(reasons)))
        else:
            rule = _truthfulness if aspect == "truthfulness" else _helpfulness
            types, type_reason, rating, rating_reason = rule(request, s)
            joined = ", ".join(types) if types else "None"
            blocks.append(aspect_block(aspect, i, rating, _sentence([rating_reason]), joined, _sentence([type_reason])))
    return aspect_reply(blocks)


def _aspect_ratings(request: _Request, s: _Signals) -> list[int]:
    honesty = _honesty(request, s)[0]
    ratings = [
        _instruction_following(request, s)[0],
        _truthfulness(request, s)[2],
        _helpfulness(request, s)[2],
    ]
    return ratings + ([honesty] if isinstance(honesty, int) else [])


def critique(instruction: str, completion: str, note: str | None = None) -> str:
    """Teacher-style feedback and an overall score, as ``"<feedback>\\nOverall Score: X"`` (X in 1..10).

    The note is the principle's system prompt, as in the original critique call; like that call it
    sees no world knowledge. The feedback is one paragraph naming each weakness with a fix.
    """
    request = _read_request(instruction)
    s = _analyse(request, _Knowledge(), instruction, completion or "")
    ratings = _aspect_ratings(request, s)
    # 2 * mean - 1 maps the 1..5 rubric onto 1..9: a perfect heuristic pass leaves room above it,
    # because nothing here verified the facts
    score = 2.0 * sum(ratings) / len(ratings) - 1.0
    points: list[str] = []
    if s.empty:
        points.append("The answer is empty; write an answer that addresses the instruction")
        return _critique_text(points, 1.0)
    if s.off_topic:
        points.append("The answer does not address the instruction; answer what was asked")
    elif s.weak_relevance:
        points.append("The answer covers few of the instruction's key points; address them directly")
    if s.refusal:
        points.append("The answer declines the task; attempt it or explain precisely why it cannot be done")
    if s.degenerate:
        points.append("The text loops on the same phrases; remove the repetition and finish the thought")
        score -= 1.0
    elif s.repetitive:
        points.append("Some phrases repeat; say each point once")
    points.extend(f"{f[0].upper()}{f[1:]}; follow the requested format" for f in s.format_failures)
    if s.truncated:
        points.append("The answer stops mid-sentence; complete it")
        score -= 1.0
    if s.too_short:
        points.append("The answer is too short for the request; add the missing explanation")
    if s.too_long:
        points.append("The answer is much longer than requested; cut it to the requested length")
        score -= 0.5
    low_note = (note or "").lower()
    if "confidence" in low_note and ("%" in low_note or "percent" in low_note or "scalar" in low_note):
        if s.confidence is None:
            points.append("The principle asks for a confidence level as a percentage, which is missing; add one")
            score -= 1.0
        else:
            score += 0.5
    elif "uncertain" in low_note or "honest" in low_note:
        if s.hedged or s.dont_know:
            score += 0.5
        elif s.unverified_specifics:
            points.append("It states specific names and figures with full confidence; flag those it is unsure of")
            score -= 0.5
    if s.explains and not (s.degenerate or s.off_topic):
        score += 0.5
    elif s.n_words >= 30 and not s.structured:
        points.append("Support the claims with a reason or an example")
        score -= 0.5
    if not points:
        points.append(
            "No weakness was detected by these checks: the answer is on topic, complete and in the requested "
            "format. Its facts were not verified"
        )
    return _critique_text(points, score)


def _critique_text(points: list[str], score: float) -> str:
    score = max(1.0, min(10.0, round(score * 2) / 2))
    shown = f"{score:.1f}".removesuffix(".0")
    feedback = _one_line(f"{RATIONALE_PREFIX} " + ". ".join(points) + ".")
    return critique_reply(feedback, shown)
