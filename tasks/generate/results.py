"""What one backend answer becomes in the store: a ``Completion``, or a ``Failure`` with its reason.

Shared by a shard's generation in the build's process (``generate``) and by a GPU job's engine
process (``gpu_engine``), so a completion is the same row whichever process produced it. Imports
the record types only: the GPU worker's engine environment has no Prefect, pandas or Dask.
"""

from __future__ import annotations

import json
import time

from ultrafeedback.infra.llm.base import LLMResult
from ultrafeedback.records import Completion, CompletionRequest, Failure

STAGE = "completions"


def cut_response(text: str, cut_at: str | None) -> str:
    """A response as it is stored: stripped, then cut at the first ``cut_at`` (``sampling.cut_at``;
    the original cut at four newlines after stripping, reference §2) and stripped again."""
    text = text.strip()
    if cut_at:
        text = text.split(cut_at, 1)[0].rstrip()
    return text


def cut_at(request: CompletionRequest) -> str | None:
    """The request's ``sampling.cut_at`` (None when it has none)."""
    return json.loads(request.sampling_json).get("cut_at") or None


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


def unbuilt(request: CompletionRequest, error: Exception) -> Failure:
    """A request whose model's chat template raised: recorded (``prompt_template``), never sent."""
    return Failure(
        stage=STAGE,
        key=request.request_id,
        shard=request.shard,
        reason="prompt_template",
        error=str(error)[:2000],
        attempts=0,
        at=time.time(),
    )


def settle(
    original: CompletionRequest, result: LLMResult, cut: str | None, backend_name: str, prompt_template: str
) -> tuple[LLMResult, Completion | Failure]:
    """The stored row of one answer, and the result as counted: an empty answer (content filter,
    null content, immediate stop) is a failure, since stored as a success it would block the gate
    and never be retried."""
    response = cut_response(result.text or "", cut) if result.ok else ""
    if result.ok and not response:
        after = f" after the cut at {cut!r}" if (result.text or "").strip() else ""
        result = LLMResult(
            key=result.key,
            text=None,
            finish_reason=result.finish_reason,
            attempts=result.attempts,
            error=f"empty response{after} (finish_reason={result.finish_reason or 'unknown'})",
            reason="empty_response",
        )
    if not result.ok:
        return result, failure_from(STAGE, original.shard, result)
    completion = Completion(
        request_id=original.request_id,
        instruction_id=original.instruction_id,
        model=original.model,
        response=response,
        finish_reason=result.finish_reason,
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
        latency_s=round(result.latency_s, 4),
        backend=backend_name,
        prompt_template=prompt_template,
    )
    return result, completion
