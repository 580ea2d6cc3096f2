"""The pairs stage as the flow runs it: pairs and binarized sets per shard, and their two gates."""

from __future__ import annotations

from typing import Any

from ultrafeedback.outputs import OUTPUTS
from ultrafeedback.tasks.stages import Gate, Run, ShardReport, Stage, file_rows

SPLITS = ("train_prefs", "test_prefs")


def run_pairs(run: Run, shard: int) -> ShardReport:
    from ultrafeedback.tasks.pairs.task import pairs_task

    report = ShardReport(stage="pairs", shard=shard)
    info = pairs_task.fn(run.spec)
    run.facts["pairs"] = info
    report.succeeded = info["pairs"]
    return report


def _shard_files(run: Run, folder: str) -> list[str]:
    return [f"{folder}/{n}" for n in run.store.ls(folder) if n.startswith("shard-") and n.endswith(".parquet")]


def _pair_units(run: Run) -> list[Any]:
    return _shard_files(run, OUTPUTS["pairs"].folder)


def _binarized_units(run: Run) -> list[Any]:
    return [path for split in SPLITS for path in _shard_files(run, f"{OUTPUTS['binarized'].folder}/{split}")]


def _pairs_summary(run: Run) -> list[Any]:
    from ultrafeedback.expectations.summary import count_check, unique_keys_check

    ids = [key for path in _pair_units(run) for key in run.store.read_table(path, ["pair_id"])["pair_id"].to_pylist()]
    return [
        count_check("enough pairs", len(ids), low=run.spec.gates.min_pairs, what="pairs"),
        unique_keys_check("pair_id", ids),
    ]


def _binarized_summary(run: Run) -> list[Any]:
    from ultrafeedback.expectations.summary import count_check

    rows = sum(run.store.num_rows(path) for path in _binarized_units(run))
    return [count_check("not empty", rows, low=1, what="binarized rows")]


PAIRS = Stage(
    name="pairs",
    reads=("scored",),
    writes=("pairs", "binarized"),
    sharded=False,
    run_shard=run_pairs,
    gates=(
        Gate("pairs", file_rows, units=_pair_units, summary=_pairs_summary),
        Gate("binarized", file_rows, units=_binarized_units, summary=_binarized_summary),
    ),
)
