"""deployments/prefect.yaml: every deployment runs the policy-checked entry flow, and its parameters
pass the default deployment policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ultrafeedback.deployment_policy import DeploymentPolicy

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENTS = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_entrypoint_and_parameters(deployment, monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(REPO)
    assert deployment["entrypoint"] == "flows/deployment.py:build"  # not the CLI's flow: the UI is not trusted
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    assert flow.name == "build"
    params = flow.validate_parameters(deployment["parameters"])
    assert params["overrides"] == []
    # the spec it names is valid, and its sources and store are under the default roots
    DeploymentPolicy().resolve(params["spec_path"], params["overrides"], cwd=REPO)


def test_flow_parameters_are_typed():
    from prefect.flows import load_flow_from_entrypoint

    schema = load_flow_from_entrypoint(str(REPO / "flows" / "deployment.py") + ":build").parameters
    props = schema.properties
    assert props["spec_path"]["type"] == "string"
    assert props["overrides"]["anyOf"][0] == {"items": {"type": "string"}, "type": "array"}
