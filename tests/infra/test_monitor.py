"""The build monitor: live progress from reports that shard threads keep filling, the calls-and-cost
table, shard log lines, and progress artifacts updated in place on a real Prefect API."""

from __future__ import annotations

import threading
import time

import pytest

from ultrafeedback.infra.artifacts import artifact_key, label_flow_run, run_tags
from ultrafeedback.infra.monitor import BuildMonitor, report_created, skipped, watching
from ultrafeedback.spec import Price
from ultrafeedback.tasks.stages import ShardReport

PRICES = {"m-1": Price(input_per_mtok=1.0, output_per_mtok=2.0)}


class Lines:
    """A logger that keeps its lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str, *args: object) -> None:
        self.lines.append(message % args if args else message)

    warning = error = info


def monitor(stages: list[str], run_id: str = "run-1", **kwargs: object) -> tuple[BuildMonitor, Lines]:
    logger = Lines()
    return BuildMonitor("My_Data.v2", run_id, stages, PRICES, logger=logger, **kwargs), logger


def progress(mon: BuildMonitor) -> dict[str, tuple[float, str]]:
    stages, _rows, _lines = mon.snapshot()
    return {name: (value, text) for name, value, text in stages}


def test_artifact_keys_are_per_dataset_and_valid():
    assert artifact_key("My_Data.v2", "gate", "ingest") == "my-data-v2-gate-ingest"
    assert artifact_key("ultrafeedback", "build-summary") == "ultrafeedback-build-summary"
    assert artifact_key("a--b", "plot", "overall_score") == "a-b-plot-overall-score"
    assert run_tags("ultrafeedback", "abc123") == ["dataset:ultrafeedback", "spec:abc123"]


def test_a_live_report_moves_its_stage_and_the_cost_table_while_the_shard_runs():
    mon, logger = monitor(["generate", "annotate"])
    mon.stage_started("generate", shards=2)
    with watching_run(mon):
        with watching("run-1", "generate", 0):
            report = ShardReport(stage="completions", shard=0)  # what generate_shard creates
            report.issued = 4
            assert progress(mon)["generate"][0] == 0.0
            report.succeeded += 1
            report.add_tokens("m-1", 100, 50)
            report.failed["http_500"] += 1
            report.add_tokens("m-1", 10, 0)
            value, text = progress(mon)["generate"]
            assert value == pytest.approx(25.0)  # half of one shard of two
            assert "2 of 4 calls answered" in text and "1 failed (http_500 1)" in text
            _stages, rows, _lines = mon.snapshot()
            assert rows[0] == {"model": "m-1", "calls": 2, "tokens_in": 110, "tokens_out": 50, "est_cost_usd": 0.0002}
            assert rows[-1]["model"] == "total" and rows[-1]["calls"] == 2
            report.succeeded += 2
        skipped("run-1", ["generate"], 1)  # the flow found nothing to do for shard 1
        mon.stage_finished("generate")
    assert progress(mon)["generate"][0] == 100.0
    assert progress(mon)["annotate"] == (0.0, "annotate: waiting")
    assert logger.lines[0] == "generate shard 0: started"
    assert logger.lines[1].startswith("generate shard 0: done")
    assert "4 calls, 3 answered, 1 failed (http_500 1); tokens 110 in / 50 out" in logger.lines[1]
    assert logger.lines[2].startswith("generate: done; 2 of 2 shards done, 0 running; 4 of 4 calls answered")


def test_progress_never_goes_back_and_a_crash_is_logged():
    mon, logger = monitor(["annotate"])
    mon.stage_started("annotate", shards=1)
    with watching_run(mon):
        with pytest.raises(RuntimeError), watching("run-1", "annotate", 0):
            report = ShardReport(stage="annotations", shard=0)
            report.issued, report.succeeded = 2, 1
            assert progress(mon)["annotate"][0] == 50.0
            report.issued = 4  # judge re-asks add calls
            assert progress(mon)["annotate"][0] == 50.0
            raise RuntimeError("backend gone")
    assert logger.lines[-1] == "annotate shard 0: crashed: RuntimeError: backend gone"
    mon.close(RuntimeError("backend gone"))
    assert progress(mon)["annotate"][1].startswith("annotate: stopped (RuntimeError)")


def test_a_report_outside_a_watched_shard_is_not_tracked_and_costs_nothing():
    report_created(ShardReport(stage="completions", shard=0))  # no watching: nothing happens
    with watching("no-such-run", "generate", 0):
        ShardReport(stage="completions", shard=0)


def test_shard_threads_fill_reports_while_the_monitor_reads_them():
    """Many threads answering at once while snapshots are taken: no error, and the totals add up."""
    mon, _logger = monitor(["generate"])
    mon.stage_started("generate", shards=8)
    reports = {}
    with watching_run(mon):

        def shard(number: int) -> None:
            with watching("run-1", "generate", number):
                report = reports[number] = ShardReport(stage="completions", shard=number)
                report.issued = 500
                for _ in range(500):
                    report.succeeded += 1
                    report.add_tokens(f"m-{number % 3}", 3, 1)

        threads = [threading.Thread(target=shard, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            mon.snapshot()
        for thread in threads:
            thread.join()
    _stages, rows, _lines = mon.snapshot()
    assert rows[-1] == {"model": "total", "calls": 4000, "tokens_in": 12000, "tokens_out": 4000, "est_cost_usd": 0.0075}
    assert progress(mon)["generate"][0] == 100.0


class watching_run:  # noqa: N801 - a context manager named for what it does
    """Register a monitor for its run without starting its reporter thread."""

    def __init__(self, mon: BuildMonitor) -> None:
        self.mon = mon

    def __enter__(self) -> BuildMonitor:
        from ultrafeedback.infra import monitor as module

        module._MONITORS[self.mon.run_id] = self.mon
        return self.mon

    def __exit__(self, *exc: object) -> None:
        from ultrafeedback.infra import monitor as module

        module._MONITORS.pop(self.mon.run_id, None)


def test_progress_artifacts_and_the_cost_table_are_updated_in_place_on_the_api(prefect_harness):
    """In a flow run: one progress artifact per stage, moved (not re-created) as results arrive and
    at 100 at the end; the cost table updated in place; the run named and tagged."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.context import FlowRunContext

    seen: dict[str, list[float]] = {"generate": []}

    @flow
    def fake_build() -> str:
        run = FlowRunContext.get().flow_run
        label_flow_run("My_Data.v2", "f00d", "refresh")
        mon, _logger = monitor(["ingest", "generate"], run_id="api-run", flow_run_id=run.id)
        mon.interval_s = mon.table_interval_s = 0.05
        with mon:
            mon.stage_started("ingest")
            mon.stage_finished("ingest")
            mon.stage_started("generate", shards=1)
            with watching("api-run", "generate", 0):
                report = ShardReport(stage="completions", shard=0)
                report.issued = 4
                for _ in range(4):
                    report.succeeded += 1
                    report.add_tokens("m-1", 1000, 500)
                    time.sleep(0.3)
                    seen["generate"].append(_read(run.id, "generate"))
            mon.stage_finished("generate")
        return str(run.id)

    def _read(flow_run_id, stage):
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )
        return next(a.data for a in found if a.key == artifact_key("My_Data.v2", "progress", stage))

    flow_run_id = fake_build()
    assert seen["generate"] == sorted(seen["generate"]) and 0 < seen["generate"][0] < 100
    assert len(set(seen["generate"])) >= 3, seen
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
    assert flow_run.name == "My_Data.v2/refresh"
    assert {"dataset:My_Data.v2", "spec:f00d"} <= set(flow_run.tags)
    by_key: dict[str, list] = {}
    for artifact in found:
        by_key.setdefault(artifact.key, []).append(artifact)
    progress_keys = [artifact_key("My_Data.v2", "progress", s) for s in ("ingest", "generate")]
    for key in progress_keys:
        assert len(by_key[key]) == 1, f"{key}: updated in place, not re-created"
        assert by_key[key][0].type == "progress" and by_key[key][0].data == 100.0
    assert "generate: done" in by_key[progress_keys[1]][0].description
    (table,) = by_key[artifact_key("My_Data.v2", "calls-and-cost")]
    import json

    rows = json.loads(table.data)
    assert rows[0] == {"model": "m-1", "calls": 4, "tokens_in": 4000, "tokens_out": 2000, "est_cost_usd": 0.008}
    assert "final" in table.description
