"""Great Expectations Data Docs of a build's gates, written to the store.

A stage's gate is its shards' suite results merged with whole-stage checks (``expectations.summary``),
so its Data Docs page shows that merged result as one GX validation result: a check that is one of
the suite's expectations appears with that expectation's configuration (GX renders what it expects,
"values must never be null") and the merged observed values (unexpected rows over every shard);
a check computed outside GX (whole-stage counts and rates, the pandas checks) appears as
``expect_ultrafeedback_check`` with what it expected and what it saw.

The site is built by a file data context in a local working folder (one per build: its index lists
every gate of the build) and copied to ``{store}/{dataset}/data_docs/`` in any fsspec store. The
static files (styles, fonts, images) are copied once per store; GX's animated tutorial images are
left out.
"""

from __future__ import annotations

import logging
import os
import posixpath
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ultrafeedback.expectations.models import CheckResult, GateContext, GateResult

if TYPE_CHECKING:
    from ultrafeedback.infra.store import Store

log = logging.getLogger(__name__)

SITE = "data_docs"
"""The Data Docs folder in the dataset's store."""
LOCAL_SITE = ("gx", "uncommitted", "data_docs", "local_site")
CHECK_TYPE = "expect_ultrafeedback_check"
_check_class: Any = None


def _check_expectation() -> Any:
    """``ExpectUltrafeedbackCheck``: a check the gate computes outside GX, so that Data Docs can
    render it beside the suite's expectations (never run by GX; built on first use)."""
    global _check_class
    if _check_class is not None:
        return _check_class
    from typing import ClassVar

    from great_expectations.expectations.expectation import BatchExpectation
    from great_expectations.render import LegacyRendererType, RenderedStringTemplateContent
    from great_expectations.render.renderer.renderer import renderer

    class ExpectUltrafeedbackCheck(BatchExpectation):
        """A gate check computed by ultrafeedback from key columns, counts or pandas."""

        check: str
        expected: str = ""
        computed_by: str = "summary"
        metric_dependencies: ClassVar[tuple[str, ...]] = ()
        success_keys: ClassVar[tuple[str, ...]] = ()

        def _validate(self, metrics: Any, runtime_configuration: Any = None, execution_engine: Any = None) -> Any:
            raise NotImplementedError("rendered from a stored result only")

        @classmethod
        @renderer(renderer_type=LegacyRendererType.PRESCRIPTIVE)
        def _prescriptive_renderer(
            cls, configuration: Any = None, result: Any = None, runtime_configuration: Any = None, **kwargs: Any
        ) -> list[Any]:
            params = dict(configuration.kwargs) if configuration is not None else {}
            template = "$check: expected $expected" if params.get("expected") else "$check"
            computed = {"summary": "over the whole stage", "pandas": "with pandas"}.get(params.get("computed_by"), "")
            if computed:
                template += f" (computed {computed})"
            return [
                RenderedStringTemplateContent(
                    content_block_type="string_template",
                    string_template={"template": template, "params": params},
                )
            ]

    _check_class = ExpectUltrafeedbackCheck
    return _check_class


def validation_result(result: GateResult, ctx: GateContext, run_name: str) -> Any:
    """The gate's merged result as a GX ``ExpectationSuiteValidationResult``."""
    import great_expectations as gx
    from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult
    from great_expectations.core.run_identifier import RunIdentifier

    from ultrafeedback.expectations.suites import suite_for

    suite = suite_for(result.stage, ctx)
    configs = {e.meta.get("check"): e.configuration for e in suite.expectations}
    results = []
    for check in result.checks:
        config = configs.get(check.name)
        if config is None or config.type != check.expectation:
            config = (
                _check_expectation()(check=check.name, expected=check.expected, computed_by=check.expectation)
            ).configuration
        results.append(
            ExpectationValidationResult(success=check.passed, expectation_config=config, result=_observed(check))
        )
    passed = sum(1 for check in result.checks if check.passed)
    now = datetime.now(UTC)
    return ExpectationSuiteValidationResult(
        success=result.passed,
        results=results,
        suite_name=result.suite,
        statistics={
            "evaluated_expectations": len(results),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(results) - passed,
            "success_percent": 100.0 * passed / len(results) if results else 100.0,
        },
        meta={
            "run_id": RunIdentifier(run_name=run_name, run_time=now),
            "active_batch_definition": {
                "datasource_name": "ultrafeedback",
                "data_connector_name": "stage",
                "data_asset_name": result.stage,
                "batch_identifiers": {},
            },
            "great_expectations_version": gx.__version__,
            "validation_time": now.strftime("%Y%m%dT%H%M%S.%fZ"),
            "rows": result.row_count,
        },
    )


def _observed(check: CheckResult) -> dict[str, Any]:
    """What GX's renderers read from a result: unexpected counts of a row check, the observed
    value of the others."""
    kind = check.expectation
    if kind.startswith("expect_column_") and check.evaluated is not None:
        unexpected = int(check.observed or 0)
        return {
            "element_count": check.evaluated,
            "unexpected_count": unexpected,
            "unexpected_percent": 100.0 * unexpected / check.evaluated if check.evaluated else 0.0,
            "partial_unexpected_list": list(check.examples),
            "missing_count": 0,
        }
    if kind == "expect_table_columns_to_match_set":
        return {"observed_value": check.detail, "details": {"mismatched": check.observed}}
    if kind.startswith("expect_table_row_count"):
        return {"observed_value": check.observed}
    return {"observed_value": check.detail or str(check.observed)}


def write_data_docs(store: Store, result: GateResult, ctx: GateContext, run_name: str, workdir: str) -> dict[str, str]:
    """Add the gate's page to the build's Data Docs (a file context in ``workdir``), then copy the
    site to ``{store}/{dataset}/data_docs/``. Returns the store URIs of ``index`` and ``page``."""
    import great_expectations as gx
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )
    from great_expectations.exceptions import DataContextError

    from ultrafeedback.expectations.suites import suite_for

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="file", project_root_dir=workdir)
    suite = suite_for(result.stage, ctx)
    try:
        context.suites.delete(suite.name)
    except DataContextError:
        pass
    context.suites.add(suite)
    validation = validation_result(result, ctx, run_name)
    key = ValidationResultIdentifier(
        expectation_suite_identifier=ExpectationSuiteIdentifier(name=result.suite),
        run_id=validation.meta["run_id"],
        batch_identifier=result.stage,
    )
    context.validation_results_store.set(key, validation)
    context.build_data_docs(resource_identifiers=[key, ExpectationSuiteIdentifier(name=suite.name)])
    site = os.path.join(workdir, *LOCAL_SITE)
    page = _copy_site(store, site)
    relpage = posixpath.join("validations", *key.to_tuple()[:-1], f"{key.to_tuple()[-1]}.html")
    if relpage not in page:
        raise FileNotFoundError(f"Data Docs: no page {relpage} was built under {site}")
    return {"index": store.uri(SITE, "index.html"), "page": store.uri(SITE, relpage)}


def _copy_site(store: Store, site: str) -> set[str]:
    """Copy the local site into the store: pages always, static files once; returns the pages'
    paths relative to the site."""
    pages: set[str] = set()
    for folder, _dirs, files in os.walk(site):
        for name in files:
            relpath = os.path.relpath(os.path.join(folder, name), site).replace(os.sep, "/")
            static = relpath.startswith("static/")
            if static and (name.endswith(".gif") or store.exists(SITE, relpath)):
                continue
            with open(os.path.join(folder, name), "rb") as handle:
                store.write_bytes(f"{SITE}/{relpath}", handle.read())
            if not static:
                pages.add(relpath)
    return pages
