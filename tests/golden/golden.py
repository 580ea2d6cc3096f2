"""The golden release: where it lives, how it is rebuilt, and how two releases are compared.

Shared by ``tests/e2e/test_golden.py`` (rebuild and compare) and ``tests/golden/make_golden.py``
(regenerate). See ``tests/golden/README.md``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ultrafeedback.infra.simulator.config import SimulatorConfig

GOLDEN = Path(__file__).resolve().parent
SPEC = "spec.yaml"
INPUTS = ("general.jsonl", "truthful.csv")
FACTS = "golden.json"
RELEASE = "release"
"""Subfolder of the golden folder with one Parquet file per config and split."""

KEY_ENV = "UF_GOLDEN_KEY"
STORE_PLACEHOLDER = "SET-BY-THE-TEST"
URL_PLACEHOLDER = "http://SET-BY-THE-TEST/v1"

SPLITS: dict[str, tuple[str, ...]] = {
    "completions": ("train",),
    "pairs": ("train",),
    "binarized": ("train_prefs", "test_prefs"),
}
"""The release's configs and their splits (a table per pair; see ``table_names``)."""

ROW_KEYS = {"completions": "id", "pairs": "pair_id", "binarized": "prompt_id"}
"""The column that names a row in a difference report."""

SIMULATOR = SimulatorConfig(
    seed=11,
    rate_429=0.03,
    rate_500=0.03,
    rate_malformed=0.03,
    rate_unparseable=0.04,
    retry_after_s=0.02,
    max_faults_per_body=1,
)
"""Faults a few percent each; a body is faulted at most once, so every fault is followed by a
success and the data do not depend on timing. Answers depend on ``seed`` (content.py)."""


def table_names() -> list[str]:
    """``completions``, ``pairs``, ``binarized/train_prefs``, ``binarized/test_prefs``."""
    return [
        config if SPLITS[config] == ("train",) else f"{config}/{split}"
        for config, splits in SPLITS.items()
        for split in splits
    ]


def _config_split(name: str) -> tuple[str, str]:
    config, _, split = name.partition("/")
    return config, split or "train"


def golden_file(folder: Path, name: str) -> Path:
    return folder / RELEASE / f"{name.replace('/', '-')}.parquet"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- build and read


def overrides(store: str, sim_url: str) -> list[str]:
    """What the spec leaves as placeholders: the store and the simulator's URL."""
    return [f"store={store}", f"endpoints.sim.base_url={sim_url}"]


@contextmanager
def simulator() -> Iterator[Any]:
    """The simulator with the golden faults, on a free port."""
    from ultrafeedback.infra.simulator.server import Simulator

    with Simulator(SIMULATOR) as sim:
        yield sim


def build_release(folder: Path, store: Path, sim_url: str, extra: Sequence[str] = ()) -> str:
    """Build ``folder/spec.yaml`` with the code on the import path (``extra``: more overrides, of
    how it runs, not of what it makes); returns the release URI. The caller sets ``KEY_ENV`` and
    provides a Prefect API (the test harness)."""
    from ultrafeedback.flows.build import build

    return build(spec_path=str(folder / SPEC), overrides=[*overrides(str(store), sim_url), *extra])


def read_release(uri: str) -> dict[str, pa.Table]:
    """The release's tables by ``table_names()`` name, each split's shards in order."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    tables = {}
    for name in table_names():
        config, split = _config_split(name)
        files = sorted(fs.glob(f"{root}/{config}/{split}-*.parquet"))
        if not files:
            raise AssertionError(f"release {uri} has no files for {name}")
        parts = []
        for path in files:
            with fs.open(path, "rb") as handle:
                parts.append(pq.read_table(handle))
        tables[name] = pa.concat_tables(parts)
    return tables


def read_golden(folder: Path = GOLDEN) -> dict[str, pa.Table]:
    return {name: pq.read_table(golden_file(folder, name)) for name in table_names()}


def read_facts(folder: Path = GOLDEN) -> dict[str, Any]:
    return json.loads((folder / FACTS).read_text())


# --------------------------------------------------------------------------- comparison

_SHOWN = 300
"""Characters of a value shown in a difference report."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} chars)"


def first_difference(expected: Any, actual: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """Where two values first differ: (path inside the value, expected part, actual part).

    Exact: floats by their bits (``float.hex``: -0.0 differs from 0.0, NaN equals NaN), types
    must match (1 is not 1.0), lists element by element, dicts (structs) key by key.
    """
    if type(expected) is not type(actual):
        return path, expected, actual
    if isinstance(expected, float):
        return None if expected.hex() == actual.hex() else (path, expected, actual)
    if isinstance(expected, dict):
        if list(expected) != list(actual):
            return f"{path} (keys)", list(expected), list(actual)
        for key in expected:
            found = first_difference(expected[key], actual[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(expected, list):
        for index, (e, a) in enumerate(zip(expected, actual, strict=False)):
            found = first_difference(e, a, f"{path}[{index}]")
            if found:
                return found
        if len(expected) != len(actual):
            return f"{path} (length)", len(expected), len(actual)
        return None
    return None if expected == actual else (path, expected, actual)


def diff_tables(name: str, expected: pa.Table, actual: pa.Table, key: str | None = None) -> list[str]:
    """Every difference between two tables, one line each, naming the table, row (index and
    ``key`` value), column and both values. Empty when the tables are equal: same columns and
    types in the same order, same rows in the same order, every value equal (``first_difference``).
    """
    key = key or ROW_KEYS[_config_split(name)[0]]
    problems: list[str] = []
    if expected.schema.names != actual.schema.names:
        missing = [c for c in expected.schema.names if c not in actual.schema.names]
        extra = [c for c in actual.schema.names if c not in expected.schema.names]
        problems.append(
            f"{name}: columns differ: expected {expected.schema.names}, got {actual.schema.names} "
            f"(missing {missing}, extra {extra})"
        )
    columns = [c for c in expected.schema.names if c in actual.schema.names]
    for column in columns:
        want, got = expected.schema.field(column), actual.schema.field(column)
        if want.type != got.type:
            problems.append(f"{name}: column {column}: type expected {want.type}, got {got.type}")
    exp_keys = expected.column(key).to_pylist() if key in expected.schema.names else [None] * len(expected)
    act_keys = actual.column(key).to_pylist() if key in actual.schema.names else [None] * len(actual)
    if len(expected) != len(actual):
        exp_set, act_set = set(exp_keys), set(act_keys)
        missing = [k for k in exp_keys if k not in act_set]
        extra = [k for k in act_keys if k not in exp_set]
        problems.append(
            f"{name}: {len(expected)} rows expected, got {len(actual)} "
            f"(missing {key}s {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"extra {extra[:5]}{'...' if len(extra) > 5 else ''})"
        )
    rows = min(len(expected), len(actual))
    values = {c: (expected.column(c).to_pylist(), actual.column(c).to_pylist()) for c in columns}
    for row in range(rows):
        if exp_keys[row] != act_keys[row]:
            problems.append(
                f"{name}: row {row}: {key} expected {exp_keys[row]!r}, got {act_keys[row]!r} "
                "(rows reordered, added or removed)"
            )
            continue
        for column in columns:
            want, got = values[column][0][row], values[column][1][row]
            found = first_difference(want, got)
            if found:
                path, part_want, part_got = found
                problems.append(
                    f"{name}: row {row} ({key} {exp_keys[row]}): column {column}{path}: "
                    f"expected {_show(part_want)}, got {_show(part_got)}"
                )
    return problems


def diff_releases(expected: dict[str, pa.Table], actual: dict[str, pa.Table], shown: int = 8) -> str:
    """A report of every table's differences (the first ``shown`` lines and a count), or ''."""
    problems = [line for name in expected for line in diff_tables(name, expected[name], actual[name])]
    if not problems:
        return ""
    more = f"\n... and {len(problems) - shown} more differences" if len(problems) > shown else ""
    return f"{len(problems)} differences from the golden release:\n" + "\n".join(problems[:shown]) + more
