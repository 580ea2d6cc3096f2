from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ultrafeedback.spec import SpecError, apply_override, load_spec, parse_override

REPO = Path(__file__).resolve().parents[2]


def minimal() -> dict:
    return {
        "name": "t",
        "sources": [{"name": "s", "loader": "jsonl", "path": "data.jsonl"}],
        "endpoints": {"api": {"base_url": "http://127.0.0.1:1/v1"}},
        "models": [
            {"id": "a", "backend": "openai", "endpoint": "api"},
            {"id": "b", "backend": "openai", "endpoint": "api"},
        ],
        "completions_per_instruction": 2,
    }


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_minimal_spec_loads_with_defaults(tmp_path):
    spec = load_spec(write(tmp_path, minimal()))
    assert spec.judge.aspects == ["instruction_following", "honesty", "truthfulness", "helpfulness"]
    assert spec.judge.sampling.top_p == 0.6
    assert spec.resolve_path("data.jsonl") == str(tmp_path / "data.jsonl")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(SpecError, match="nope.yaml: spec file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="bad.yaml: not valid YAML"):
        load_spec(path)


def test_unknown_key_names_its_path(tmp_path):
    data = minimal()
    data["models"][1]["temprature"] = 0.5
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, data))
    assert "models[1] (b).temprature: unknown key" in str(err.value)


def test_bad_value_names_its_path(tmp_path):
    data = minimal()
    data["sources"][0]["quota"] = -3
    with pytest.raises(SpecError, match=r"sources\[0\] \(s\)\.quota"):
        load_spec(write(tmp_path, data))


def test_unknown_endpoint_reference(tmp_path):
    data = minimal()
    data["models"][0]["endpoint"] = "missing"
    with pytest.raises(SpecError, match=r"models\[0\]\.endpoint: 'missing' is not in endpoints"):
        load_spec(write(tmp_path, data))


def test_k_larger_than_pool(tmp_path):
    data = minimal()
    data["completions_per_instruction"] = 3
    with pytest.raises(SpecError, match="completions_per_instruction=3, models: 3 distinct models"):
        load_spec(write(tmp_path, data))


def test_unknown_principle(tmp_path):
    data = minimal()
    data["sources"][0]["principles"] = {"kindness": 1.0}
    with pytest.raises(SpecError, match="unknown principle 'kindness'"):
        load_spec(write(tmp_path, data))


def test_override_by_dotted_path_and_list_id(tmp_path):
    spec = load_spec(
        write(tmp_path, minimal()),
        [
            "endpoints.api.base_url=http://127.0.0.1:9/v1",
            "models.b.sampling.temperature=0.3",
            "models.0.model=gpt-x",
            "seed=11",
        ],
    )
    assert spec.endpoints["api"].base_url == "http://127.0.0.1:9/v1"
    assert spec.model_entry("b").sampling.temperature == 0.3
    assert spec.model_entry("a").model == "gpt-x"
    assert spec.seed == 11


def test_override_errors_name_the_key(tmp_path):
    path = write(tmp_path, minimal())
    with pytest.raises(SpecError, match="expected dotted.key=value"):
        load_spec(path, ["seed"])
    with pytest.raises(SpecError, match="no list item with id or name 'zzz'"):
        load_spec(path, ["models.zzz.model=x"])
    with pytest.raises(SpecError, match=r"seed: Input should be a valid integer"):
        load_spec(path, ["seed=abc"])


def test_apply_override_creates_mappings():
    data: dict = {}
    apply_override(data, *parse_override("a.b.c=[1, 2]"))
    assert data == {"a": {"b": {"c": [1, 2]}}}


def test_spec_hash_ignores_store_and_execution(tmp_path):
    path = write(tmp_path, minimal())
    base = load_spec(path).spec_hash()
    assert load_spec(path, ["store=s3://bucket/x", "execution.shard_size=7"]).spec_hash() == base
    assert load_spec(path, ["seed=5"]).spec_hash() != base


@pytest.mark.parametrize("name", ["demo.yaml", "ultrafeedback.yaml"])
def test_shipped_specs_validate(name):
    spec = load_spec(REPO / "deployments" / "specs" / name)
    assert spec.completions_per_instruction <= len(spec.models)


def test_spec_hash_ignores_endpoints_prices_and_retries(tmp_path):
    path = write(tmp_path, minimal())
    base = load_spec(path).spec_hash()
    same = load_spec(
        path,
        [
            "endpoints.api.base_url=http://127.0.0.1:2/v1",
            "endpoints.api.max_in_flight=3",
            "models.a.price.input_per_mtok=5",
            "judge.parse_retries=9",
            "gates.min_pairs=0",
        ],
    )
    assert same.spec_hash() == base
    assert load_spec(path, ["models.a.model=other"]).spec_hash() != base


def test_model_judge_needs_a_model(tmp_path):
    data = minimal()
    data["judge"] = {"backend": "openai", "endpoint": "api"}
    with pytest.raises(SpecError, match="judge: judge backend 'openai' needs a `model`"):
        load_spec(write(tmp_path, data))


def test_override_list_item_whose_id_has_dots(tmp_path):
    data = minimal()
    data["models"][1]["id"] = "small-t0.7"
    spec = load_spec(write(tmp_path, data), ["models.small-t0.7.sampling.temperature=0.2"])
    assert spec.model_entry("small-t0.7").sampling.temperature == 0.2


def test_batch_api_and_its_limits_are_accepted(tmp_path):
    spec = load_spec(
        write(tmp_path, minimal()),
        ["endpoints.api.batch_api=true", "endpoints.api.batch_max_requests=10", "execution.max_cost_usd=2.5"],
    )
    assert spec.endpoints["api"].batch_api and spec.endpoints["api"].batch_max_requests == 10
    assert spec.execution.max_cost_usd == 2.5
    with pytest.raises(SpecError, match=r"endpoints\.api\.batch_discount"):
        load_spec(write(tmp_path, minimal()), ["endpoints.api.batch_discount=1.5"])


def test_an_endpoint_may_list_replicas(tmp_path):
    data = minimal()
    data["endpoints"]["api"] = {"base_urls": ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"]}
    spec = load_spec(write(tmp_path, data))
    assert spec.endpoints["api"].urls == ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"]


@pytest.mark.parametrize(
    "endpoint",
    [{}, {"base_url": "http://a/v1", "base_urls": ["http://b/v1"]}],
    ids=["neither", "both"],
)
def test_an_endpoint_needs_base_url_or_base_urls(tmp_path, endpoint):
    data = minimal()
    data["endpoints"]["api"] = endpoint
    with pytest.raises(SpecError, match="endpoints.api: .*give `base_url` .* or `base_urls`"):
        load_spec(write(tmp_path, data))


def test_the_batch_api_takes_one_url_not_replicas(tmp_path):
    data = minimal()
    data["endpoints"]["api"] = {"base_urls": ["http://a/v1", "http://b/v1"], "batch_api": True}
    with pytest.raises(SpecError, match="batch_api goes to one provider"):
        load_spec(write(tmp_path, data))
