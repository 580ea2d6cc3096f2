"""infra.llm.factory: one backend per endpoint configuration, shared endpoint budgets, the judge's
backend, the up-front API key check and unknown backends."""

from __future__ import annotations

from typing import Any

import pytest

import ultrafeedback.infra.llm.openai_compat as openai_compat
from tests.e2e.sim_spec import SIM_JUDGE, sim_endpoint, sim_models
from ultrafeedback.infra.llm import factory
from ultrafeedback.infra.llm.limiter import get_in_flight, get_limiter, reset_limiters
from ultrafeedback.infra.llm.openai_compat import MissingAPIKeyError, OpenAICompatBackend
from ultrafeedback.spec import Endpoint, ModelEntry, Spec, validate_dict

KEY_ENV = "UF_TEST_FACTORY_KEY"
JUDGE_KEY_ENV = "UF_TEST_FACTORY_JUDGE_KEY"
URL = "http://127.0.0.1:9/v1"  # never contacted: building a backend sends nothing


def make_spec(
    models: list[dict[str, Any]] | None = None,
    judge: dict[str, Any] | None = None,
    **endpoint: Any,
) -> Spec:
    data: dict[str, Any] = {
        "name": "f",
        "sources": [{"name": "s", "loader": "jsonl", "path": "x.jsonl"}],
        "endpoints": {
            "sim": {**sim_endpoint(URL, KEY_ENV), **endpoint},
            "judge-api": sim_endpoint(URL, JUDGE_KEY_ENV),
        },
        "models": models if models is not None else sim_models(2),
        "completions_per_instruction": 1,
    }
    if judge is not None:
        data["judge"] = judge
    return validate_dict(data)


@pytest.fixture(autouse=True)
def fresh_factory(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-models")
    monkeypatch.setenv(JUDGE_KEY_ENV, "sk-judge")
    factory.close_all()
    reset_limiters()
    yield
    factory.close_all()
    reset_limiters()


@pytest.fixture
def built(monkeypatch) -> list[str]:
    """The endpoint names the factory builds a backend for, in order."""
    names: list[str] = []
    real = openai_compat.backend_from_endpoint

    def spy(name, endpoint, budget_dir=None):
        names.append(name)
        return real(name, endpoint, budget_dir)

    monkeypatch.setattr(openai_compat, "backend_from_endpoint", spy)
    return names


def test_models_on_one_endpoint_share_one_backend(built):
    spec = make_spec()
    first = factory.model_backend(spec, spec.models[0])
    assert isinstance(first, OpenAICompatBackend) and first.name == "sim"
    assert factory.model_backend(spec, spec.models[1]) is first
    assert factory.model_backend(make_spec(), spec.models[0]) is first  # an equal spec object: same config
    assert built == ["sim"]


def test_a_changed_endpoint_config_gives_a_new_backend_on_the_same_budgets():
    old_spec = make_spec()
    old = factory.model_backend(old_spec, old_spec.models[0])
    new_spec = make_spec(max_in_flight=3, requests_per_minute=120, timeout_s=7)
    new = factory.model_backend(new_spec, new_spec.models[0])
    assert new is not old and new.timeout_s == 7 and old.timeout_s == 5
    assert new.limiter is old.limiter and new.in_flight is old.in_flight
    # the shared objects are the endpoint's process-wide ones, reconfigured to the new spec
    assert new.limiter is get_limiter("sim", 120, None) and new.limiter.requests_per_minute == 120
    assert new.in_flight is get_in_flight("sim", 3) and new.in_flight.limit == 3


def test_different_endpoints_get_different_budgets():
    spec = make_spec(models=sim_models(1) + [{"id": "j", "backend": "openai", "endpoint": "judge-api", "model": "x"}])
    a, b = (factory.model_backend(spec, m) for m in spec.models)
    assert a is not b and a.limiter is not b.limiter and a.in_flight is not b.in_flight


def test_the_judge_on_a_model_endpoint_shares_its_backend():
    spec = make_spec(judge=SIM_JUDGE)
    assert factory.judge_backend(spec) is factory.model_backend(spec, spec.models[0])


def test_the_heuristic_judge_has_no_backend():
    spec = make_spec()
    assert spec.judge.backend == "heuristic"
    with pytest.raises(ValueError, match="heuristic judge is not an LLM backend"):
        factory.judge_backend(spec)


def test_check_backends_builds_each_endpoint_in_use_once(built):
    spec = make_spec(judge={**SIM_JUDGE, "endpoint": "judge-api"})
    factory.check_backends(spec)
    assert built == ["judge-api", "sim"]
    factory.model_backend(spec, spec.models[0])
    factory.judge_backend(spec)
    assert built == ["judge-api", "sim"]  # the checked backends are the ones the run then uses


def test_check_backends_names_the_missing_key_variable(monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(MissingAPIKeyError, match=f"endpoint 'sim' needs an API key: environment variable '{KEY_ENV}'"):
        factory.check_backends(make_spec())


def test_check_backends_checks_the_judge_endpoint_key(monkeypatch):
    monkeypatch.delenv(JUDGE_KEY_ENV)
    spec = make_spec(models=[{"id": "e", "backend": "embedded"}], judge={**SIM_JUDGE, "endpoint": "judge-api"})
    with pytest.raises(MissingAPIKeyError, match=JUDGE_KEY_ENV):
        factory.check_backends(spec)


def test_check_backends_builds_nothing_for_embedded_and_vllm_models(monkeypatch, built):
    import ultrafeedback.infra.llm.embedded
    import ultrafeedback.infra.llm.vllm_backend

    def refuse(*args, **kwargs):
        raise AssertionError("check_backends must not load a local model")

    monkeypatch.setattr(ultrafeedback.infra.llm.embedded, "EmbeddedBackend", refuse)
    monkeypatch.setattr(ultrafeedback.infra.llm.vllm_backend, "VLLMBackend", refuse)
    monkeypatch.delenv(KEY_ENV)  # the unused endpoint's key is not needed either
    spec = make_spec(models=[{"id": "e", "backend": "embedded"}, {"id": "v", "backend": "vllm", "model": "org/m"}])
    factory.check_backends(spec)
    assert built == []


def test_vllm_models_share_a_backend_per_served_model(monkeypatch):
    import ultrafeedback.infra.llm.vllm_backend

    class Engine:
        def __init__(self, model: str, engine_kwargs: dict) -> None:
            self.model = model
            self.engine_kwargs = engine_kwargs

        def close(self) -> None:
            pass

    monkeypatch.setattr(ultrafeedback.infra.llm.vllm_backend, "VLLMBackend", Engine)
    spec = make_spec(
        models=[
            {"id": "v1", "backend": "vllm", "model": "org/m"},
            {"id": "v2", "backend": "vllm", "model": "org/m"},
            {"id": "v3", "backend": "vllm", "model": "org/other"},
            {"id": "v4", "backend": "vllm", "model": "org/m", "engine": {"tensor_parallel_size": 2}},
        ]
    )
    v1, v2, v3, v4 = (factory.model_backend(spec, m) for m in spec.models)
    assert v1 is v2 and v3 is not v1 and (v1.model, v3.model) == ("org/m", "org/other")
    # the engine options (models[].engine) reach vllm.LLM; other options, another engine
    assert v4 is not v1 and v4.engine_kwargs == {"tensor_parallel_size": 2}
    assert v1.engine_kwargs == {"tensor_parallel_size": 1}


def test_an_unknown_backend_is_refused():
    entry = ModelEntry.model_construct(id="odd", backend="tgi", endpoint=None, model="m", path=None)
    with pytest.raises(ValueError, match="model 'odd': unknown backend 'tgi'"):
        factory.model_backend(make_spec(), entry)


# --------------------------------------------------------------------------- deployment runs: key pins


@pytest.fixture
def listeners():
    """Two loopback hosts that record Authorization headers: the spec file's and another one."""
    from tests.auth_listener import AuthListener

    with AuthListener() as trusted, AuthListener() as foreign:
        yield trusted, foreign


def pinned_spec(file_url: str, **changed: Any) -> Spec:
    """A spec whose endpoint ``sim`` is ``changed`` from the spec file's (at ``file_url``), pinned to the file."""
    spec = make_spec(**{"base_url": file_url, **changed})
    spec.pin_endpoints({"sim": Endpoint(**sim_endpoint(file_url, KEY_ENV))})
    return spec


def _one_request(backend: Any) -> list[Any]:
    from ultrafeedback.infra.llm.base import LLMRequest

    results: list[Any] = []
    backend.run([LLMRequest(key="k", model="m", messages=[{"role": "user", "content": "hi"}])], results.append)
    return results


def test_a_pinned_endpoint_sends_its_key_to_the_spec_files_host(listeners):
    trusted, foreign = listeners
    spec = pinned_spec(trusted.url, base_url=trusted.url + "/")  # the same origin
    assert [r.ok for r in _one_request(factory.model_backend(spec, spec.models[0]))] == [True]
    assert trusted.authorizations == ["Bearer sk-models"] and foreign.requests == []


def test_a_pinned_endpoint_on_another_host_gets_no_backend_and_sends_nothing(listeners):
    trusted, foreign = listeners
    spec = pinned_spec(trusted.url, base_url=foreign.url)  # 127.0.0.1 too, another port
    with pytest.raises(factory.UntrustedEndpointError, match="its key goes only to http://127.0.0.1:"):
        factory.model_backend(spec, spec.models[0])
    with pytest.raises(factory.UntrustedEndpointError):
        factory.check_backends(spec)
    assert foreign.requests == [] and trusted.requests == []


def test_a_pinned_endpoint_cannot_read_another_key():
    spec = pinned_spec(URL, api_key_env=JUDGE_KEY_ENV)
    with pytest.raises(factory.UntrustedEndpointError, match="cannot change where its key comes from"):
        factory.model_backend(spec, spec.models[0])


def test_an_endpoint_the_spec_file_gives_no_key_gets_none():
    spec = make_spec()
    spec.pin_endpoints({})  # the spec file has no endpoint `sim`
    with pytest.raises(factory.UntrustedEndpointError, match="has no key in the spec file"):
        factory.model_backend(spec, spec.models[0])


def test_every_replica_of_a_pinned_endpoint_must_be_on_the_spec_files_host(listeners):
    trusted, foreign = listeners
    spec = pinned_spec(trusted.url, base_url=None, base_urls=[trusted.url, foreign.url])
    with pytest.raises(factory.UntrustedEndpointError, match=f"not to http://127.0.0.1:{foreign.port}$"):
        factory.model_backend(spec, spec.models[0])
    assert foreign.requests == [] and trusted.requests == []


def test_replicas_on_the_spec_files_hosts_get_their_key(listeners):
    trusted, _ = listeners
    spec = pinned_spec(trusted.url, base_url=None, base_urls=[trusted.url, trusted.url + "/"])
    assert [r.ok for r in _one_request(factory.model_backend(spec, spec.models[0]))] == [True]
    assert trusted.authorizations == ["Bearer sk-models"]
