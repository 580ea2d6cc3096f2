"""The ingest stage's logic: sources in, unique normalised instructions out, every drop with a reason.

Steps, per source in spec order, then across sources:

1. **read** every record (:func:`tasks.ingest.loaders.iter_source`);
2. **validate** and quarantine what cannot be used, one reason each: ``malformed_record`` (a line
   that is not a JSON object, a CSV row of the wrong width, bad UTF-8, a mapped string with a lone
   surrogate such as JSON's ``"\\ud800"``; the detail names ``file:line``), ``missing_field`` (a
   mapped column absent or the instruction null; names the column), ``not_text`` (an instruction
   or answer that is not a string), ``empty`` (nothing left after normalisation), ``too_long``
   (more than ``ingest.max_chars`` characters after normalisation). An entry keeps an excerpt of
   the record (``RAW_LIMIT`` characters), not the record. Quarantine is what the gate counts
   (``gates.max_quarantined``);
3. **normalise** with :func:`ultrafeedback.keys.normalise_text`; the id is
   ``keys.instruction_id(source, normalised text)``;
4. **decontaminate**: drop instructions whose normalised text equals a normalised question of an
   ``ingest.decontaminate`` file (reason ``contaminated:<file as written in the spec>``);
5. **collapse repeats inside a source**: the same normalised text twice in one source would give
   two records one id, so the first in input order is kept whatever ``ingest.dedup`` says
   (reason ``duplicate_of:<id>``);
6. **deduplicate across what is kept** (``ingest.dedup``): ``exact`` drops an instruction whose
   normalised text equals one already kept from an earlier source (sources are taken in spec
   order, so the first source listed keeps a shared instruction; reason ``duplicate_of:<id>``);
   ``near`` also drops near duplicates of anything kept (see :mod:`tasks.ingest.dedup`; reason
   ``near_duplicate_of:<id>``); ``none`` keeps cross-source repeats;
7. **quota**: inside a source, candidates are visited in the order of
   ``keys.seeded_int(seed, "quota", id)`` and the first ``quota`` that survive dedup are kept, the
   rest dropped with reason ``over_quota``. The pick is a function of (seed, ids) only, never of
   input order, and a near duplicate inside a source keeps its lowest-ranked member, so shuffling a
   file changes nothing. Dedup runs before the quota is counted, so a source reaches its quota when
   it has enough unique instructions, and an instruction cut by one source's quota does not shadow
   its copy in a later source.

**Released instructions stay** (``released``: the instructions of the dataset's latest release).
Steps 6 and 7 visit every released instruction first (all sources, in spec order, each source by
rank), then the new ones. So a released instruction keeps its place: a new record cannot take its
quota, and a new near duplicate of it is the one dropped; new instructions fill the quota that is
free. Only a smaller quota removes released instructions (the lowest-ranked are kept; the others
are dropped with reason ``quota_reduced`` and listed in ``released_removed`` and ``notes``), as
does a released text that left its source file, or a dedup or decontamination setting that now
drops it (listed with that reason). Without a release the result is the plain hash sample above.
When ``released`` is a subset of what a run without it keeps, the result is the same as without
it, so a rerun after publishing computes nothing new.

With ``binarize.decontaminate_sources``, the normalised text of every valid record of those sources
(before decontamination, dedup and quota) is returned in ``benchmark``: the pairs stage drops the
other sources' instructions that equal one of them from the binarized set (H4 drops the exact
matches of TruthfulQA's questions); they stay in the instruction pool, as in the original data.

Duplicates, contamination and quota cuts are *drops*, not quarantine: they are listed in
``IngestResult.dropped`` with their reasons, but they do not fail the gate.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ultrafeedback.keys import instruction_id, normalise_text, seeded_int
from ultrafeedback.records import Instruction, Quarantined
from ultrafeedback.spec import Source, Spec
from ultrafeedback.tasks.ingest.dedup import THRESHOLD, NearIndex
from ultrafeedback.tasks.ingest.loaders import (
    MISSING,
    RawRecord,
    get_field,
    iter_source,
    load_benchmark_questions,
    parse_csv_list,
    resolve_files,
)
from ultrafeedback.tasks.publish.history import ReleasedInstructions

QUARANTINE_REASONS: tuple[str, ...] = (
    "malformed_record",
    "missing_field",
    "not_text",
    "empty",
    "too_long",
)
"""Every reason a record can be quarantined for."""

RAW_LIMIT = 200
"""Characters of the raw record kept in a quarantine/drop entry: an excerpt to recognise the record
by, never the whole record (a source that points at a file of secrets must not copy it into the
store)."""

_SURROGATE = re.compile(r"[\ud800-\udfff]")

_NO_ANSWERS = ["None"]


@dataclass
class IngestResult:
    """The stage's output: kept instructions, quarantined records, dropped records and counts.

    ``stats`` maps each source name to ``read``, ``quarantined`` (reason -> count),
    ``exact_duplicates``, ``near_duplicates``, ``decontaminated``, ``over_quota``,
    ``quota_reduced``, ``kept`` and ``quota``; ``read`` equals the sum of all the others but
    ``quota``.
    """

    instructions: list[Instruction]
    quarantined: list[Quarantined]
    dropped: list[Quarantined]
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    released_removed: list[dict[str, str]] = field(default_factory=list)
    """Each released instruction not kept: id, source, reason, detail."""
    notes: list[dict[str, Any]] = field(default_factory=list)
    """Each source whose quota removed released instructions: source, quota, released, removed, text."""
    benchmark: dict[str, list[str]] = field(default_factory=dict)
    """source -> its normalised questions, for the ``binarize.decontaminate_sources`` sources."""

    def totals(self) -> dict[str, int]:
        """The per-source counts summed over sources (quarantine as one number)."""
        total: Counter[str] = Counter()
        for counts in self.stats.values():
            for name, value in counts.items():
                if name == "quarantined":
                    total[name] += sum(value.values())
                elif name != "quota":
                    total[name] += value
        return dict(total)


@dataclass
class _Candidate:
    source: str
    id: str
    text: str
    origin: str
    correct: list[str]
    incorrect: list[str]
    rank: int = 0


class _Reject(Exception):
    """A record fails validation: ``reason`` is one of QUARANTINE_REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _clip(raw: str) -> str:
    if len(raw) <= RAW_LIMIT:
        return raw
    return raw[:RAW_LIMIT] + f"... [{len(raw) - RAW_LIMIT} more characters]"


def _check_unicode(value: str, column: str, origin: str) -> None:
    """A JSON ``\\ud800`` escape decodes to a lone surrogate: text no key, file or Parquet can hold."""
    found = _SURROGATE.search(value)
    if found is not None:
        raise _Reject(
            "malformed_record",
            f"{origin}: column {column!r} holds a lone surrogate \\u{ord(found.group()):04x}, not valid Unicode",
        )


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean"}.get(type(value), type(value).__name__)


def _answers(value: Any, column: str, csv_cell: bool, origin: str) -> list[str]:
    """An answers value as a list of normalised strings; ``["None"]`` when empty (published schema)."""
    if value is None:
        return list(_NO_ANSWERS)
    if isinstance(value, str):
        items = parse_csv_list(value) if csv_cell else [value]
    elif isinstance(value, (list, tuple)):
        items = []
        for item in value:
            if item is None:
                continue
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise _Reject("not_text", f"column {column!r} holds {_type_name(item)} in its list")
            items.append(item if isinstance(item, str) else str(item))
    else:
        raise _Reject("not_text", f"column {column!r} holds {_type_name(value)}, not text or a list")
    for item in items:
        _check_unicode(item, column, origin)
    answers = [text for text in (normalise_text(item) for item in items) if text]
    return answers or list(_NO_ANSWERS)


def _validate(raw: RawRecord, source: Source, spec: Spec) -> _Candidate:
    """A usable candidate from one raw record, or :class:`_Reject` with the quarantine reason."""
    if raw.error is not None or raw.data is None:
        raise _Reject("malformed_record", f"{raw.origin}: {raw.error}")
    fields = source.fields
    value = get_field(raw.data, fields.instruction)
    if value is MISSING:
        raise _Reject("missing_field", f"instruction column {fields.instruction!r} is absent")
    if value is None:
        raise _Reject("missing_field", f"instruction column {fields.instruction!r} is null")
    if not isinstance(value, str):
        raise _Reject("not_text", f"instruction column {fields.instruction!r} holds {_type_name(value)}, not text")
    _check_unicode(value, fields.instruction, raw.origin)
    text = normalise_text(value)
    if not text:
        raise _Reject("empty", f"instruction column {fields.instruction!r} is empty after normalisation")
    if len(text) > spec.ingest.max_chars:
        raise _Reject(
            "too_long",
            f"{len(text)} characters after normalisation > ingest.max_chars {spec.ingest.max_chars}",
        )
    answers: dict[str, list[str]] = {}
    for kind, column in (("correct", fields.correct_answers), ("incorrect", fields.incorrect_answers)):
        if column is None:
            answers[kind] = list(_NO_ANSWERS)
            continue
        found = get_field(raw.data, column)
        if found is MISSING:
            raise _Reject("missing_field", f"{kind}_answers column {column!r} is absent")
        answers[kind] = _answers(found, column, csv_cell=source.loader == "csv", origin=raw.origin)
    origin = raw.origin
    if fields.id is not None:
        own_id = get_field(raw.data, fields.id)
        if own_id is not MISSING and own_id is not None:
            _check_unicode(str(own_id), fields.id, raw.origin)
            origin = f"{origin} (id {own_id})"
    return _Candidate(
        source=source.name,
        id=instruction_id(source.name, text),
        text=text,
        origin=origin,
        correct=answers["correct"],
        incorrect=answers["incorrect"],
    )


def _new_stats(source: Source) -> dict[str, Any]:
    return {
        "read": 0,
        "quarantined": {},
        "exact_duplicates": 0,
        "near_duplicates": 0,
        "decontaminated": 0,
        "over_quota": 0,
        "quota_reduced": 0,
        "kept": 0,
        "quota": source.quota,
    }


def ingest(
    spec: Spec, *, hf_cache_dir: str | None = None, released: ReleasedInstructions | None = None
) -> IngestResult:
    """Read, validate, decontaminate, deduplicate and sample every source of ``spec``.

    Deterministic: the same inputs, spec, seed and ``released`` give the same instructions (sorted
    by ``(source, id)``), the same drops and the same stats, whatever the row order inside a file.
    ``released`` (the latest release's instructions) are kept first (see the module docstring).
    Raises :class:`tasks.ingest.loaders.IngestError` before reading anything when a source path or
    a benchmark file is missing, naming the spec key and the resolved path.
    """
    for source in spec.sources:  # fail fast on a typo before reading 100k lines of another source
        if source.loader != "hf":
            resolve_files(spec, source)
    questions = load_benchmark_questions(spec)
    released = released or ReleasedInstructions()
    released_ids = released.all_ids()
    benchmark_sources = set(spec.binarize.decontaminate_sources)
    benchmark: dict[str, list[str]] = {name: [] for name in spec.binarize.decontaminate_sources}

    quarantined: list[Quarantined] = []
    dropped: list[Quarantined] = []
    stats: dict[str, dict[str, Any]] = {}
    blocks: list[tuple[Source, list[_Candidate]]] = []
    why: dict[str, tuple[str, str]] = {}  # candidate id -> (reason, detail) of its drop

    def drop(candidate: _Candidate, reason: str, detail: str) -> None:
        why[candidate.id] = (reason, detail)  # the last drop of an id is the one that removed it
        dropped.append(
            Quarantined(
                source=candidate.source,
                origin=candidate.origin,
                reason=reason,
                detail=detail,
                raw=_clip(candidate.text),
            )
        )

    for source in spec.sources:
        counts = stats[source.name] = _new_stats(source)
        reasons: Counter[str] = Counter()
        first: dict[str, _Candidate] = {}
        for raw in iter_source(source, spec, hf_cache_dir=hf_cache_dir):
            counts["read"] += 1
            try:
                candidate = _validate(raw, source, spec)
            except _Reject as reject:
                reasons[reject.reason] += 1
                quarantined.append(
                    Quarantined(
                        source=source.name,
                        origin=raw.origin,
                        reason=reject.reason,
                        detail=reject.detail,
                        raw=_clip(raw.raw),
                    )
                )
                continue
            if source.name in benchmark_sources:
                benchmark[source.name].append(candidate.text)
            hit = questions.get(candidate.text)
            if hit is not None:
                counts["decontaminated"] += 1
                drop(candidate, f"contaminated:{hit[0]}", f"equals benchmark question {hit[1]}")
                continue
            kept = first.get(candidate.text)
            if kept is not None:
                counts["exact_duplicates"] += 1
                drop(candidate, f"duplicate_of:{kept.id}", f"same normalised text as {kept.origin}")
                continue
            candidate.rank = seeded_int(spec.seed, "quota", candidate.id)
            first[candidate.text] = candidate
        counts["quarantined"] = {reason: reasons[reason] for reason in QUARANTINE_REASONS if reasons[reason]}
        blocks.append((source, sorted(first.values(), key=lambda c: (c.rank, c.id))))

    # released instructions first (every source), then the new ones: see "Released instructions stay"
    visits = [(source, c) for source, block in blocks for c in block if c.id in released_ids]
    visits += [(source, c) for source, block in blocks for c in block if c.id not in released_ids]
    ordered = [candidate for _, candidate in visits]
    texts = [c.text for c in ordered]
    near = NearIndex(texts, spec.execution.dask_address) if spec.ingest.dedup == "near" else None
    kept_text: dict[str, _Candidate] = {}
    instructions: list[Instruction] = []
    for index, (source, candidate) in enumerate(visits):
        counts = stats[source.name]
        previous = kept_text.get(candidate.text) if spec.ingest.dedup != "none" else None
        if previous is not None:
            counts["exact_duplicates"] += 1
            drop(
                candidate,
                f"duplicate_of:{previous.id}",
                f"same normalised text as {previous.origin} (source {previous.source})",
            )
            continue
        similar = near.find(index) if near is not None else None
        if similar is not None:
            other, score = ordered[similar[0]], similar[1]
            how = (
                "equal up to case, punctuation and spacing"
                if near.keys[index] == near.keys[similar[0]]
                else f"character 5-gram Jaccard {score:.3f} >= {THRESHOLD}"
            )
            counts["near_duplicates"] += 1
            drop(
                candidate,
                f"near_duplicate_of:{other.id}",
                f"{how} with {other.origin} (source {other.source})",
            )
            continue
        if source.quota is not None and counts["kept"] >= source.quota:
            if candidate.id in released_ids:
                counts["quota_reduced"] += 1
                drop(
                    candidate,
                    "quota_reduced",
                    f"released in v{released.version}, but the quota of {source.name!r} is now "
                    f"{source.quota}: the released instructions ranked first by hash of (seed "
                    f"{spec.seed}, id) are kept",
                )
                continue
            counts["over_quota"] += 1
            drop(
                candidate,
                "over_quota",
                f"quota {source.quota} reached; sampled by hash of (seed {spec.seed}, id)",
            )
            continue
        counts["kept"] += 1
        kept_text.setdefault(candidate.text, candidate)
        if near is not None:
            near.add(index)
        instructions.append(
            Instruction(
                id=candidate.id,
                source=candidate.source,
                instruction=candidate.text,
                correct_answers=candidate.correct,
                incorrect_answers=candidate.incorrect,
                origin=candidate.origin,
            )
        )

    instructions.sort(key=lambda item: (item.source, item.id))
    kept_ids = {item.id for item in instructions}
    removed = []
    for source_name, ids in sorted(released.ids.items()):
        for ident in sorted(ids - kept_ids):
            reason, detail = why.get(
                ident,
                ("missing_from_source", f"no valid record of source {source_name!r} has this instruction's text now"),
            )
            removed.append({"id": ident, "source": source_name, "reason": reason, "detail": detail})
    notes = []
    for source in spec.sources:
        cut = stats[source.name]["quota_reduced"]
        if cut:
            had = len(released.ids.get(source.name, ()))
            notes.append(
                {
                    "source": source.name,
                    "quota": source.quota,
                    "released": had,
                    "removed": cut,
                    "text": f"source `{source.name}`: {cut} of the {had} instructions released in "
                    f"v{released.version} were removed because its quota is now {source.quota} (reason quota_reduced)",
                }
            )
    return IngestResult(
        instructions=instructions,
        quarantined=quarantined,
        dropped=dropped,
        stats=stats,
        released_removed=removed,
        notes=notes,
        benchmark=benchmark,
    )
