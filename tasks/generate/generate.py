"""Generate completions for one shard: batched per model, checkpointed as results arrive."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from infra.checkpoint import Checkpointer, failure_log
from infra.llm.base import LLMRequest, LLMResult
from infra.store import Store
from ultrafeedback.records import Completion, CompletionRequest, Failure, Instruction
from ultrafeedback.spec import Spec

STAGE = "completions"


@dataclass
class StageReport:
    """What one shard of one stage did; summed by the flow for the final summary."""

    stage: str
    shard: int
    issued: int = 0
    succeeded: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    tokens: dict[str, list[int]] = field(default_factory=dict)
    """model -> [input tokens, output tokens]"""
    seconds: float = 0.0

    def add_tokens(self, model: str, tokens_in: int, tokens_out: int) -> None:
        pair = self.tokens.setdefault(model, [0, 0])
        pair[0] += tokens_in
        pair[1] += tokens_out

    def as_state(self) -> Any:
        """The report as the shard task's result: a Failed state (with the report as its data) when
        units failed, so the Prefect UI marks the shard failed while the flow goes on to its gate."""
        if not self.failed:
            return self.to_dict()
        from prefect.states import Failed

        reasons = ", ".join(f"{reason} {count}" for reason, count in self.failed.most_common())
        message = (
            f"shard {self.shard}: {sum(self.failed.values())} of {self.issued} {self.stage} failed ({reasons}); "
            f"recorded under failures/{self.stage}, re-sent by the next run"
        )
        return Failed(message=message, data=self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "shard": self.shard,
            "issued": self.issued,
            "succeeded": self.succeeded,
            "failed": dict(self.failed),
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
        }


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
) -> StageReport:
    """Generate every request of the shard (the caller passes only requests without a result)."""
    from infra.llm.factory import model_backend

    started = time.monotonic()
    report = StageReport(stage=STAGE, shard=shard)
    by_model: dict[str, list[CompletionRequest]] = defaultdict(list)
    for request in requests:
        by_model[request.model].append(request)
    results = store.results(STAGE, Completion, key="request_id")
    with Checkpointer(
        results, failure_log(store, STAGE), every=spec.execution.checkpoint_every, label=f"s{shard:05d}"
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
