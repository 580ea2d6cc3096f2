"""The score stage's join: one ScoredCompletion row per completion, with its parsed ratings,
critique and scores (the flat table aggregate, pairs, the gates and publish read)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ultrafeedback.records import (
    TYPED_ASPECTS,
    AspectAnnotation,
    Completion,
    CompletionRequest,
    Critique,
    Instruction,
    ScoredCompletion,
)
from ultrafeedback.spec import Spec
from ultrafeedback.tasks.annotate.jobs import (
    aspect_keys,
    available_by_instruction,
    critique_key_for,
    judge_kind,
    judge_model_id,
)


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
    from ultrafeedback.tasks.annotate.parse import fine_grained_score, stored_or_parsed

    rows: list[ScoredCompletion] = []
    assigned: dict[str, list[CompletionRequest]] = defaultdict(list)
    for request in requests:
        assigned[request.instruction_id].append(request)
    kind = judge_kind(spec)
    judge = judge_model_id(spec)
    # the hashes of the texts being published (Completion computes them from the response), so a
    # judge result joins only the text it saw
    hashes = {i: c.response_hash for i, c in completions.items()}
    for instruction_id, available in available_by_instruction(requests, completions).items():
        instruction = instructions[instruction_id]
        fields: dict[str, dict[str, Any]] = {r.request_id: {} for r in available}
        for aspect, (key, ids) in aspect_keys(spec, instruction_id, available, hashes).items():
            annotation = annotations.get(key)
            if annotation is None:
                continue
            # the ratings annotate stored with the answer (parsed again only under another parser)
            parsed = stored_or_parsed(
                aspect, annotation.raw, len(ids), annotation.parsed, annotation.parser_version
            )
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
            critique = None
            if spec.judge.critique:
                critique = critiques.get(critique_key_for(spec, request.request_id, hashes[request.request_id]))
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
                    prompt_template=completion.prompt_template or request.prompt_template,
                    critique=critique.critique if critique else None,
                    overall_score=critique.overall_score if critique else None,
                    fine_grained_score=fine_grained_score([r for r in ratings if r is not None]),
                    judge_model=judge,
                    judge_kind=kind,  # type: ignore[arg-type]
                    **target,
                )
            )
    return rows
