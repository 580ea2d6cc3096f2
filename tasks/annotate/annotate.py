"""Annotate one shard: one judge call per (instruction, aspect) over its completions in shuffled
order, and one critique call per completion; then join everything into ScoredCompletion rows.

Raw judge text is stored before anything else is derived from it, so a parser fix never needs a
paid call again. Unparseable output is re-queried up to ``judge.parse_retries`` times; what still
fails is recorded as a failure with the parse reason.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import Any

from infra.checkpoint import Checkpointer, failure_log
from infra.llm.base import LLMRequest, LLMResult
from infra.store import ResultLog, Store
from tasks.generate.generate import failure_from, shard_label
from tasks.stages import ShardReport
from ultrafeedback.keys import annotation_key, critique_key
from ultrafeedback.records import (
    TYPED_ASPECTS,
    AspectAnnotation,
    Completion,
    CompletionRequest,
    Critique,
    Failure,
    Instruction,
    ScoredCompletion,
)
from ultrafeedback.spec import Spec

ANNOTATIONS = "annotations"
CRITIQUES = "critiques"


def judge_model_id(spec: Spec) -> str:
    """The judge id recorded in keys and data; the heuristic's id carries its rule version."""
    if spec.judge.backend == "heuristic":
        from infra.llm.heuristic import HEURISTIC_JUDGE_ID

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


def _available(
    requests: Sequence[CompletionRequest], completions: Container[str]
) -> dict[str, list[CompletionRequest]]:
    """Instruction id -> its requests that have a completion (ids in ``completions``), in slot order."""
    grouped: dict[str, list[CompletionRequest]] = defaultdict(list)
    for request in sorted(requests, key=lambda r: (r.instruction_id, r.position)):
        if request.request_id in completions:
            grouped[request.instruction_id].append(request)
    return grouped


def aspect_keys(
    spec: Spec, instruction_id: str, available: list[CompletionRequest]
) -> dict[str, tuple[str, list[str]]]:
    """aspect -> (annotation key, completion ids in the order shown to the judge)."""
    from tasks.annotate.prompts import TEMPLATE_VERSION, shuffle_order

    judge = judge_model_id(spec)
    sampling = spec.judge.sampling.canonical_json()
    out = {}
    for aspect in spec.judge.aspects:
        if spec.judge.shuffle:
            order = shuffle_order(len(available), spec.seed, instruction_id, aspect)
        else:
            order = list(range(len(available)))
        ids = [available[i].request_id for i in order]
        out[aspect] = (annotation_key(ids, aspect, judge, TEMPLATE_VERSION, sampling), ids)
    return out


def critique_key_for(spec: Spec, completion_id: str) -> str:
    from tasks.annotate.prompts import CRITIQUE_TEMPLATE_VERSION

    return critique_key(
        completion_id,
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
        completions,
        done_annotations,
        done_critiques,
        lambda: instructions,
        lambda ids: {i: completions[i].response for i in ids},
    )


def plan_shard_jobs(
    spec: Spec,
    requests: Sequence[CompletionRequest],
    present: Container[str],
    done_annotations: Container[str],
    done_critiques: Container[str],
    load_instructions: Callable[[], dict[str, Instruction]],
    load_texts: Callable[[list[str]], dict[str, str]],
) -> tuple[list[AspectJob], list[CritiqueJob]]:
    """The judge calls still to make for one shard's requests, planned from keys alone.

    ``present`` holds the request ids that have a completion, ``done_*`` the stored result keys;
    the instructions and the response texts are loaded (``load_*``) only when something is
    pending, and only the texts the pending calls show.
    """
    from tasks.annotate.prompts import world_knowledge

    aspect_units: list[tuple[str, str, str, list[str]]] = []
    critique_units: list[tuple[str, CompletionRequest]] = []
    for instruction_id, available in _available(requests, present).items():
        for aspect, (key, ids) in aspect_keys(spec, instruction_id, available).items():
            if key not in done_annotations:
                aspect_units.append((instruction_id, aspect, key, ids))
        if spec.judge.critique:
            for request in available:
                key = critique_key_for(spec, request.request_id)
                if key not in done_critiques:
                    critique_units.append((key, request))
    if not aspect_units and not critique_units:
        return [], []
    instructions = load_instructions()
    wanted = {i for *_, ids in aspect_units for i in ids} | {r.request_id for _, r in critique_units}
    texts = load_texts(sorted(wanted))
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


def _aspect_row(spec: Spec, job: AspectJob, raw: str, tokens: tuple[int, int]) -> AspectAnnotation:
    return AspectAnnotation(
        annotation_key=job.key,
        instruction_id=job.instruction.id,
        aspect=job.aspect,
        completion_ids=job.completion_ids,
        raw=raw,
        judge_model=judge_model_id(spec),
        judge_kind=judge_kind(spec),  # type: ignore[arg-type]
        input_tokens=tokens[0],
        output_tokens=tokens[1],
    )


def _critique_row(spec: Spec, job: CritiqueJob, raw: str, parsed: Any, tokens: tuple[int, int]) -> Critique:
    return Critique(
        critique_key=job.key,
        completion_id=job.request.request_id,
        instruction_id=job.instruction.id,
        raw=raw,
        critique=parsed.critique,
        overall_score=parsed.overall_score,
        judge_model=judge_model_id(spec),
        judge_kind=judge_kind(spec),  # type: ignore[arg-type]
        input_tokens=tokens[0],
        output_tokens=tokens[1],
    )


def annotate_shard(
    spec: Spec,
    store: Store,
    shard: int,
    aspect_jobs: Sequence[AspectJob],
    critique_jobs: Sequence[CritiqueJob],
    on_progress: Callable[[int], None] | None = None,
    logs: dict[str, ResultLog] | None = None,
) -> ShardReport:
    """Run the planned judge calls of one shard, checkpointing as results arrive.

    ``logs`` are the run's shared result and failure logs by name (``annotations``,
    ``failures/annotations``, ``critiques``, ``failures/critiques``); by default the store's."""
    from tasks.annotate.parse import parse_aspect, parse_critique

    started = time.monotonic()
    report = ShardReport(stage=ANNOTATIONS, shard=shard)
    label = shard_label(shard)
    every = spec.execution.checkpoint_every
    logs = logs or {}
    aspects = Checkpointer(
        logs.get(ANNOTATIONS) or store.results(ANNOTATIONS, AspectAnnotation, key="annotation_key"),
        logs.get(f"failures/{ANNOTATIONS}") or failure_log(store, ANNOTATIONS),
        every=every,
        label=label,
    )
    critiques = Checkpointer(
        logs.get(CRITIQUES) or store.results(CRITIQUES, Critique, key="critique_key"),
        logs.get(f"failures/{CRITIQUES}") or failure_log(store, CRITIQUES),
        every=every,
        label=label,
    )

    def parse(job: AspectJob | CritiqueJob, raw: str) -> Any:
        if isinstance(job, AspectJob):
            return parse_aspect(job.aspect, raw, len(job.texts))
        return parse_critique(raw)

    def accept(job: AspectJob | CritiqueJob, raw: str, parsed: Any, tokens: tuple[int, int]) -> None:
        if isinstance(job, AspectJob):
            aspects.add(_aspect_row(spec, job, raw, tokens))
        else:
            critiques.add(_critique_row(spec, job, raw, parsed, tokens))
        report.succeeded += 1
        if on_progress is not None:
            on_progress(1)

    def reject(job: AspectJob | CritiqueJob, failure: Failure) -> None:
        (aspects if isinstance(job, AspectJob) else critiques).fail(failure)
        report.failed[failure.reason] += 1
        if on_progress is not None:
            on_progress(1)

    jobs: list[AspectJob | CritiqueJob] = [*aspect_jobs, *critique_jobs]
    report.issued = len(jobs)
    with aspects, critiques:
        if spec.judge.backend == "heuristic":
            _run_heuristic(jobs, parse, accept, reject, shard)
        else:
            _run_model(spec, jobs, parse, accept, reject, shard, report)
    report.seconds = time.monotonic() - started
    return report


def _run_heuristic(jobs, parse, accept, reject, shard: int) -> None:  # noqa: ANN001
    from infra.llm import heuristic

    for job in jobs:
        if isinstance(job, AspectJob):
            raw = heuristic.rate(job.aspect, job.instruction.instruction, job.texts, job.world_knowledge)
        else:
            raw = heuristic.critique(job.instruction.instruction, job.response, note=job.request.system_prompt)
        parsed = parse(job, raw)
        if parsed.ok:
            accept(job, raw, parsed, (0, 0))
        else:  # a rule bug, recorded like any other failure
            reject(job, _parse_failure(job, shard, parsed, raw, 1))


def _parse_failure(job: AspectJob | CritiqueJob, shard: int, parsed: Any, raw: str, attempts: int) -> Failure:
    stage = ANNOTATIONS if isinstance(job, AspectJob) else CRITIQUES
    return Failure(
        stage=stage,
        key=job.key,
        shard=shard,
        reason=f"parse_{parsed.reason}",
        error=f"{parsed.detail} | raw: {raw[:1500]}",
        attempts=attempts,
        at=time.time(),
    )


def _model_request(spec: Spec, job: AspectJob | CritiqueJob) -> LLMRequest:
    from tasks.annotate.prompts import aspect_messages, critique_messages

    if isinstance(job, AspectJob):
        messages = aspect_messages(job.aspect, job.instruction.instruction, job.texts, job.world_knowledge)
        sampling = spec.judge.sampling
    else:
        messages = critique_messages(
            job.instruction.instruction, job.response, job.request.principle, job.request.system_prompt
        )
        sampling = spec.judge.critique_sampling
    return LLMRequest(
        key=job.key,
        model=judge_model_id(spec),
        messages=messages,
        sampling={k: v for k, v in sampling.model_dump().items() if v is not None},
    )


def _run_model(spec: Spec, jobs, parse, accept, reject, shard: int, report: ShardReport) -> None:  # noqa: ANN001
    from infra.llm.factory import judge_backend

    backend = judge_backend(spec)
    pending = {job.key: job for job in jobs}
    attempts: dict[str, int] = defaultdict(int)
    for round_number in range(spec.judge.parse_retries + 1):
        if not pending:
            break
        last_round = round_number == spec.judge.parse_retries
        retry: dict[str, AspectJob | CritiqueJob] = {}

        def on_result(
            result: LLMResult, retry: dict = retry, last_round: bool = last_round, pending: dict = pending
        ) -> None:
            job = pending[result.key]
            attempts[job.key] += result.attempts
            report.add_tokens(judge_model_id(spec), result.input_tokens, result.output_tokens)
            if not result.ok:
                reject(job, failure_from(ANNOTATIONS if isinstance(job, AspectJob) else CRITIQUES, shard, result))
                return
            raw = result.text or ""
            parsed = parse(job, raw)
            if parsed.ok:
                accept(job, raw, parsed, (result.input_tokens, result.output_tokens))
            elif last_round:
                reject(job, _parse_failure(job, shard, parsed, raw, attempts[job.key]))
            else:
                retry[job.key] = job

        backend.run([_model_request(spec, job) for job in pending.values()], on_result)
        if retry:
            report.issued += len(retry)
        pending = retry


# --------------------------------------------------------------------------- scoring


def build_scored(
    spec: Spec,
    instructions: dict[str, Instruction],
    requests: Sequence[CompletionRequest],
    completions: dict[str, Completion],
    annotations: dict[str, AspectAnnotation],
    critiques: dict[str, Critique],
) -> list[ScoredCompletion]:
    """One row per completion with its parsed ratings, critique and scores.

    Annotations are looked up by the key the current spec would give them, so results of an older
    template, judge or completion set are never mixed in.
    """
    from tasks.annotate.parse import fine_grained_score, parse_aspect

    rows: list[ScoredCompletion] = []
    assigned: dict[str, list[CompletionRequest]] = defaultdict(list)
    for request in requests:
        assigned[request.instruction_id].append(request)
    kind = judge_kind(spec)
    judge = judge_model_id(spec)
    for instruction_id, available in _available(requests, completions).items():
        instruction = instructions[instruction_id]
        fields: dict[str, dict[str, Any]] = {r.request_id: {} for r in available}
        for aspect, (key, ids) in aspect_keys(spec, instruction_id, available).items():
            annotation = annotations.get(key)
            if annotation is None:
                continue
            parsed = parse_aspect(aspect, annotation.raw, len(ids))
            if not parsed.ok:
                continue
            for completion_id, item in zip(ids, parsed.items, strict=True):
                target = fields[completion_id]
                target[f"{aspect}_rating"] = item.rating
                target[f"{aspect}_rationale"] = item.rationale
                if aspect in TYPED_ASPECTS:
                    target[f"{aspect}_type"] = item.type
                    target[f"{aspect}_type_rationale"] = item.type_rationale
        models = [r.model for r in sorted(assigned[instruction_id], key=lambda r: r.position)]
        for request in available:
            completion = completions[request.request_id]
            target = fields[request.request_id]
            critique = critiques.get(critique_key_for(spec, request.request_id)) if spec.judge.critique else None
            ratings = [target.get(f"{a}_rating") for a in spec.judge.aspects]
            rows.append(
                ScoredCompletion(
                    completion_id=request.request_id,
                    instruction_id=instruction_id,
                    source=instruction.source,
                    instruction=instruction.instruction,
                    correct_answers=instruction.correct_answers,
                    incorrect_answers=instruction.incorrect_answers,
                    models=models,
                    position=request.position,
                    model=request.model,
                    principle=request.principle,
                    system_prompt=request.system_prompt,
                    response=completion.response,
                    finish_reason=completion.finish_reason,
                    critique=critique.critique if critique else None,
                    overall_score=critique.overall_score if critique else None,
                    fine_grained_score=fine_grained_score([r for r in ratings if r is not None]),
                    judge_model=judge,
                    judge_kind=kind,  # type: ignore[arg-type]
                    **target,
                )
            )
    return rows
