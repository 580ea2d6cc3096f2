"""The judge calls of the annotate stage, planned from keys: one per (instruction, aspect) over its
completions in shuffled order, one critique per completion; and the keys they are stored under.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass

from ultrafeedback.keys import annotation_key, critique_key, text_hash
from ultrafeedback.records import (
    Completion,
    CompletionRequest,
    Instruction,
)
from ultrafeedback.spec import Spec

ANNOTATIONS = "annotations"
CRITIQUES = "critiques"


def judge_model_id(spec: Spec) -> str:
    """The judge id recorded in keys and data; the heuristic's id carries its rule version."""
    if spec.judge.backend == "heuristic":
        from ultrafeedback.infra.llm.heuristic import HEURISTIC_JUDGE_ID

        return HEURISTIC_JUDGE_ID
    assert spec.judge.model is not None  # validated by the spec
    return spec.judge.model


def judge_kind(spec: Spec) -> str:
    return "heuristic" if spec.judge.backend == "heuristic" else "model"


@dataclass(frozen=True)
class AspectJob:
    key: str
    instruction: Instruction
    aspect: str
    completion_ids: list[str]
    texts: list[str]
    world_knowledge: str | None


@dataclass(frozen=True)
class CritiqueJob:
    key: str
    instruction: Instruction
    request: CompletionRequest
    response: str


def available_by_instruction(
    requests: Sequence[CompletionRequest], completions: Container[str]
) -> dict[str, list[CompletionRequest]]:
    """Instruction id -> its requests that have a completion (ids in ``completions``), in slot order."""
    grouped: dict[str, list[CompletionRequest]] = defaultdict(list)
    for request in sorted(requests, key=lambda r: (r.instruction_id, r.position)):
        if request.request_id in completions:
            grouped[request.instruction_id].append(request)
    return grouped


def aspect_keys(
    spec: Spec, instruction_id: str, available: list[CompletionRequest], hashes: Mapping[str, str]
) -> dict[str, tuple[str, list[str]]]:
    """aspect -> (annotation key, completion ids in the order shown to the judge). ``hashes`` maps
    each completion id to the hash of its response text (``keys.text_hash``), which the key carries."""
    from ultrafeedback.tasks.annotate.prompts import shuffle_order

    keyed = _aspect_keyer(spec)  # the judge's part of the key, once per call (this runs per instruction)
    out = {}
    for aspect in spec.judge.aspects:
        if spec.judge.shuffle:
            order = shuffle_order(len(available), spec.seed, instruction_id, aspect)
        else:
            order = list(range(len(available)))
        ids = [available[i].request_id for i in order]
        out[aspect] = (keyed(aspect, ids, hashes), ids)
    return out


def aspect_key(spec: Spec, aspect: str, ids: list[str], hashes: Mapping[str, str]) -> str:
    """The annotation key of one aspect over completions ``ids`` in the order shown."""
    return _aspect_keyer(spec)(aspect, ids, hashes)


def _aspect_keyer(spec: Spec) -> Callable[[str, list[str], Mapping[str, str]], str]:
    """``aspect_key`` with the spec's judge, template version and sampling computed once."""
    from ultrafeedback.tasks.annotate.prompts import TEMPLATE_VERSION

    judge, sampling = judge_model_id(spec), spec.judge.sampling.canonical_json()

    def keyed(aspect: str, ids: list[str], hashes: Mapping[str, str]) -> str:
        return annotation_key(ids, [hashes[i] for i in ids], aspect, judge, TEMPLATE_VERSION, sampling)

    return keyed


def critique_key_for(spec: Spec, completion_id: str, response_hash: str) -> str:
    from ultrafeedback.tasks.annotate.prompts import CRITIQUE_TEMPLATE_VERSION

    return critique_key(
        completion_id,
        response_hash,
        judge_model_id(spec),
        CRITIQUE_TEMPLATE_VERSION,
        spec.judge.critique_sampling.canonical_json(),
    )


def plan_jobs(
    spec: Spec,
    requests: Sequence[CompletionRequest],
    instructions: dict[str, Instruction],
    completions: dict[str, Completion],
    done_annotations: Container[str],
    done_critiques: Container[str],
) -> tuple[list[AspectJob], list[CritiqueJob]]:
    """The judge calls still to make for these requests (what is stored is skipped)."""
    return plan_shard_jobs(
        spec,
        requests,
        {i: c.response_hash for i, c in completions.items()},
        done_annotations,
        done_critiques,
        lambda: instructions,
        lambda ids: {i: completions[i].response for i in ids},
    )


def plan_shard_jobs(
    spec: Spec,
    requests: Sequence[CompletionRequest],
    present: Mapping[str, str],
    done_annotations: Container[str],
    done_critiques: Container[str],
    load_instructions: Callable[[], dict[str, Instruction]],
    load_texts: Callable[[list[str]], dict[str, str]],
) -> tuple[list[AspectJob], list[CritiqueJob]]:
    """The judge calls still to make for one shard's requests, planned from keys alone.

    ``present`` maps the request ids that have a completion to the hash of their response
    (``Completion.response_hash``), ``done_*`` holds the stored result keys; the instructions and
    the response texts are loaded (``load_*``) only when something is pending, and only the texts
    the pending calls show. A job's key is computed again from the texts it shows, so a text that
    changed between planning and loading can never be rated under the old text's key.
    """
    from ultrafeedback.tasks.annotate.prompts import world_knowledge

    aspect_units: list[tuple[str, str, str, list[str]]] = []
    critique_units: list[tuple[str, CompletionRequest]] = []
    for instruction_id, available in available_by_instruction(requests, present).items():
        for aspect, (key, ids) in aspect_keys(spec, instruction_id, available, present).items():
            if key not in done_annotations:
                aspect_units.append((instruction_id, aspect, key, ids))
        if spec.judge.critique:
            for request in available:
                key = critique_key_for(spec, request.request_id, present[request.request_id])
                if key not in done_critiques:
                    critique_units.append((key, request))
    if not aspect_units and not critique_units:
        return [], []
    instructions = load_instructions()
    wanted = {i for *_, ids in aspect_units for i in ids} | {r.request_id for _, r in critique_units}
    texts = load_texts(sorted(wanted))
    shown = {i: text_hash(text) for i, text in texts.items()}
    if any(shown[i] != present[i] for i in shown):  # rewritten meanwhile: key the jobs by what they show
        aspect_units = [
            (instruction_id, aspect, key, ids)
            for instruction_id, aspect, _, ids in aspect_units
            for key in [aspect_key(spec, aspect, ids, shown)]
            if key not in done_annotations
        ]
        critique_units = [
            (key, request)
            for _, request in critique_units
            for key in [critique_key_for(spec, request.request_id, shown[request.request_id])]
            if key not in done_critiques
        ]
    sources = {s.name: s for s in spec.sources}
    aspect_jobs: list[AspectJob] = []
    for instruction_id, aspect, key, ids in aspect_units:
        instruction = instructions[instruction_id]
        knowledge = None
        if aspect == "truthfulness":
            knowledge = world_knowledge(
                sources[instruction.source].world_knowledge,
                instruction.correct_answers,
                instruction.incorrect_answers,
            )
        aspect_jobs.append(AspectJob(key, instruction, aspect, ids, [texts[i] for i in ids], knowledge))
    critique_jobs = [
        CritiqueJob(key, instructions[request.instruction_id], request, texts[request.request_id])
        for key, request in critique_units
    ]
    return aspect_jobs, critique_jobs
