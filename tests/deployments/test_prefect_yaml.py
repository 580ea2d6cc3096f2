"""deployments/prefect.yaml: every deployment's entrypoint loads and its parameters validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ultrafeedback.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENTS = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_entrypoint_and_parameters(deployment, monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(REPO)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    assert flow.name == "build"
    params = flow.validate_parameters(deployment["parameters"])
    assert params["overrides"] == []
    load_spec(REPO / params["spec_path"], params["overrides"])  # the spec it names is valid


def test_flow_parameters_are_typed():
    from prefect.flows import load_flow_from_entrypoint

    schema = load_flow_from_entrypoint(str(REPO / "flows" / "build.py") + ":build").parameters
    props = schema.properties
    assert props["spec_path"]["type"] == "string"
    assert props["overrides"]["anyOf"][0] == {"items": {"type": "string"}, "type": "array"}
