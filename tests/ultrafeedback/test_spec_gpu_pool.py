"""The GPU pool's spec keys: validate refuses inconsistent settings with one line naming the key;
engine options do not change the spec hash (they say how a model runs, not what it answers)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.ultrafeedback.test_spec_checks import base, refused
from ultrafeedback.spec import SpecError, validate_dict

OPEN = {"id": "open", "backend": "vllm", "model": "org/open-7b"}


def with_open(**execution: Any) -> dict[str, Any]:
    data = base(execution=execution)
    data["models"] = [*data["models"][:3], dict(OPEN)]
    return data


def test_a_gpu_pool_with_vllm_models_is_valid():
    spec = validate_dict(with_open(pools={"gpu": "gpu"}, gpu_job_size=100))
    assert spec.execution.pools.gpu == "gpu" and spec.execution.gpu_job_size == 100
    assert spec.execution.gpu_deployment == "gpu-job/gpu-job"


def test_a_gpu_pool_without_vllm_models_is_refused():
    lines = refused(base(execution={"pools": {"gpu": "gpu"}}))
    assert lines == [
        "execution.pools.gpu=gpu: GPU jobs run the models with backend vllm, but the pool has none "
        "(drop execution.pools.gpu or add a backend: vllm model)"
    ]


def test_a_deployment_name_without_its_flow_is_refused():
    (line,) = refused(with_open(pools={"gpu": "gpu"}, gpu_deployment="gpu-job"))
    assert line.startswith("execution.gpu_deployment=gpu-job: a deployment is named flow/deployment")


def test_engine_options_on_another_backend_are_refused():
    data = base()
    data["models"][0]["engine"] = {"tensor_parallel_size": 2}
    (line,) = refused(data)
    assert line.startswith("models[0] (m0).engine, models[0] (m0).backend=embedded: engine options")


@pytest.mark.parametrize("key, value", [("gpu_job_size", 0), ("gpu_batch_size", 0), ("gpu_job_stale_s", 0)])
def test_sizes_and_timeouts_must_be_positive(key: str, value: Any):
    with pytest.raises(SpecError, match=f"execution.{key}"):
        validate_dict(with_open(**{key: value}))


def test_engine_options_are_vllm_kwargs_and_not_in_the_spec_hash():
    plain = validate_dict(with_open())
    data = with_open()
    data["models"][3]["engine"] = {"tensor_parallel_size": 4, "max_model_len": 4096}
    tuned = validate_dict(data)
    assert tuned.model_entry("open").engine.llm_kwargs() == {"tensor_parallel_size": 4, "max_model_len": 4096}
    assert plain.model_entry("open").engine.llm_kwargs() == {"tensor_parallel_size": 1}
    assert tuned.spec_hash() == plain.spec_hash()
