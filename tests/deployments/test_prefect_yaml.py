"""deployments/prefect.yaml: every deployment runs the policy-checked entry flow, and its parameters
pass the default deployment policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ultrafeedback.deployment_policy import DeploymentPolicy

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENTS = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"]
ENTRYPOINTS = {"demo": "build", "ultrafeedback": "build", "refresh": "refresh", "retry-failed": "retry_failed"}


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_entrypoint_and_parameters(deployment, monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(REPO)
    # not the CLI's flow (flows/build.py): the UI is not trusted
    assert deployment["entrypoint"] == f"flows/deployment.py:{ENTRYPOINTS[deployment['name']]}"
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


def test_every_deployment_is_listed():
    assert sorted(d["name"] for d in DEPLOYMENTS) == sorted(ENTRYPOINTS)


def test_refresh_has_a_daily_schedule_that_is_off_until_turned_on():
    (refresh,) = [d for d in DEPLOYMENTS if d["name"] == "refresh"]
    (schedule,) = refresh["schedules"]
    assert schedule == {"cron": "0 3 * * *", "timezone": "UTC", "active": False}
    from prefect.client.schemas.schedules import CronSchedule

    CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # a cron Prefect accepts


def test_retry_failed_takes_the_reparse_switch():
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(str(REPO / "flows" / "deployment.py") + ":retry_failed")
    assert flow.parameters.properties["reparse"]["type"] == "boolean"
    assert flow.validate_parameters({"spec_path": "x.yaml", "reparse": True})["reparse"] is True
