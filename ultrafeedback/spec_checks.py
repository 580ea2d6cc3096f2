"""Specs that contradict themselves: settings each valid alone that no run can honour together.

``contradictions(spec)`` lists them, one line each, every line naming the keys involved and why
they clash (``pairs.score=overall, judge.critique=false: ...``). ``validate_dict`` refuses a spec
with any (``SpecContradiction``), so ``validate``, ``build`` and deployment runs stop before any
work instead of finding out at a gate after the models were paid: a spec that ranks pairs by a
critique score it never asks for used to run to the end and then fail the binarized gate on
missing columns.

Only what the spec alone decides is checked here; what needs files (sources, chat templates) is
checked by ``validate`` and at the start of a build.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ultrafeedback.spec import SpecError

if TYPE_CHECKING:
    from ultrafeedback.spec import Spec


CHAT_FORMAT = "chat"
"""The prompt format that sends chat messages (every other format renders one raw prompt)."""


class SpecContradiction(SpecError):
    """The spec contradicts itself; ``lines`` holds one line per contradiction."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def contradictions(spec: Spec) -> list[str]:
    """Every contradiction in ``spec``, one line each (empty when there is none)."""
    return [
        *_judge_scores(spec),
        *_cuts(spec),
        *_pool(spec),
        *_binarize(spec),
        *_gates(spec),
        *_models(spec),
        *_publish(spec),
        *_gpu_pool(spec),
    ]


def check(spec: Spec) -> Spec:
    """``spec`` when it does not contradict itself; raises ``SpecContradiction`` otherwise."""
    lines = contradictions(spec)
    if lines:
        raise SpecContradiction(lines)
    return spec


def _judge_scores(spec: Spec) -> list[str]:
    """The scores pairs and binarize rank by must be ones the judge produces."""
    out = []
    no_critique = "no critique is asked for, so no completion has an overall score"
    no_aspects = "the judge rates no aspect, so no completion has a fine-grained score"
    if spec.pairs.score == "overall" and not spec.judge.critique:
        out.append(
            f"pairs.score=overall, judge.critique=false: pairs are ranked by the critique's overall score, but "
            f"{no_critique} (set judge.critique: true or pairs.score: fine_grained)"
        )
    if spec.pairs.score == "fine_grained" and not spec.judge.aspects:
        out.append(
            f"pairs.score=fine_grained, judge.aspects=[]: pairs are ranked by the mean of the aspect ratings, but "
            f"{no_aspects} (list aspects in judge.aspects or set pairs.score: overall)"
        )
    if spec.binarize.rule == "h4" and not spec.judge.critique:
        out.append(
            f"binarize.rule=h4, judge.critique=false: the H4 rule picks the chosen completion by the critique's "
            f"overall score, but {no_critique} (set judge.critique: true or binarize.rule: argilla)"
        )
    if spec.binarize.rule == "argilla" and not spec.judge.aspects:
        out.append(
            f"binarize.rule=argilla, judge.aspects=[]: the Argilla rule picks the chosen completion by the mean of "
            f"the aspect ratings, but {no_aspects} (list aspects in judge.aspects or set binarize.rule: h4)"
        )
    return out


def _cuts(spec: Spec) -> list[str]:
    """``cut_at`` shortens generated responses: not the judge's, and never to nothing."""
    out = []
    for key in ("sampling", "critique_sampling"):
        if getattr(spec.judge, key).cut_at is not None:
            out.append(f"judge.{key}.cut_at: the cut applies to generated completions only, never to the judge")
    if spec.sampling.cut_at == "":
        out.append("sampling.cut_at: an empty cut would remove every response")
    for index, entry in enumerate(spec.models):
        if entry.sampling is not None and entry.sampling.cut_at == "":
            out.append(f"models[{index}] ({entry.id}).sampling.cut_at: an empty cut would remove every response")
    return out


def _pool(spec: Spec) -> list[str]:
    k, pool = spec.completions_per_instruction, len(spec.models)
    if k > pool:
        return [
            f"completions_per_instruction={k}, models: {k} distinct models per instruction, but the pool has "
            f"only {pool}"
        ]
    return []


def _binarize(spec: Spec) -> list[str]:
    out = []
    names = [source.name for source in spec.sources]
    unknown = [name for name in spec.binarize.exclude_sources if name not in names]
    for name in unknown:
        out.append(f"binarize.exclude_sources: {name!r} is not a source (sources: {', '.join(names)})")
    if not unknown and set(names) <= set(spec.binarize.exclude_sources):
        out.append(
            "binarize.exclude_sources, sources: every source is excluded, so the binarized set would have no row"
        )
    size = spec.binarize.test_size
    if isinstance(size, float) and size >= 1 and not size.is_integer():
        out.append(f"binarize.test_size={size:g}: neither a fraction below 1 nor a whole number of test rows")
    return out


def _gates(spec: Spec) -> list[str]:
    """Gates no run can pass: more instructions or pairs than the quotas allow."""
    quotas = [source.quota for source in spec.sources]
    if any(quota is None for quota in quotas):
        return []  # a source without a quota has no upper bound
    out = []
    most = sum(q for q in quotas if q is not None)
    if spec.gates.min_instructions > most:
        out.append(
            f"gates.min_instructions={spec.gates.min_instructions}, sources[*].quota: the quotas add up to at most "
            f"{most} instructions"
        )
    k = min(spec.completions_per_instruction, len(spec.models))
    pairs = most * math.comb(k, 2)
    if k >= 2 and spec.gates.min_pairs > pairs:  # k = 1 (no pairs at all) is left to the pairs gate
        out.append(
            f"gates.min_pairs={spec.gates.min_pairs}, sources[*].quota, completions_per_instruction={k}: at most "
            f"{pairs} pairs ({most} instructions x C({k}, 2))"
        )
    return out


def _models(spec: Spec) -> list[str]:
    """A model's prompt comes from one place, and a raw prompt format places the principle itself."""
    out = []
    for index, entry in enumerate(spec.models):
        where = f"models[{index}] ({entry.id})"
        if entry.chat_template is not None and entry.prompt_format != CHAT_FORMAT:
            out.append(
                f"{where}.chat_template, {where}.prompt_format={entry.prompt_format}: the prompt is built by one "
                "of them; drop prompt_format (raw formats are for servers without a template)"
            )
        elif entry.chat_template is None and entry.prompt_format != CHAT_FORMAT and entry.principle_placement != "auto":
            out.append(
                f"{where}.principle_placement={entry.principle_placement}, {where}.prompt_format="
                f"{entry.prompt_format}: a raw prompt format places the principle itself"
            )
        if entry.principle_joiner is not None and entry.chat_template is None and entry.prompt_format != CHAT_FORMAT:
            out.append(
                f"{where}.principle_joiner, {where}.prompt_format={entry.prompt_format}: a raw prompt format places "
                "the principle itself"
            )
        elif entry.principle_joiner is not None and entry.principle_placement in ("system", "none"):
            out.append(
                f"{where}.principle_joiner, {where}.principle_placement={entry.principle_placement}: the joiner goes "
                "between the principle and the default system text or the instruction, and this placement joins "
                "nothing (use default_system or instruction, or drop the joiner)"
            )
        if entry.principle_placement == "default_system" and entry.chat_template in (None, "server"):
            out.append(
                f"{where}.principle_placement=default_system, {where}.chat_template="
                f"{entry.chat_template or 'unset'}: the default system text comes from a template file; name one "
                "in chat_template, or use principle_placement: system"
            )
        if entry.special_tokens and (entry.chat_template is None or entry.chat_template == "server"):
            out.append(
                f"{where}.special_tokens, {where}.chat_template: special tokens fill a template file's variables, "
                "but no template file is named"
            )
    return out


def _publish(spec: Spec) -> list[str]:
    out = []
    for index, target in enumerate(spec.publish.targets):
        if target.kind in ("local", "s3", "hub") and not target.uri:
            what = "the repo id" if target.kind == "hub" else "the folder or bucket URL"
            out.append(f"publish.targets[{index}].kind={target.kind}, publish.targets[{index}].uri: {what} is missing")
        if target.kind == "store" and target.uri:
            out.append(
                f"publish.targets[{index}].kind=store, publish.targets[{index}].uri: a store target publishes to the "
                "store; use kind local or s3 to publish elsewhere"
            )
    return out


def _gpu_pool(spec: Spec) -> list[str]:
    """GPU jobs run the ``backend: vllm`` models; engine options mean nothing to other backends."""
    out = []
    vllm = [entry.id for entry in spec.models if entry.backend == "vllm"]
    pool = spec.execution.pools.gpu
    if pool is not None and not vllm:
        out.append(
            f"execution.pools.gpu={pool}: GPU jobs run the models with backend vllm, but the pool has none "
            "(drop execution.pools.gpu or add a backend: vllm model)"
        )
    if pool is not None and "/" not in spec.execution.gpu_deployment:
        out.append(
            f"execution.gpu_deployment={spec.execution.gpu_deployment}: a deployment is named flow/deployment "
            "(gpu-job/gpu-job)"
        )
    for index, entry in enumerate(spec.models):
        if entry.backend != "vllm" and entry.engine.llm_kwargs() != {"tensor_parallel_size": 1}:
            out.append(
                f"models[{index}] ({entry.id}).engine, models[{index}] ({entry.id}).backend={entry.backend}: "
                "engine options are vllm.LLM's, for backend vllm only"
            )
    return out
