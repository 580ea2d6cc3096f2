"""Data Docs of a gate: the merged gate result rendered by Great Expectations into the store."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd

from ultrafeedback.expectations.data_docs import CHECK_TYPE, validation_result, write_data_docs
from ultrafeedback.expectations.gate import GateContext, run_gate
from ultrafeedback.expectations.summary import count_check, merge
from ultrafeedback.infra.store import Store


def _text(path: Path) -> str:
    page = re.sub(r"<(script|style).*?</\1>", "", path.read_text(), flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def _ingest_result(bad: bool) -> tuple:
    rows = pd.DataFrame(
        {
            "id": ["a", "b", "b" if bad else "c"],
            "source": ["s", "s", "s"],
            "instruction": ["one?", "two?", "three?"],
        }
    )
    ctx = GateContext(allowed_sources=["s"], scope="shard")
    shard = run_gate("ingest", rows, ctx)
    result = merge("ingest", shard.suite, [shard], [count_check("instructions", 3, low=5)])
    return result, ctx


def test_a_failed_gate_has_a_page_naming_its_checks_in_the_store(tmp_path: Path):
    result, ctx = _ingest_result(bad=True)
    assert not result.passed
    store = Store(str(tmp_path / "store"), "unit")
    first = write_data_docs(store, result, ctx, "run-1", str(tmp_path / "work"))
    root = tmp_path / "store" / "unit" / "data_docs"
    page = Path(first["page"])
    assert first["index"] == str(root / "index.html") and (root / "index.html").is_file()
    assert page.is_file() and page.is_relative_to(root / "validations")
    text = _text(page)
    assert "ultrafeedback.ingest" in text and "Failed" in text
    assert "instructions: expected >= 5" in text  # a whole-stage check, computed outside GX
    assert "3 rows (expected >= 5)" in text
    for check in result.checks:
        assert check.name in text or check.expectation != "pandas", check.name
    assert (root / "static" / "styles" / "data_docs_default_styles.css").is_file()
    assert not list(root.rglob("*.gif")), "GX's tutorial animations are left out"

    passed, ctx = _ingest_result(bad=False)
    second = write_data_docs(store, passed.model_copy(update={"stage": "ingest"}), ctx, "run-1", str(tmp_path / "work"))
    assert second["page"] != first["page"]
    index = (root / "index.html").read_text()
    for uri in (first["page"], second["page"]):  # the index lists every gate page of the build
        assert Path(uri).relative_to(root).as_posix() in index


def test_checks_keep_their_expectation_or_become_ultrafeedback_checks():
    result, ctx = _ingest_result(bad=True)
    validation = validation_result(result, ctx, "run-1")
    assert validation.success is False and len(validation.results) == len(result.checks)
    types = {
        r.expectation_config.meta.get("check") or r.expectation_config.kwargs.get("check"): r
        for r in validation.results
    }
    unique = next(r for r in validation.results if r.expectation_config.type == "expect_column_values_to_be_unique")
    assert unique.success is False and unique.result["unexpected_count"] == 2
    summary = types["instructions"]
    assert summary.expectation_config.type == CHECK_TYPE and summary.result["observed_value"].startswith("3 rows")
