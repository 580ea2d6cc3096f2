"""The vLLM adapter against a fake engine (vLLM cannot be installed on these machines)."""

from __future__ import annotations

from types import SimpleNamespace

from ultrafeedback.infra.llm.base import LLMRequest
from ultrafeedback.infra.llm.vllm_backend import VLLMBackend, sampling_kwargs


class FakeParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeEngine:
    SamplingParams = FakeParams

    def __init__(self, fail: bool = False):
        self.calls: list[tuple[str, int, dict]] = []
        self.fail = fail

    def _out(self, text: str):
        return SimpleNamespace(
            prompt_token_ids=[1, 2, 3],
            outputs=[SimpleNamespace(text=f" {text} ", finish_reason="stop", token_ids=[7, 8])],
        )

    def chat(self, conversations, params, use_tqdm=False):
        if self.fail:
            raise RuntimeError("CUDA out of memory")
        self.calls.append(("chat", len(conversations), params.kwargs))
        return [self._out(c[-1]["content"].upper()) for c in conversations]

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append(("generate", len(prompts), params.kwargs))
        return [self._out(p[::-1]) for p in prompts]


def test_batches_by_sampling_and_maps_outputs():
    engine = FakeEngine()
    backend = VLLMBackend("m", engine=engine)
    requests = [
        LLMRequest(key="a", model="m", messages=[{"role": "user", "content": "hi"}], sampling={"temperature": 1.0}),
        LLMRequest(key="b", model="m", messages=[{"role": "user", "content": "yo"}], sampling={"temperature": 1.0}),
        LLMRequest(key="c", model="m", prompt="abc", sampling={"temperature": 0.0, "stop": ["</s>"]}),
    ]
    results = {}
    backend.run(requests, lambda r: results.__setitem__(r.key, r))
    assert results["a"].text == "HI" and results["b"].text == "YO" and results["c"].text == "cba"
    assert results["a"].input_tokens == 3 and results["a"].output_tokens == 2
    assert sorted(call[:2] for call in engine.calls) == [("chat", 2), ("generate", 1)]
    assert ("generate", 1, {"temperature": 0.0, "stop": ["</s>"]}) in engine.calls


def test_engine_failure_becomes_error_results():
    backend = VLLMBackend("m", engine=FakeEngine(fail=True))
    results = []
    backend.run([LLMRequest(key="a", model="m", messages=[{"role": "user", "content": "x"}])], results.append)
    assert results[0].reason == "backend_error" and "out of memory" in results[0].error


def test_sampling_kwargs_drop_unset():
    assert sampling_kwargs({"temperature": 1, "top_p": None, "x": 1}) == {"temperature": 1}
