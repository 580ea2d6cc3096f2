"""ultrafeedback.deployment_policy: what a deployment run may change (overrides and spec_data alike),
where each endpoint's key may go, and the roots its sources, store and releases must stay under."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.sim_spec import sim_endpoint, sim_models
from ultrafeedback.deployment_policy import (
    DEFAULT_ALLOWED_OVERRIDES,
    DeploymentPolicy,
    DeploymentRefused,
)

FILE_URL = "http://127.0.0.1:8000/v1"
KEY_ENV = "UF_TEST_POLICY_KEY"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A worker's working directory: ``deployments/specs/spec.yaml`` reading ``deployments/data/``;
    a secret file outside it."""
    work = tmp_path / "work"
    (work / "deployments" / "specs").mkdir(parents=True)
    (work / "deployments" / "data").mkdir()
    (work / "deployments" / "data" / "a.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.jsonl").write_text(json.dumps({"prompt": "sk-secret"}) + "\n")
    write_spec(work)
    return work


def spec_dict(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "p",
        "store": "file://./.ultrafeedback",
        "sources": [{"name": "a", "loader": "jsonl", "path": "../data/a.jsonl", "fields": {"instruction": "prompt"}}],
        "endpoints": {"sim": sim_endpoint(FILE_URL, KEY_ENV), "open": {"base_url": "http://127.0.0.1:8001/v1"}},
        "models": sim_models(2),
        "completions_per_instruction": 2,
    }
    data.update(changes)
    return data


def write_spec(work: Path, **changes: Any) -> str:
    path = work / "deployments" / "specs" / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict(**changes), sort_keys=False))
    return "deployments/specs/spec.yaml"


def resolve(work: Path, overrides: list[str] | None = None, spec_data: Any = None, **policy: Any):
    return DeploymentPolicy(**policy).resolve("deployments/specs/spec.yaml", overrides, spec_data, cwd=work)


# --------------------------------------------------------------------------- keys a run may change


def test_the_default_allow_list_is_sizes_quotas_and_seeds(checkout):
    spec = resolve(checkout, ["sources.a.quota=1", "seed=9", "completions_per_instruction=1", "execution.shard_size=3"])
    assert (spec.sources[0].quota, spec.seed, spec.completions_per_instruction) == (1, 9, 1)
    assert spec.execution.shard_size == 3
    assert "store" not in DEFAULT_ALLOWED_OVERRIDES and not any(
        p.startswith(("endpoints", "sources.*.path")) for p in DEFAULT_ALLOWED_OVERRIDES
    )


def test_an_override_of_a_key_not_allowed_is_refused_naming_it(checkout):
    with pytest.raises(
        DeploymentRefused, match=r"overrides\[1\] \(endpoints.sim.base_url\) changes endpoints.sim.base_url"
    ):
        resolve(checkout, ["seed=1", "endpoints.sim.base_url=http://127.0.0.1:9/v1"])


def test_an_override_naming_another_key_variable_is_refused(checkout):
    with pytest.raises(DeploymentRefused, match="changes endpoints.sim.api_key_env"):
        resolve(checkout, ["endpoints.sim.api_key_env=AWS_SECRET_ACCESS_KEY"])


def test_an_override_replacing_a_whole_item_is_judged_key_by_key(checkout):
    source = {"name": "a", "loader": "jsonl", "path": "/proc/self/environ", "fields": {"instruction": "prompt"}}
    with pytest.raises(DeploymentRefused, match=r"changes sources.a.path, which"):
        resolve(checkout, [f"sources.0={json.dumps(source)}"])


def test_an_override_to_the_files_own_value_changes_nothing(checkout):
    spec = resolve(checkout, [f"endpoints.sim.base_url={FILE_URL}"])
    assert spec.endpoints["sim"].base_url == FILE_URL


def test_the_worker_can_allow_more_keys_by_pattern(checkout):
    allowed = ("models.*.sampling.temperature", "gates.**")
    spec = resolve(
        checkout,
        ["models.sim-1.sampling.temperature=0.5", "gates.min_pairs=0"],
        allowed_overrides=allowed,
    )
    assert spec.models[1].sampling.temperature == 0.5 and spec.gates.min_pairs == 0
    with pytest.raises(DeploymentRefused, match="changes seed"):
        resolve(checkout, ["seed=3"], allowed_overrides=allowed)  # the list replaces the default


def test_a_pattern_may_name_an_id_with_dots(checkout):
    write_spec(checkout, models=[{**m, "id": f"m-t0.{i}"} for i, m in enumerate(sim_models(2))])
    spec = resolve(checkout, ["models.m-t0.1.sampling.seed=4"], allowed_overrides=("models.m-t0.1.sampling.seed",))
    assert spec.models[1].sampling.seed == 4
    with pytest.raises(DeploymentRefused, match=r"changes m.*t0\.0"):
        resolve(checkout, ["models.m-t0.0.sampling.seed=4"], allowed_overrides=("models.m-t0.1.sampling.seed",))


def test_spec_data_may_differ_from_the_file_in_allowed_keys(checkout):
    data = spec_dict(seed=11)
    data["sources"][0]["quota"] = 1
    spec = resolve(checkout, spec_data=data)
    assert (spec.seed, spec.sources[0].quota) == (11, 1)
    assert spec.resolve_path("../data/a.jsonl").endswith("deployments/data/a.jsonl")  # relative to the file


def test_spec_data_changing_a_key_not_allowed_is_refused_naming_it(checkout):
    data = spec_dict()
    data["endpoints"]["sim"]["base_url"] = "http://127.0.0.1:9/v1"
    with pytest.raises(DeploymentRefused, match="spec_data changes endpoints.sim.base_url"):
        resolve(checkout, spec_data=data)


def test_spec_data_adding_an_endpoint_is_refused(checkout):
    data = spec_dict()
    data["endpoints"]["evil"] = sim_endpoint("http://127.0.0.1:9/v1", "HOME")
    with pytest.raises(DeploymentRefused, match="spec_data changes endpoints.evil.api_key_env, endpoints.evil.backoff"):
        resolve(checkout, spec_data=data)


# --------------------------------------------------------------------------- API keys


def test_an_allowed_base_url_change_still_cannot_take_the_key_to_another_host(checkout):
    with pytest.raises(
        DeploymentRefused, match=r"its key goes only to http://127.0.0.1:8000 .*not to http://127.0.0.1:9"
    ):
        resolve(checkout, ["endpoints.sim.base_url=http://127.0.0.1:9/v1"], allowed_overrides=("endpoints.*.base_url",))


def test_an_allowed_base_url_change_on_the_same_origin_keeps_the_key(checkout):
    spec = resolve(checkout, ["endpoints.sim.base_url=http://127.0.0.1:8000/v2"], allowed_overrides=("endpoints.**",))
    assert spec.key_refusal("sim") is None


def test_an_endpoint_without_a_key_may_move_when_allowed(checkout):
    spec = resolve(checkout, ["endpoints.open.base_url=http://10.0.0.7:8000/v1"], allowed_overrides=("endpoints.**",))
    assert spec.endpoints["open"].base_url == "http://10.0.0.7:8000/v1"


def test_an_endpoint_the_file_gives_no_key_cannot_get_one(checkout):
    with pytest.raises(DeploymentRefused, match="endpoint 'open' has no key in the spec file"):
        resolve(checkout, [f"endpoints.open.api_key_env={KEY_ENV}"], allowed_overrides=("endpoints.**",))


# --------------------------------------------------------------------------- roots


def test_a_spec_path_outside_the_input_roots_is_refused(checkout, tmp_path):
    (tmp_path / "outside" / "spec.yaml").write_text(yaml.safe_dump(spec_dict()))
    with pytest.raises(DeploymentRefused, match=r"spec_path: .*outside/spec.yaml is not under the worker's roots"):
        DeploymentPolicy().resolve("../outside/spec.yaml", cwd=checkout)


def test_a_source_in_proc_is_refused_even_from_the_spec_file(checkout):
    write_spec(checkout, sources=[{"name": "a", "loader": "jsonl", "path": "/proc/self/environ"}])
    with pytest.raises(
        DeploymentRefused, match=r"sources\[0\] \(a\).path: /proc/self/environ \(that is /proc/\d+/environ\) is not"
    ):
        resolve(checkout)


def test_a_source_escaping_its_root_with_dotdot_is_refused(checkout):
    write_spec(checkout, sources=[{"name": "a", "loader": "jsonl", "path": "../../../outside/secret.jsonl"}])
    with pytest.raises(DeploymentRefused, match=r"sources\[0\] \(a\).path: .*/outside/secret.jsonl is not under"):
        resolve(checkout)


@pytest.mark.parametrize("path", ["../data/b.jsonl", "../data", "../data/*.jsonl"], ids=["file", "folder", "glob"])
def test_a_source_reaching_out_of_the_root_through_a_symlink_is_refused(checkout, tmp_path, path):
    """The link itself, a folder holding it, a glob matching it: each is resolved before the check."""
    (checkout / "deployments" / "data" / "b.jsonl").symlink_to(tmp_path / "outside" / "secret.jsonl")
    write_spec(checkout, sources=[{"name": "a", "loader": "jsonl", "path": path}])
    with pytest.raises(DeploymentRefused, match="outside/secret.jsonl is not under"):
        resolve(checkout)


def test_a_url_source_must_be_under_a_url_root(checkout):
    write_spec(checkout, sources=[{"name": "a", "loader": "jsonl", "path": "http://169.254.169.254/latest/meta-data"}])
    with pytest.raises(DeploymentRefused, match="http://169.254.169.254/latest/meta-data is not under"):
        resolve(checkout)


def test_a_hub_id_source_is_not_a_path(checkout):
    write_spec(checkout, sources=[{"name": "a", "loader": "hf", "path": "truthfulqa/truthful_qa"}])
    assert resolve(checkout).sources[0].path == "truthfulqa/truthful_qa"


def test_a_hub_id_shadowed_by_a_local_folder_is_a_path(checkout, tmp_path):
    write_spec(checkout, sources=[{"name": "a", "loader": "hf", "path": "outside"}])
    os.symlink(tmp_path / "outside", checkout / "deployments" / "specs" / "outside")
    with pytest.raises(DeploymentRefused, match="is not under"):
        resolve(checkout)


def test_a_decontamination_list_outside_the_roots_is_refused(checkout):
    write_spec(checkout, ingest={"decontaminate": ["/proc/self/environ"]})
    with pytest.raises(
        DeploymentRefused, match=r"ingest.decontaminate\[0\]: /proc/self/environ \(that is /proc/\d+/environ\) is"
    ):
        resolve(checkout)


def test_a_chat_template_outside_the_roots_is_refused_and_one_inside_passes(checkout, tmp_path):
    (tmp_path / "outside" / "t.jinja").write_text("{{ messages[-1].content }}")
    (checkout / "deployments" / "specs" / "t.jinja").write_text("{{ messages[-1].content }}")
    models = sim_models(2)
    write_spec(checkout, models=[{**models[0], "chat_template": "t.jinja"}, {**models[1], "chat_template": "server"}])
    assert resolve(checkout).models[0].chat_template == "t.jinja"
    write_spec(checkout, models=[{**models[0], "chat_template": str(tmp_path / "outside" / "t.jinja")}, models[1]])
    with pytest.raises(DeploymentRefused, match=r"models\[0\] \(sim-0\)\.chat_template: .*outside/t\.jinja is not"):
        resolve(checkout)


def test_the_store_stays_under_the_output_roots(checkout):
    assert resolve(checkout).store == "file://./.ultrafeedback"
    write_spec(checkout, store="file://./.ultrafeedback/../deployments")
    with pytest.raises(
        DeploymentRefused, match=r"store: .*work/deployments is not under the worker's roots \(.ultrafeedback"
    ):
        resolve(checkout)


def test_a_store_override_goes_through_both_rules(checkout, tmp_path):
    with pytest.raises(DeploymentRefused, match="changes store"):
        resolve(checkout, [f"store={tmp_path / 'elsewhere'}"])
    with pytest.raises(DeploymentRefused, match="store: .*elsewhere is not under"):
        resolve(checkout, [f"store={tmp_path / 'elsewhere'}"], allowed_overrides=("store",))
    spec = resolve(
        checkout, [f"store={tmp_path / 'elsewhere'}"], allowed_overrides=("store",), output_roots=(str(tmp_path),)
    )
    assert spec.store == str(tmp_path / "elsewhere")


def test_publish_folders_stay_under_the_output_roots(checkout):
    roots = {"output_roots": (".ultrafeedback", "s3://bucket/releases")}
    for uri in ("s3://bucket/releases/x", ".ultrafeedback/out"):
        write_spec(checkout, publish={"targets": [{"kind": "store"}, {"kind": "local", "uri": uri}]})
        resolve(checkout, **roots)
    for uri in (
        "s3://bucket/releases/../other",
        "s3://bucket/releases/%2E%2E/other",
        "s3://bucket/releases-evil",
        "/tmp/releases",
        "simplecache::s3://bucket/releases",
    ):
        write_spec(checkout, publish={"targets": [{"kind": "s3", "uri": uri}]})
        with pytest.raises(DeploymentRefused, match=r"publish.targets\[0\].uri: .* is not under"):
            resolve(checkout, **roots)


# --------------------------------------------------------------------------- the worker's settings


def test_the_policy_reads_the_workers_environment():
    assert DeploymentPolicy.from_env({}) == DeploymentPolicy()
    policy = DeploymentPolicy.from_env(
        {
            "ULTRAFEEDBACK_ALLOWED_OVERRIDES": "seed, models.*.sampling.temperature",
            "ULTRAFEEDBACK_INPUT_ROOTS": "/data,s3://bucket/in",
            "ULTRAFEEDBACK_OUTPUT_ROOTS": "",
        }
    )
    assert policy.allowed_overrides == ("seed", "models.*.sampling.temperature")
    assert policy.input_roots == ("/data", "s3://bucket/in") and policy.output_roots == ()
