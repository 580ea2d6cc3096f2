"""Assign k distinct models per instruction and a principle + system prompt per completion.

Every draw is seeded by the spec seed and content ids only: the models by (seed, instruction id,
model id), the principle and system prompt by (seed, instruction id, model id). So an
instruction's assignment does not depend on the other instructions, on the order of the pool, or
on models added to it beyond the one slot a new model may take.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ultrafeedback.keys import request_id, seeded_int
from ultrafeedback.records import CompletionRequest, Instruction
from ultrafeedback.spec import Spec


def principle_prompts(spec: Spec) -> dict[str, list[str]]:
    """The spec's own principle prompts, or the packaged set."""
    if spec.principles is not None:
        return spec.principles
    from ultrafeedback.tasks.assign.principles import load_principles

    return load_principles()


def prompt_format_versions(spec: Spec) -> dict[str, str]:
    """Model id -> the identity of what builds its prompts (``prompt_builder``: a chat template with
    its hash, the server's template, or a prompt format with its version), the request key's prompt
    part. An unknown format or an unusable template file is a spec error naming the model's key."""
    from ultrafeedback.tasks.generate.prompt_builder import builders

    return {model: builder.identity for model, builder in builders(spec).items()}


def pick_models(seed: int, instruction_id: str, pool: Sequence[str], k: int) -> list[str]:
    """The k models with the lowest hash(seed, instruction, model): independent of the pool's order,
    and adding a model to the pool changes at most one pick per instruction (the new model enters
    where it ranks among the top k), so a refresh regenerates as little as possible."""
    return sorted(pool, key=lambda model: seeded_int(seed, "model", instruction_id, model))[:k]


def _weighted_choice(rng: random.Random, weights: dict[str, float]) -> str:
    names = sorted(weights)
    return rng.choices(names, weights=[weights[n] for n in names], k=1)[0]


def assign(
    instructions: Sequence[Instruction], spec: Spec, shard_of: dict[str, int] | None = None
) -> list[CompletionRequest]:
    """One CompletionRequest per (instruction, slot); ``shard_of`` maps instruction id to shard."""
    from ultrafeedback.tasks.generate.prompt_builder import builders

    recipes = builders(spec)
    prompts = principle_prompts(spec)
    sources = {s.name: s for s in spec.sources}
    pool = sorted(m.id for m in spec.models)
    k = spec.completions_per_instruction
    requests: list[CompletionRequest] = []
    for instruction in instructions:
        weights = sources[instruction.source].principles
        for position, model_id in enumerate(pick_models(spec.seed, instruction.id, pool, k)):
            entry = spec.model_entry(model_id)
            rng = random.Random(seeded_int(spec.seed, "principle", instruction.id, model_id))
            principle = _weighted_choice(rng, weights)
            system_prompt = rng.choice(prompts[principle])
            sampling_json = spec.sampling.merged(entry.sampling).canonical_json()
            recipe = recipes[model_id]
            requests.append(
                CompletionRequest(
                    request_id=request_id(
                        instruction.id,
                        model_id,
                        f"{entry.backend}:{entry.served_name}:{entry.path or ''}",
                        principle,
                        system_prompt,
                        sampling_json,
                        recipe.identity,
                    ),
                    instruction_id=instruction.id,
                    source=instruction.source,
                    position=position,
                    model=model_id,
                    principle=principle,
                    system_prompt=system_prompt,
                    prompt_format=recipe.kind,
                    prompt_template=recipe.identity,
                    sampling_json=sampling_json,
                    shard=(shard_of or {}).get(instruction.id, 0),
                )
            )
    return requests


def shard_instructions(instructions: Sequence[Instruction], shard_size: int) -> dict[str, int]:
    """Instruction id -> shard number, in the (deterministic) order of the instruction table."""
    return {inst.id: index // shard_size for index, inst in enumerate(instructions)}
