"""A build of the golden spec reproduces the committed golden release exactly: every config, row,
column and value (tests/golden/README.md). A change to how stages execute must pass this
unchanged; regenerate the golden data only for an intended data change, in its own commit."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from tests.golden.golden import (
    GOLDEN,
    KEY_ENV,
    SIMULATOR,
    build_release,
    diff_releases,
    diff_tables,
    first_difference,
    read_facts,
    read_golden,
    read_release,
    sha256,
    simulator,
)

REGENERATE = "an intended data change? regenerate in its own commit: see tests/golden/README.md"


def test_the_golden_inputs_are_those_it_was_built_from():
    facts = read_facts()
    for name, digest in facts["hashes"].items():
        assert sha256(GOLDEN / name) == digest, f"tests/golden/{name} changed since the golden release was made"
    # the settings the release was built with; a setting added since must be at its default
    settings = SIMULATOR.model_dump(exclude={"host", "port"})
    defaults = type(SIMULATOR)().model_dump()
    assert {k: settings[k] for k in facts["simulator"]} == facts["simulator"], "golden.SIMULATOR changed"
    assert {k: v for k, v in settings.items() if k not in facts["simulator"] and v != defaults[k]} == {}, (
        "golden.SIMULATOR sets a setting the golden release was not built with"
    )
    assert {name: table.num_rows for name, table in read_golden().items()} == facts["rows"]


@pytest.mark.e2e
def test_a_build_reproduces_the_golden_release(prefect_harness, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "simulated")
    with simulator() as sim:
        # the gates in a worker process, as a build of 2,000 instructions or more runs them
        uri = build_release(GOLDEN, tmp_path / "store", sim.url, ["execution.worker_processes=1"])
        faults = sim.stats()["faults"]
    # every kind of fault happened and was recovered from
    assert all(faults.get(kind, 0) > 0 for kind in ("429", "500", "malformed", "unparseable")), faults

    report = diff_releases(read_golden(), read_release(uri))
    assert not report, f"{report}\n{REGENERATE}"
    counts = json.loads(Path(uri, "manifest.json").read_text())["counts"]
    rows = read_facts()["rows"]
    assert {"completions": {"train": rows["completions"]}, "pairs": {"train": rows["pairs"]}}.items() <= counts.items()
    train, test = rows["binarized/train_prefs"], rows["binarized/test_prefs"]
    assert counts["binarized"] == {  # the sft and gen splits are derived from these two (H4's layout)
        "train_prefs": train,
        "test_prefs": test,
        "train_sft": train,
        "test_sft": test // 2,
        "train_gen": train,
        "test_gen": test // 2,
    }


def test_the_diff_names_the_table_row_column_and_both_values():
    golden = read_golden()
    table = golden["completions"]
    rows = table.to_pylist()
    rows[3]["completions"][1]["annotations"]["honesty"]["Rating"] = "changed"
    score = rows[5]["completions"][0]["overall_score"]
    rows[5]["completions"][0]["overall_score"] = score + 1e-12
    problems = diff_tables("completions", table, pa.Table.from_pylist(rows, schema=table.schema))
    was = table.column("completions")[3][1]["annotations"]["honesty"]["Rating"].as_py()
    assert problems == [
        f"completions: row 3 (id {rows[3]['id']}): column completions[1].annotations.honesty.Rating: "
        f"expected {was!r}, got 'changed'",
        f"completions: row 5 (id {rows[5]['id']}): column completions[0].overall_score: "
        f"expected {score!r}, got {score + 1e-12!r}",
    ]

    pairs = golden["pairs"]
    first, second = pairs.column("pair_id")[0].as_py(), pairs.column("pair_id")[1].as_py()
    shorter = diff_tables("pairs", pairs, pairs.slice(1))
    assert shorter[0].startswith(
        f"pairs: {len(pairs)} rows expected, got {len(pairs) - 1} (missing pair_ids ['{first}']"
    )
    assert shorter[1] == f"pairs: row 0: pair_id expected '{first}', got '{second}' (rows reordered, added or removed)"
    narrower = diff_tables("pairs", pairs, pairs.drop_columns(["margin"]))
    assert narrower == [
        f"pairs: columns differ: expected {pairs.schema.names}, got "
        f"{[n for n in pairs.schema.names if n != 'margin']} (missing ['margin'], extra [])"
    ]

    changed = dict(golden, completions=pa.Table.from_pylist(rows, schema=table.schema))
    assert diff_releases(golden, golden) == ""
    assert diff_releases(golden, changed).startswith("2 differences from the golden release:\ncompletions: row 3")


def test_values_compare_exactly():
    assert first_difference(float("nan"), float("nan")) is None
    assert first_difference(0.0, -0.0) == ("", 0.0, -0.0)
    assert first_difference(1, 1.0) == ("", 1, 1.0)
    assert first_difference({"a": [1, 2]}, {"a": [1, 2, 3]}) == (".a (length)", 2, 3)
    assert first_difference({"a": 1, "b": 2}, {"b": 2, "a": 1}) == (" (keys)", ["a", "b"], ["b", "a"])
