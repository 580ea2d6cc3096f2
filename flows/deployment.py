"""The ``build`` flow as Prefect deployments run it (``deployments/prefect.yaml``): ``build``,
``refresh`` (the same build, named so, on a schedule or an event) and ``retry_failed`` (logs the
open failures, then builds: what failed is sent again, from a fresh flow run).

The same build as ``flows.build.build``, except that its parameters come from whoever pressed "Run":
the worker's ``DeploymentPolicy`` (``ultrafeedback.deployment_policy``) decides which spec keys
they may change, where sources, store and releases may live, and where each endpoint's key may
go, and refuses the run before any work otherwise. The command line runs ``flows.build.build``,
whose user is trusted.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from ultrafeedback.deployment_policy import DeploymentPolicy
from ultrafeedback.flows.build import MAX_PARALLEL_SHARDS, run_build
from ultrafeedback.spec import Spec


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
    return _run("build", DeploymentPolicy.from_env().resolve(spec_path, overrides, spec_data))


@flow(name="build", task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_SHARDS))
def refresh(
    spec_path: str = "deployments/specs/demo.yaml",
    overrides: list[str] | None = None,
    spec_data: dict[str, Any] | None = None,
) -> str:
    """Bring a dataset up to date with its spec and sources (the ``refresh`` deployment, on its
    schedule or on a source-changed event): only new instructions, models and aspects are sent;
    with nothing new it sends nothing and publishes no new release.

    Args:
        spec_path: the spec YAML, relative to the flow run's working directory (the checkout).
        overrides: dotted-path overrides of the keys the worker allows.
        spec_data: a whole spec instead of the file's (keys that differ must be allowed).
    """
    return _run("refresh", DeploymentPolicy.from_env().resolve(spec_path, overrides, spec_data))


@flow(name="build", task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_SHARDS))
def retry_failed(
    spec_path: str = "deployments/specs/demo.yaml",
    overrides: list[str] | None = None,
    spec_data: dict[str, Any] | None = None,
    reparse: bool = False,
) -> str:
    """Send again exactly what failed (and what a stopped run left unsent), as a fresh flow run:
    the open failures are logged by stage and reason, then the build runs, and every shard whose
    outputs are complete is skipped without a task.

    Args:
        spec_path: the spec YAML, relative to the flow run's working directory (the checkout).
        overrides: dotted-path overrides of the keys the worker allows.
        spec_data: a whole spec instead of the file's (keys that differ must be allowed).
        reparse: also send again the judge calls whose answers stayed unparseable after every
            re-ask (``execution.reparse_failed``; by default they are not paid for again).
    """
    spec = DeploymentPolicy.from_env().resolve(spec_path, overrides, spec_data)
    if reparse:  # the deployment's own switch, not an override of the caller's: no policy key needed
        spec = spec.model_copy(update={"execution": spec.execution.model_copy(update={"reparse_failed": True})})
    _log_failures(spec)
    return _run("retry-failed", spec)


def _run(command: str, spec: Spec) -> Any:
    from ultrafeedback.infra.artifacts import label_flow_run

    label_flow_run(spec.name, spec.spec_hash(), command)  # the run is `{dataset}/{command}`, tagged
    return run_build(spec)


def _log_failures(spec: Spec) -> None:
    """The open failures by stage and reason, in the run's log (``ultrafeedback status`` lists them)."""
    from collections import Counter

    from ultrafeedback.status import collect_status
    from ultrafeedback.tasks.common import store_for

    logger = get_run_logger()
    failures = collect_status(store_for(spec))["failures"]
    for stage, rows in failures.items():
        if rows:
            reasons = Counter(row["reason"] for row in rows)
            logger.info(
                "retry-failed: %s: %d failed (%s)",
                stage,
                len(rows),
                ", ".join(f"{r} {n}" for r, n in reasons.most_common()),
            )
    if not any(failures.values()):
        logger.info("retry-failed: no recorded failure; what is missing (a stopped run's unsent calls) is sent")
