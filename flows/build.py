"""The ``build`` flow: spec -> ingest -> assign -> generate -> annotate -> aggregate -> pairs ->
publish, with a Great Expectations gate after every stage.

Orchestration only. Work that calls models runs as one Prefect task per shard (never per row);
every stage reads what the store already holds and computes only the missing content keys, so a
rerun of a finished build sends no request at all.
"""

from __future__ import annotations

import copy
import sys
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from infra.progress import stage_bar
from infra.store import Store
from tasks.common import (
    read_instructions,
    read_requests,
    read_scored,
    requests_by_shard,
    store_for,
    work_root,
    write_work,
)
from ultrafeedback.records import (
    AspectAnnotation,
    Completion,
    CompletionRequest,
    Critique,
)
from ultrafeedback.spec import Spec, load_spec, validate_dict

MAX_PARALLEL_SHARDS = 64


class BuildSummary:
    """Counts, failures, tokens and wall time per stage, for the CLI and the Prefect UI."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.failures: Counter[str] = Counter()
        self.tokens: dict[str, list[int]] = {}
        self.seconds: dict[str, float] = {}
        self.issued: Counter[str] = Counter()
        self.gates: dict[str, Any] = {}

    @contextmanager
    def stage(self, name: str):  # noqa: ANN201
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.monotonic() - started, 3)

    def add_reports(self, reports: list[dict[str, Any]]) -> None:
        for report in reports:
            self.issued[report["stage"]] += report["issued"]
            for reason, count in report["failed"].items():
                self.failures[f"{report['stage']}:{reason}"] += count
            for model, (tokens_in, tokens_out) in report["tokens"].items():
                pair = self.tokens.setdefault(model, [0, 0])
                pair[0] += tokens_in
                pair[1] += tokens_out

    def cost(self, spec: Spec) -> dict[str, float]:
        prices = {m.id: m.price for m in spec.models}
        from tasks.annotate.annotate import judge_model_id

        prices[judge_model_id(spec)] = spec.judge.price
        out = {}
        for model, (tokens_in, tokens_out) in self.tokens.items():
            price = prices.get(model)
            if price is not None:
                out[model] = round(tokens_in / 1e6 * price.input_per_mtok + tokens_out / 1e6 * price.output_per_mtok, 4)
        return out

    def to_dict(self, spec: Spec) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "requests_sent": dict(self.issued),
            "failures": dict(self.failures),
            "tokens": self.tokens,
            "estimated_cost_usd": self.cost(spec),
            "seconds": self.seconds,
        }

    def render(self, spec: Spec) -> str:
        lines = ["", f"== build summary: {spec.name} =="]
        lines.append("counts:    " + ", ".join(f"{k} {v}" for k, v in self.counts.items()))
        sent = ", ".join(f"{k} {v}" for k, v in self.issued.items()) or "none"
        lines.append(f"calls:     {sent}")
        failures = ", ".join(f"{k} {v}" for k, v in sorted(self.failures.items())) or "none"
        lines.append(f"failures:  {failures}")
        cost = self.cost(spec)
        for model, (tokens_in, tokens_out) in sorted(self.tokens.items()):
            lines.append(f"tokens:    {model}: {tokens_in} in / {tokens_out} out, est. ${cost.get(model, 0):.4f}")
        lines.append("time (s):  " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()))
        return "\n".join(lines)


def _gate(spec: Spec, store: Store, summary: BuildSummary, stage: str, rows: Any, **facts: Any) -> None:
    """Run the stage's suite on its rows (records or a DataFrame); record the result; stop the run
    when it fails."""
    from expectations.gate import GateContext, enforce, run_gate

    if isinstance(rows, pd.DataFrame):
        frame = rows
    else:
        frame = pd.DataFrame([r.model_dump() if hasattr(r, "model_dump") else r for r in rows])
    context = GateContext.from_spec(spec, **facts)
    result = run_gate(stage, frame, context)
    summary.gates[stage] = result.to_dict()
    store.write_json(f"gates/{stage}.json", result.to_dict())
    try:
        from prefect.artifacts import create_table_artifact

        create_table_artifact(
            key=f"gate-{stage}".replace("_", "-"),
            table=result.table(),
            description=f"Great Expectations gate `{stage}`: {'passed' if result.passed else 'FAILED'}",
        )
    except Exception:  # noqa: BLE001 - artifacts are best effort outside a server
        pass
    enforce(result)


# --------------------------------------------------------------------------- the flow


def _report_of(future: Any) -> dict[str, Any]:
    """A shard's report, also from a shard that ended Failed because some of its units failed
    (the report is the state's data). A shard that crashed re-raises."""
    future.wait()  # sets the future's final state from the task's own result, not from the API
    data = future.state.result(raise_on_failure=False)
    if isinstance(data, BaseException):
        raise data
    return data


def _run_shards(
    shard_task: Any, spec: Spec, shards: list[int], run_id: str, summary: BuildSummary
) -> list[dict[str, Any]]:
    """Run one task per shard, ``execution.parallel_shards`` at a time (the flow's thread pool is
    larger), adding each report to the summary as it arrives. When a shard crashes, no new shard
    starts; the running ones finish (their reports are kept) and the first crash is raised."""
    from prefect.futures import as_completed

    queue = list(shards)
    running: list[Any] = []
    reports: list[dict[str, Any]] = []
    crash: BaseException | None = None
    while running or (queue and crash is None):
        while queue and crash is None and len(running) < spec.execution.parallel_shards:
            running.append(shard_task.submit(spec, queue.pop(0), run_id))
        finished = next(as_completed(running))
        running.remove(finished)
        try:
            report = _report_of(finished)
        except BaseException as exc:  # noqa: BLE001 - re-raised once the running shards are done
            crash = crash or exc
            continue
        reports.append(report)
        summary.add_reports([report])
    if crash is not None:
        raise crash
    return reports


def _compact(store: Store, stage: str, model: type, key: str) -> None:
    """Merge a stage's checkpoint parts (and its failure log's) once the stage's shards are done,
    so later reads open a few files rather than one per checkpoint."""
    from infra.checkpoint import failure_log

    store.results(stage, model, key).compact()
    failure_log(store, stage).compact()


def _pending_generation(store: Store, requests: list[CompletionRequest]) -> list[CompletionRequest]:
    from tasks.generate.generate import STAGE as COMPLETIONS

    done = store.results(COMPLETIONS, Completion, key="request_id").keys()
    return [r for r in requests if r.request_id not in done]


def run_build(spec: Spec) -> str:
    """Run every stage of ``spec`` and return the published release's URI.

    The summary (counts, failures by reason, tokens, time per stage) is reported whether the run
    publishes or stops: a stopped run is the one whose summary matters most.
    """
    from infra.llm.factory import check_backends
    from tasks.assign.assign import prompt_format_versions

    prompt_format_versions(spec)  # an unknown prompt format is a spec error: fail before any work
    check_backends(spec)  # a missing API key too
    store = store_for(spec)
    store.delete("gates")  # gate results describe the current run only
    summary = BuildSummary()
    release: dict[str, Any] | None = None
    stopped: BaseException | None = None
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    try:
        release = _run_stages(spec, store, summary, run_id)
    except BaseException as exc:
        stopped = exc
        raise
    finally:
        store.delete(work_root(run_id))  # this run's plans; results live in the stage logs
        _report(spec, store, summary, release, stopped)
    return release["uri"]


def _run_stages(spec: Spec, store: Store, summary: BuildSummary, run_id: str) -> dict[str, Any]:
    from tasks.annotate.annotate import ANNOTATIONS, CRITIQUES, jobs_table, plan_jobs
    from tasks.annotate.task import annotate_shard_task, score_task
    from tasks.assign.task import assign_task
    from tasks.generate.generate import STAGE as COMPLETIONS
    from tasks.generate.task import generate_shard_task
    from tasks.ingest.task import ingest_task

    logger = get_run_logger()
    k = spec.completions_per_instruction

    with summary.stage("ingest"):
        ingested = ingest_task(spec)
        instructions = read_instructions(store)
        summary.counts["instructions"] = len(instructions)
        summary.counts["quarantined"] = ingested["quarantined"]
        summary.counts["dropped"] = ingested["dropped"]
        _gate(
            spec,
            store,
            summary,
            "ingest",
            list(instructions.values()),
            quarantined=ingested["quarantined"],
            quarantine_examples=ingested["quarantine_examples"],
        )

    with summary.stage("assign"):
        assigned = assign_task(spec)
        summary.counts["shards"] = len(assigned["shards"])
        requests = read_requests(store)
        summary.counts["requests"] = len(requests)
        _gate(spec, store, summary, "assign", requests, expected_rows=len(instructions) * k)

    with summary.stage("generate"):
        pending = _pending_generation(store, requests)
        by_shard = requests_by_shard(pending)
        write_work(store, run_id, COMPLETIONS, by_shard)
        shards = list(by_shard)
        logger.info("generate: %d of %d requests to run in %d shards", len(pending), len(requests), len(shards))
        with stage_bar(COMPLETIONS, len(pending)):
            _run_shards(generate_shard_task, spec, shards, run_id, summary)
        _compact(store, COMPLETIONS, Completion, "request_id")
        request_ids = {r.request_id for r in requests}
        completions = {
            c.request_id: c
            for c in (Completion(**row) for row in store.results(COMPLETIONS, Completion, key="request_id").rows())
            if c.request_id in request_ids
        }
        summary.counts["completions"] = len(completions)
        _gate(
            spec,
            store,
            summary,
            "generate",
            list(completions.values()),
            expected_rows=len(requests),
        )

    with summary.stage("annotate"):
        done_annotations = store.results(ANNOTATIONS, AspectAnnotation, key="annotation_key").keys()
        done_critiques = store.results(CRITIQUES, Critique, key="critique_key").keys()
        aspect_jobs, critique_jobs = plan_jobs(
            spec, requests, instructions, completions, done_annotations, done_critiques
        )
        shard_of = {r.request_id: r.shard for r in requests}
        jobs_by_shard: dict[int, tuple[list, list]] = {}
        for job in aspect_jobs:
            jobs_by_shard.setdefault(shard_of[job.completion_ids[0]], ([], []))[0].append(job)
        for job in critique_jobs:
            jobs_by_shard.setdefault(job.request.shard, ([], []))[1].append(job)
        write_work(store, run_id, ANNOTATIONS, {n: jobs_table(*jobs) for n, jobs in jobs_by_shard.items()})
        todo = set(jobs_by_shard)
        with stage_bar(ANNOTATIONS, len(aspect_jobs) + len(critique_jobs)):
            _run_shards(annotate_shard_task, spec, sorted(todo), run_id, summary)
        _compact(store, ANNOTATIONS, AspectAnnotation, "annotation_key")
        _compact(store, CRITIQUES, Critique, "critique_key")
        score_task(spec)
        scored = read_scored(store)
        summary.counts["scored_completions"] = len(scored)
        _gate(
            spec,
            store,
            summary,
            "annotate",
            scored,
            expected_rows=len(completions),
            aspects=list(spec.judge.aspects),
            critique=spec.judge.critique,
        )

    with summary.stage("aggregate"):
        from tasks.aggregate.task import aggregate_task

        aggregated = aggregate_task(spec)
        leaderboard = pd.DataFrame(aggregated["leaderboard"])
        _gate(spec, store, summary, "aggregate", leaderboard, expected_completions=len(scored))

    with summary.stage("pairs"):
        from tasks.pairs.task import pairs_task

        pairs_info = pairs_task(spec)
        summary.counts["pairs"] = pairs_info["pairs"]
        summary.counts["binarized"] = pairs_info["binarized"]
        for reason, count in pairs_info["binarize_dropped"].items():
            summary.counts[f"binarize_dropped:{reason}"] = count
        from tasks.pairs.task import read_binarized, read_pairs

        _gate(spec, store, summary, "pairs", read_pairs(store))
        _gate(
            spec,
            store,
            summary,
            "binarized",
            read_binarized(store),
            strict_binarized=spec.binarize.rule == "argilla",
        )

    with summary.stage("publish"):
        from tasks.publish.task import publish_task

        release = publish_task(spec, aggregated, summary.gates, summary.to_dict(spec))

    return release


def _report(
    spec: Spec,
    store: Store,
    summary: BuildSummary,
    release: dict[str, Any] | None,
    stopped: BaseException | None,
) -> None:
    text = summary.render(spec)
    if release is not None:
        text += f"\nrelease:   v{release['version']} {release['uri']}"
    else:
        reason = f"{type(stopped).__name__}: {str(stopped).splitlines()[0] if str(stopped) else ''}"
        text += f"\nrelease:   none: the run stopped ({reason})"
    print(text, file=sys.stderr)
    data = summary.to_dict(spec)
    data["release"] = release["uri"] if release else None
    data["stopped"] = None if stopped is None else f"{type(stopped).__name__}: {stopped}"
    try:
        store.write_json("runs/last.json", data)
    except Exception as exc:  # noqa: BLE001 - never mask why the run stopped
        print(f"warning: could not record the run summary in the store: {exc}", file=sys.stderr)
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(key="build-summary", markdown=f"```\n{text}\n```", description=f"build of {spec.name}")
    except Exception:  # noqa: BLE001 - artifacts are best effort
        pass


# threads are created on demand; how many shards run at once is the spec's execution.parallel_shards
@flow(name="build", task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_SHARDS))
def build(
    spec_path: str = "deployments/specs/demo.yaml",
    overrides: list[str] | None = None,
    spec_data: dict[str, Any] | None = None,
) -> str:
    """Build a preference dataset from a spec file (or an inline spec) and publish a release.

    Args:
        spec_path: the spec YAML (relative to the working directory of the flow run).
        overrides: dotted-path overrides, e.g. ``["endpoints.openai.base_url=http://..."]``.
        spec_data: an inline spec mapping used instead of ``spec_path`` when given.
    """
    if spec_data is not None:
        from ultrafeedback.spec import apply_override, parse_override

        data = copy.deepcopy(spec_data)
        for text in overrides or []:
            apply_override(data, *parse_override(text))
        spec = validate_dict(data, origin="spec_data")
    else:
        spec = load_spec(spec_path, overrides)
    return run_build(spec)
