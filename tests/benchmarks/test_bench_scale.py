"""``benchmarks/bench_scale.py``: its per-stage rows and the acceptance lines, from build summaries
(no build runs here)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_scale  # noqa: E402

GIB = 1024**3


def _summary(scale: float, score_span: float) -> dict:
    return {
        "seconds": {
            "ingest": 1.0 * scale,
            "generate": 40.0 * scale,
            "annotate": 41.0 * scale,
            "score": score_span,
            "pipeline:generate+annotate+score": 45.0 * scale,
            "publish": 1.0 * scale,
        },
        "busy_seconds": {"generate": 150.0 * scale, "annotate": 30.0 * scale, "score": 8.0 * scale},
    }


def _result(label: str, fraction: float, scale: float, score_span: float) -> dict:
    delta = {"by_kind": {kind: int(1000 * scale) for kind in ("generation", "judge_aspect", "critique")}}
    return {
        "label": label,
        "fraction": fraction,
        "stages": bench_scale.stage_rows(_summary(scale, score_span), delta, None),
        "build": {"peak_rss_tree_bytes": GIB},
    }


def test_overlapping_stages_get_their_shard_task_time_per_request():
    rows = {row["stage"]: row for row in _result("10%", 0.1, 1, 35.0)["stages"]}
    assert rows["score"]["busy_seconds"] == 8.0
    assert rows["score"]["busy_ms_per_request"] == round(8.0 * 1000 / 3000, 4)  # score sends none: all requests
    assert rows["generate"]["busy_ms_per_request"] == round(150.0 * 1000 / 1000, 4)
    assert "busy_seconds" not in rows["ingest"] and "busy_seconds" not in rows["publish"]


def test_growth_is_judged_by_shard_task_time_for_overlapping_stages_and_by_wall_time_for_the_rest(capsys):
    # score's span grows 1.34x faster than the build (the wait for the first shard is a smaller share
    # at 100%), its shard tasks grow with the data: the check passes and the span is printed as info
    small = _result("10%", 0.1, 1, 35.0)
    big = _result("100%", 1.0, 10, 35.0 * 10 * 1.34)
    checks = {c["check"]: c for c in bench_scale.acceptance([small, big])}
    assert checks["score shard-task time per request 100% vs 10% <= 1.25x"]["pass"]
    assert checks["ingest time per request 100% vs 10% <= 1.25x"]["pass"]
    assert "info  score span per request 100% vs 10%: 1.340x" in capsys.readouterr().out
    # a stage whose shard tasks do grow faster than the data fails
    big["stages"] = bench_scale.stage_rows(
        {**_summary(10, 350.0), "busy_seconds": {"generate": 1500.0, "annotate": 300.0, "score": 8.0 * 10 * 1.3}},
        {"by_kind": {"generation": 10000, "judge_aspect": 10000, "critique": 10000}},
        None,
    )
    checks = {c["check"]: c for c in bench_scale.acceptance([small, big])}
    assert not checks["score shard-task time per request 100% vs 10% <= 1.25x"]["pass"]
    assert checks["generate shard-task time per request 100% vs 10% <= 1.25x"]["pass"]
