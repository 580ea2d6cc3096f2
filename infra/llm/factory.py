"""Build the backend for a pool entry or for the judge from the spec.

Backends are cached per process and per configuration, so every shard running in this process
shares one loaded CPU model; HTTP backends carry their endpoint's process-wide budgets (the
``RateLimiter`` and the ``InFlightLimit`` of ``infra.llm.limiter``), which stay shared even when a
changed endpoint configuration makes a new backend.

In a deployment run the spec carries the endpoints of its spec file (``Spec.pin_endpoints``): an
endpoint whose ``base_url`` or key source differs from the file's gets no backend, so its key is
never read, let alone sent to a host the file does not name for it.

With ``execution.budget_dir`` (or ``$ULTRAFEEDBACK_BUDGET_DIR``) an endpoint's budgets are shared by
every process of the machine naming that folder (``infra.llm.shared_budget``); with ``prefect``, by
every process on every machine using the same Prefect API (``infra.llm.prefect_budget``).
"""

from __future__ import annotations

import os
import threading

from ultrafeedback.infra.llm.base import Backend
from ultrafeedback.spec import ModelEntry, Spec

_CACHE: dict[tuple[str, ...], Backend] = {}
_LOCK = threading.Lock()


class UntrustedEndpointError(RuntimeError):
    """A deployment run's endpoint would send its key somewhere its spec file does not."""


def _endpoint_backend(spec: Spec, endpoint_name: str) -> Backend:
    from ultrafeedback.infra.llm.openai_compat import backend_from_endpoint

    refusal = spec.key_refusal(endpoint_name)
    if refusal is not None:
        raise UntrustedEndpointError(refusal)
    endpoint = spec.endpoints[endpoint_name]
    budget_dir = spec.execution.budget_dir or os.environ.get("ULTRAFEEDBACK_BUDGET_DIR") or None
    cache_key = ("openai", endpoint_name, endpoint.model_dump_json(), budget_dir or "")
    with _LOCK:
        if cache_key not in _CACHE:
            if endpoint.batch_api:  # the provider's Batch API (infra/llm/batch.py)
                from ultrafeedback.infra.llm.batch import BatchBackend
                from ultrafeedback.infra.llm.openai_compat import _api_key

                _CACHE[cache_key] = BatchBackend(endpoint_name, endpoint, _api_key(endpoint_name, endpoint))
            else:
                # attaches get_limiter(endpoint_name, ...) and get_in_flight(endpoint_name, max_in_flight)
                _CACHE[cache_key] = backend_from_endpoint(endpoint_name, endpoint, budget_dir)
        return _CACHE[cache_key]


def model_backend(spec: Spec, entry: ModelEntry) -> Backend:
    """The backend that serves one pool entry."""
    if entry.backend == "openai":
        assert entry.endpoint is not None  # validated by the spec
        return _endpoint_backend(spec, entry.endpoint)
    if entry.backend == "embedded":
        from ultrafeedback.infra.llm.embedded import EmbeddedBackend

        cache_key = ("embedded", entry.path or "")
        with _LOCK:
            if cache_key not in _CACHE:
                _CACHE[cache_key] = EmbeddedBackend(path=entry.path)
            return _CACHE[cache_key]
    if entry.backend == "vllm":
        from ultrafeedback.infra.llm.vllm_backend import VLLMBackend

        options = entry.engine.llm_kwargs()  # tensor_parallel_size, ...
        cache_key = ("vllm", entry.path or entry.served_name, repr(sorted(options.items())))
        with _LOCK:
            if cache_key not in _CACHE:
                _CACHE[cache_key] = VLLMBackend(model=entry.path or entry.served_name, engine_kwargs=options)
            return _CACHE[cache_key]
    raise ValueError(f"model {entry.id!r}: unknown backend {entry.backend!r}")


def judge_backend(spec: Spec) -> Backend:
    """The judge's endpoint backend (the heuristic judge has none)."""
    if spec.judge.backend != "openai" or spec.judge.endpoint is None:
        raise ValueError("the heuristic judge is not an LLM backend")
    return _endpoint_backend(spec, spec.judge.endpoint)


def close_all() -> None:
    """Close every cached backend (end of a process)."""
    with _LOCK:
        for backend in _CACHE.values():
            backend.close()
        _CACHE.clear()


def check_backends(spec: Spec) -> None:
    """Build the endpoint backends the spec uses, so a missing API key fails before any work.

    The embedded and vLLM backends are not built here: loading weights is the expensive part of
    their first use, not a configuration check.
    """
    names = {m.endpoint for m in spec.models if m.backend == "openai" and m.endpoint}
    if spec.judge.backend == "openai" and spec.judge.endpoint:
        names.add(spec.judge.endpoint)
    for name in sorted(names):
        _endpoint_backend(spec, name)
