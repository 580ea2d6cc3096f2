"""The ``build`` flow as Prefect deployments run it (``deployments/prefect.yaml``).

The same build as ``flows.build.build``, except that its parameters come from whoever pressed "Run":
the worker's ``DeploymentPolicy`` (``ultrafeedback.deployment_policy``) decides which spec keys
they may change, where sources, store and releases may live, and where each endpoint's key may
go, and refuses the run before any work otherwise. The command line runs ``flows.build.build``,
whose user is trusted.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from ultrafeedback.deployment_policy import DeploymentPolicy
from ultrafeedback.flows.build import MAX_PARALLEL_SHARDS, run_build


@flow(name="build", task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_SHARDS))
def build(
    spec_path: str = "deployments/specs/demo.yaml",
    overrides: list[str] | None = None,
    spec_data: dict[str, Any] | None = None,
) -> str:
    """Build a preference dataset from a spec file on the worker and publish a release.

    Args:
        spec_path: the spec YAML, relative to the flow run's working directory (the checkout).
        overrides: dotted-path overrides of the keys the worker allows, e.g. ``["sources.0.quota=50"]``.
        spec_data: a whole spec instead of the file's; every key where it differs from the file
            must be one the worker allows.
    """
    spec = DeploymentPolicy.from_env().resolve(spec_path, overrides, spec_data)
    from ultrafeedback.infra.artifacts import label_flow_run

    label_flow_run(spec.name, spec.spec_hash(), "build")  # the run is `{dataset}/build`, tagged
    return run_build(spec)
