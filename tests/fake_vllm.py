"""A stand-in for ``vllm.LLM`` where no GPU is (``$ULTRAFEEDBACK_VLLM_ENGINE=tests.fake_vllm:FakeLLM``).

Answers are a deterministic function of the model and the input (chat messages or prompt), so a
build through GPU jobs and a build in one process give the same completions. Imports nothing but
the standard library: it runs in the GPU worker's engine environment, where Prefect is not
importable. ``$UF_FAKE_VLLM_LOG``: a JSON line per generated input (pid, model, input digest), the
record of what the engine was asked; ``$UF_FAKE_VLLM_DELAY_S``: seconds per input (a slow GPU).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from types import SimpleNamespace
from typing import Any


def digest(model: str, item: Any) -> str:
    """The log's name for one input to one model (the test computes it from the job files)."""
    return hashlib.sha256(json.dumps([model, item], sort_keys=True).encode()).hexdigest()[:16]


class SamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class FakeLLM:
    SamplingParams = SamplingParams

    def __init__(self, model: str, **engine_kwargs: Any) -> None:
        self.model = model
        self.engine_kwargs = engine_kwargs

    def _run(self, items: list[Any], params: SamplingParams) -> list[Any]:
        outputs = []
        for item in items:
            time.sleep(float(os.environ.get("UF_FAKE_VLLM_DELAY_S") or 0))
            key = digest(self.model, item)
            text = f"[{self.model} tp={self.engine_kwargs.get('tensor_parallel_size', 1)}] answer {key}"
            outputs.append(
                SimpleNamespace(
                    prompt_token_ids=list(range(len(json.dumps(item)) // 4)),
                    outputs=[SimpleNamespace(text=text, finish_reason="stop", token_ids=list(range(6)))],
                )
            )
            log = os.environ.get("UF_FAKE_VLLM_LOG")
            if log:
                with open(log, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps({"pid": os.getpid(), "model": self.model, "input": key}) + "\n")
        return outputs

    def chat(self, messages: list[list[dict[str, str]]], params: SamplingParams, use_tqdm: bool = False) -> list[Any]:
        return self._run(messages, params)

    def generate(self, prompts: list[str], params: SamplingParams, use_tqdm: bool = False) -> list[Any]:
        return self._run(prompts, params)
