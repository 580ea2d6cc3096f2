"""vLLM offline backend for GPU workers: one engine per worker process, the whole shard per call.

vLLM pins its own torch and FastAPI and cannot share an environment with Prefect 3.9 (see
infra/gpu-worker/). This module imports ``vllm`` only inside ``_engine``; request building and
output handling are plain Python and are tested with a fake engine. To serve open models without
a GPU worker in this environment, run ``vllm serve`` and use the ``openai`` backend instead.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from typing import Any

from ultrafeedback.infra.llm.base import LLMRequest, LLMResult, ResultCallback

ENGINE_ENV = "ULTRAFEEDBACK_VLLM_ENGINE"
"""``module:callable`` that makes the engine instead of ``vllm.LLM`` (same arguments, same ``chat``,
``generate`` and ``SamplingParams``): a stand-in engine where no GPU is, as the tests use."""

_SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "stop", "presence_penalty", "frequency_penalty", "seed")


def sampling_kwargs(sampling: dict[str, Any]) -> dict[str, Any]:
    """Our sampling dict as ``vllm.SamplingParams`` keyword arguments."""
    return {k: sampling[k] for k in _SAMPLING_KEYS if sampling.get(k) is not None}


class VLLMBackend:
    """Runs requests through ``vllm.LLM``; requests with equal sampling go in one ``generate``."""

    name = "vllm"

    def __init__(self, model: str, engine_kwargs: dict[str, Any] | None = None, engine: Any = None):
        self.model = model
        self.engine_kwargs = dict(engine_kwargs or {})
        self._engine = engine
        self._lock = threading.Lock()

    def _get_engine(self) -> Any:
        if self._engine is None and os.environ.get(ENGINE_ENV):
            module, _, name = os.environ[ENGINE_ENV].partition(":")
            self._engine = getattr(importlib.import_module(module), name)(model=self.model, **self.engine_kwargs)
        if self._engine is None:
            try:
                from vllm import LLM
            except ImportError as exc:  # pragma: no cover - depends on the worker image
                raise ImportError(
                    "the vllm backend needs the GPU worker environment (infra/gpu-worker/requirements.txt); "
                    "or serve the model with `vllm serve` and use backend: openai"
                ) from exc
            self._engine = LLM(model=self.model, **self.engine_kwargs)
        return self._engine

    def _params(self, sampling: dict[str, Any]) -> Any:
        try:
            from vllm import SamplingParams
        except ImportError:  # the fake engine in tests brings its own
            SamplingParams = self._get_engine().SamplingParams  # noqa: N806
        return SamplingParams(**sampling_kwargs(sampling))

    def run(self, requests: list[LLMRequest], on_result: ResultCallback) -> None:
        groups: dict[str, list[LLMRequest]] = {}
        for request in requests:
            groups.setdefault(repr(sorted(sampling_kwargs(request.sampling).items())), []).append(request)
        with self._lock:
            engine = self._get_engine()
            for batch in groups.values():
                started = time.monotonic()
                params = self._params(batch[0].sampling)
                try:
                    chats = [r for r in batch if r.messages is not None]
                    raws = [r for r in batch if r.messages is None]
                    outputs: list[tuple[LLMRequest, Any]] = []
                    if chats:
                        got = engine.chat([r.messages for r in chats], params, use_tqdm=False)
                        outputs += list(zip(chats, got, strict=True))
                    if raws:
                        got = engine.generate([r.prompt for r in raws], params, use_tqdm=False)
                        outputs += list(zip(raws, got, strict=True))
                except Exception as exc:  # noqa: BLE001 - one batch's failure is data
                    for request in batch:
                        on_result(LLMResult(key=request.key, text=None, error=str(exc), reason="backend_error"))
                    continue
                elapsed = (time.monotonic() - started) / max(len(batch), 1)
                for request, output in outputs:
                    choice = output.outputs[0]
                    on_result(
                        LLMResult(
                            key=request.key,
                            text=choice.text.strip(),
                            finish_reason=choice.finish_reason or "",
                            input_tokens=len(output.prompt_token_ids or []),
                            output_tokens=len(choice.token_ids or []),
                            latency_s=elapsed,
                        )
                    )

    def close(self) -> None:
        self._engine = None
