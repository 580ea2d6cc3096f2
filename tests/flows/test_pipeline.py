"""Sharded stages run as one pipeline per shard: at most ``execution.parallel_shards`` shards at
once, a shard enters the next (overlapping) stage as soon as it leaves the previous one, every
report comes back, and a crash stops new shards."""

from __future__ import annotations

import threading
import time

import pytest
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from ultrafeedback.flows.build import MAX_PARALLEL_SHARDS, BuildSummary, _groups, _run_pipeline
from ultrafeedback.spec import validate_dict
from ultrafeedback.tasks.stages import Run, ShardReport, Stage

_lock = threading.Lock()


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[float, str, int, str]] = []
        self.running = 0
        self.peak = 0
        self.in_pipeline: set[int] = set()
        self.peak_pipeline = 0

    def mark(self, stage: str, shard: int, what: str) -> None:
        with _lock:
            self.events.append((time.monotonic(), stage, shard, what))

    def at(self, stage: str, shard: int, what: str) -> float:
        return next(t for t, s, n, w in self.events if (s, n, w) == (stage, shard, what))


def fake_stages(rec: Recorder, crash_on: int | None = None, fail_on: int | None = None) -> list[Stage]:
    def generate(run: Run, shard: int) -> ShardReport:
        with _lock:
            rec.in_pipeline.add(shard)
            rec.peak_pipeline = max(rec.peak_pipeline, len(rec.in_pipeline))
        rec.mark("generate", shard, "start")
        time.sleep(0.3 if shard == 0 else 0.6)
        rec.mark("generate", shard, "end")
        if shard == crash_on:
            raise RuntimeError("worker lost")
        report = ShardReport(stage="generate", shard=shard, issued=2, succeeded=2)
        if shard == fail_on:
            report.failed["http_500"] += 1
        return report

    def annotate(run: Run, shard: int) -> ShardReport:
        rec.mark("annotate", shard, "start")
        time.sleep(0.05)
        with _lock:
            rec.in_pipeline.discard(shard)
        return ShardReport(stage="annotate", shard=shard, issued=1, succeeded=1)

    return [
        Stage("generate", (), ("completions",), sharded=True, run_shard=generate),
        Stage("annotate", (), ("annotations",), sharded=True, overlap=True, run_shard=annotate),
    ]


def make_run(tmp_path, parallel: int, stage_list: list[Stage], shards: int, run_id: str) -> Run:
    spec = validate_dict(
        {
            "name": "t",
            "store": str(tmp_path / "store"),
            "sources": [{"name": "s", "loader": "jsonl", "path": "x"}],
            "models": [{"id": "m", "backend": "embedded"}],
            "completions_per_instruction": 1,
            "execution": {"parallel_shards": parallel},
        }
    )
    run = Run.start(spec, run_id, stage_list)
    for shard in range(shards):  # the shards a run has are its instruction files
        run.store.write_bytes(f"instructions/shard-{shard:05d}.parquet", b"")
    return run


def pipeline(run: Run, summary: BuildSummary):
    @flow(task_runner=ThreadPoolTaskRunner(MAX_PARALLEL_SHARDS))
    def go():
        return _run_pipeline(run, run.stages, summary)

    return go()


def test_groups_put_overlapping_stages_in_one_pipeline():
    rec = Recorder()
    stage_list = fake_stages(rec)
    whole = Stage("aggregate", (), (), sharded=False, run_shard=lambda run, shard: ShardReport("aggregate", 0))
    assert [[s.name for s in g] for g in _groups([*stage_list, whole])] == [["generate", "annotate"], ["aggregate"]]


@pytest.mark.parametrize("parallel", [1, 2])
def test_pipeline_bounds_shards_and_overlaps_stages(prefect_harness, tmp_path, parallel):
    rec = Recorder()
    run = make_run(tmp_path, parallel, fake_stages(rec, fail_on=1), 4, f"overlap-{parallel}")
    summary = BuildSummary()
    pipeline(run, summary)
    assert rec.peak_pipeline == parallel
    assert summary.issued == {"generate": 8, "annotate": 4}  # the Failed shard's report too
    assert summary.failures == {"generate:http_500": 1}
    # shard 0's annotation started while another shard was still generating
    assert rec.at("annotate", 0, "start") < rec.at("generate", 3, "end")
    assert set(summary.seconds) == {"generate", "annotate", "pipeline:generate+annotate"}
    assert summary.seconds["pipeline:generate+annotate"] >= max(
        summary.seconds["generate"], summary.seconds["annotate"]
    )
    # busy: each stage's shard tasks summed (4 shards: generate sleeps 0.3 s once and 0.6 s three times)
    assert set(summary.busy) == {"generate", "annotate"}
    assert summary.busy["generate"] >= 0.3 + 3 * 0.6
    assert summary.busy["generate"] <= parallel * summary.seconds["generate"] + 0.1


def test_a_crashed_shard_stops_new_shards_and_keeps_the_finished_reports(prefect_harness, tmp_path):
    rec = Recorder()
    run = make_run(tmp_path, 2, fake_stages(rec, crash_on=1), 6, "crash")
    summary = BuildSummary()
    with pytest.raises(RuntimeError, match="worker lost"):
        pipeline(run, summary)
    started = {n for _, s, n, w in rec.events if s == "generate" and w == "start"}
    assert 5 not in started  # no shard starts after the crash
    assert 1 not in {n for _, s, n, w in rec.events if s == "annotate"}  # nor does the crashed one go on
    assert summary.issued["generate"] == 2 * (len(started) - 1)


def test_a_shard_whose_every_stage_is_done_starts_no_task(prefect_harness, tmp_path):
    rec = Recorder()
    finished = {1, 3}

    def done(run: Run, shard: int) -> bool:
        return shard in finished

    stage_list = [Stage(**{**vars(stage), "done": done}) for stage in fake_stages(rec)]
    run = make_run(tmp_path, 2, stage_list, 4, "done")
    summary = BuildSummary()
    pipeline(run, summary)
    started = {n for _, s, n, w in rec.events if w == "start"}
    assert started == {0, 2}
    assert summary.issued == {"generate": 4, "annotate": 2}
