"""Generate completions for one shard: batched per model, checkpointed as results arrive."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from infra.checkpoint import Checkpointer, failure_log
from infra.llm.base import LLMRequest, LLMResult
from infra.store import ResultLog, Store
from tasks.stages import ShardReport
from ultrafeedback.records import Completion, CompletionRequest, Failure, Instruction
from ultrafeedback.spec import Spec

STAGE = "completions"


def to_llm_request(request: CompletionRequest, instruction: Instruction, served_model: str) -> LLMRequest:
    """The backend call for one completion request, in the model's prompt format."""
    from tasks.generate.prompt_formats import build_prompt

    built = build_prompt(request.prompt_format, instruction.instruction, request.system_prompt)
    sampling = json.loads(request.sampling_json)
    if built.stop:
        sampling["stop"] = list(dict.fromkeys([*(sampling.get("stop") or []), *built.stop]))
    return LLMRequest(
        key=request.request_id,
        model=served_model,
        messages=built.messages,
        prompt=built.prompt,
        sampling=sampling,
    )


def shard_label(shard: int) -> str:
    """The label of a shard's checkpoint parts in a result log."""
    return f"s{shard:05d}"


def failure_from(stage: str, shard: int, result: LLMResult) -> Failure:
    return Failure(
        stage=stage,
        key=result.key,
        shard=shard,
        reason=result.reason or "error",
        error=(result.error or "")[:2000],
        attempts=result.attempts,
        at=time.time(),
    )


def generate_shard(
    spec: Spec,
    store: Store,
    shard: int,
    requests: Sequence[CompletionRequest],
    instructions: dict[str, Instruction],
    on_progress: Callable[[int], None] | None = None,
    results: ResultLog | None = None,
    failures: ResultLog | None = None,
) -> ShardReport:
    """Generate every request of the shard (the caller passes only requests without a result).

    ``results``/``failures`` are the run's shared logs (their key indexes stay current); by
    default the store's."""
    from infra.llm.factory import model_backend

    started = time.monotonic()
    report = ShardReport(stage=STAGE, shard=shard)
    by_model: dict[str, list[CompletionRequest]] = defaultdict(list)
    for request in requests:
        by_model[request.model].append(request)
    results = results or store.results(STAGE, Completion, key="request_id")
    failures = failures or failure_log(store, STAGE)
    with Checkpointer(
        results, failures, every=spec.execution.checkpoint_every, label=shard_label(shard)
    ) as checkpoint:
        for model_id in sorted(by_model):
            entry = spec.model_entry(model_id)
            backend = model_backend(spec, entry)
            batch = by_model[model_id]
            originals = {r.request_id: r for r in batch}
            calls = [to_llm_request(r, instructions[r.instruction_id], entry.served_name) for r in batch]
            report.issued += len(calls)

            def on_result(
                result: LLMResult, model_id: str = model_id, originals: dict = originals, backend=backend
            ) -> None:
                original = originals[result.key]
                report.add_tokens(model_id, result.input_tokens, result.output_tokens)
                if result.ok and not (result.text or "").strip():
                    # an empty answer (content filter, null content, immediate stop) is a failure:
                    # stored as a success it would block the gate and never be retried
                    result = LLMResult(
                        key=result.key,
                        text=None,
                        finish_reason=result.finish_reason,
                        attempts=result.attempts,
                        error=f"empty response (finish_reason={result.finish_reason or 'unknown'})",
                        reason="empty_response",
                    )
                if result.ok:
                    checkpoint.add(
                        Completion(
                            request_id=original.request_id,
                            instruction_id=original.instruction_id,
                            model=model_id,
                            response=(result.text or "").strip(),
                            finish_reason=result.finish_reason,
                            input_tokens=result.input_tokens,
                            output_tokens=result.output_tokens,
                            latency_s=round(result.latency_s, 4),
                            backend=backend.name,
                        )
                    )
                    report.succeeded += 1
                else:
                    checkpoint.fail(failure_from(STAGE, shard, result))
                    report.failed[result.reason or "error"] += 1
                if on_progress is not None:
                    on_progress(1)

            backend.run(calls, on_result)
    report.seconds = time.monotonic() - started
    return report
