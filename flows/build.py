"""The ``build`` flow: a loop over the stages of ``tasks.stages`` with their Great Expectations
gates: ingest -> assign -> generate -> annotate -> score -> aggregate -> pairs -> publish.

Orchestration only. A sharded stage runs as one Prefect task per shard (never per row), and
consecutive stages marked ``overlap`` run as one pipeline per shard: a shard's annotation starts
as soon as its completions are stored, while other shards still generate. Each shard task also
runs its stage's gate on that shard; the flow merges the shards' results with the stage's summary
checks and stops the run when the merged gate fails. Every stage computes only the missing content
keys, and unchanged shards are skipped by fingerprint, so a rerun of a finished build sends no
request and reads key columns and Parquet footers only.
"""

from __future__ import annotations

import copy
import signal
import sys
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from ultrafeedback.infra import stop
from ultrafeedback.infra.monitor import BuildMonitor, watching
from ultrafeedback.infra.progress import stage_bar
from ultrafeedback.infra.store import Store
from ultrafeedback.outputs import OUTPUTS
from ultrafeedback.spec import Spec, load_spec, validate_dict
from ultrafeedback.tasks.common import store_for
from ultrafeedback.tasks.stages import Gate, Run, ShardReport, Stage, fingerprint

MAX_PARALLEL_SHARDS = 64
PIPELINE_PREFIX = "pipeline:"
"""The summary's wall time of a group of overlapping stages, keyed ``pipeline:generate+annotate+score``."""


class BuildStopped(Exception):
    """The run was stopped (``infra.stop``): what arrived is stored, nothing is published."""


class BuildSummary:
    """Counts, failures, tokens and wall time per stage, for the CLI and the Prefect UI."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.failures: Counter[str] = Counter()
        self.tokens: dict[str, list[int]] = {}
        self.seconds: dict[str, float] = {}
        self.busy: dict[str, float] = {}
        """Overlapping stages: the sum of their shard tasks' wall times (a span also holds the time
        spent waiting for the stages before it)."""
        self.issued: Counter[str] = Counter()
        self.replayed: Counter[str] = Counter()
        self.gates: dict[str, Any] = {}
        self.notes: list[str] = []
        """What a user must know about this run's data (a quota cut that removed released rows)."""

    @contextmanager
    def stage(self, name: str):  # noqa: ANN201
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.monotonic() - started, 3)

    def span(self, name: str, started: float, ended: float) -> None:
        """A stage that overlaps others: its wall time is from its first shard's start to its last
        shard's end."""
        self.seconds[name] = round(ended - started, 3)

    def add_busy(self, name: str, seconds: float) -> None:
        self.busy[name] = round(self.busy.get(name, 0.0) + seconds, 3)

    def add_reports(self, reports: list[dict[str, Any]]) -> None:
        for report in reports:
            if report["issued"]:
                self.issued[report["stage"]] += report["issued"]
            if report.get("replayed"):
                self.replayed[report["stage"]] += report["replayed"]
            for reason, count in report["failed"].items():
                self.failures[f"{report['stage']}:{reason}"] += count
            for model, (tokens_in, tokens_out) in report["tokens"].items():
                pair = self.tokens.setdefault(model, [0, 0])
                pair[0] += tokens_in
                pair[1] += tokens_out

    def cost(self, spec: Spec) -> dict[str, float]:
        prices = {m.id: m.price for m in spec.models}
        from ultrafeedback.tasks.annotate.jobs import judge_model_id

        prices[judge_model_id(spec)] = spec.judge.price
        out = {}
        for model, (tokens_in, tokens_out) in self.tokens.items():
            price = prices.get(model)
            if price is not None:
                from ultrafeedback.infra.budget import batch_factor

                cost = tokens_in / 1e6 * price.input_per_mtok + tokens_out / 1e6 * price.output_per_mtok
                out[model] = round(cost * batch_factor(spec, model), 4)  # the Batch API's discount
        return out

    def to_dict(self, spec: Spec) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "requests_sent": dict(self.issued),
            "answers_replayed": dict(self.replayed),
            "failures": dict(self.failures),
            "tokens": self.tokens,
            "estimated_cost_usd": self.cost(spec),
            "seconds": self.seconds,
            "busy_seconds": self.busy,
            "notes": list(self.notes),
        }

    def render(self, spec: Spec) -> str:
        lines = ["", f"== build summary: {spec.name} =="]
        lines.append("counts:    " + ", ".join(f"{k} {v}" for k, v in self.counts.items()))
        sent = ", ".join(f"{k} {v}" for k, v in self.issued.items()) or "none"
        lines.append(f"calls:     {sent}")
        if self.replayed:
            lines.append(
                "replayed:  "
                + ", ".join(f"{k} {v}" for k, v in self.replayed.items())
                + " (journalled answers of a killed run, not paid again)"
            )
        failures = ", ".join(f"{k} {v}" for k, v in sorted(self.failures.items())) or "none"
        lines.append(f"failures:  {failures}")
        lines += [f"note:      {note}" for note in self.notes]
        cost = self.cost(spec)
        for model, (tokens_in, tokens_out) in sorted(self.tokens.items()):
            lines.append(f"tokens:    {model}: {tokens_in} in / {tokens_out} out, est. ${cost.get(model, 0):.4f}")
        lines.append("time (s):  " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()))
        if self.busy:
            lines.append("shard tasks (s, summed): " + ", ".join(f"{k} {v:.1f}" for k, v in self.busy.items()))
        return "\n".join(lines)


# --------------------------------------------------------------------------- gates


def _unit_name(unit: Any) -> str:
    if isinstance(unit, int):
        return f"shard-{unit:05d}"
    return str(unit).replace("/", "__").removesuffix(".parquet")


def gate_unit(run: Run, gate: Gate, unit: Any) -> Any:
    """Run a gate's suite on one unit (a shard) and keep the result in ``gates/{suite}/``; an
    unchanged unit under an unchanged context reuses the kept result without reading its rows."""
    from ultrafeedback.expectations.gate import GateContext, GateResult

    got = gate.rows(run, unit)
    if got is None:
        return None
    digest, rows = got
    facts = gate.facts(run) if gate.facts else {}
    context = GateContext.from_spec(run.spec, scope=gate.scope, **facts)
    key = fingerprint("gate", gate.suite, digest, context.model_dump_json())
    path = f"gates/{gate.suite}/{_unit_name(unit)}.json"
    kept = run.store.read_json(path)
    if kept and kept.get("key") == key:
        return GateResult(**kept["result"])
    result = _validate(run, gate.suite, rows, context)
    run.store.write_json(path, {"key": key, "result": result.to_dict()})
    return result


def _validate(run: Run, suite: str, rows: Any, context: Any) -> Any:
    """Validate in one of the run's worker processes (``execution.worker_processes``): a validation
    is seconds of Python that would otherwise hold the interpreter lock the API event loop needs.
    Rows a worker can read itself (``WorkerRows``: a file, located result parts) are read there;
    others are read here and sent pickled."""
    from ultrafeedback.expectations.gate import run_gate
    from ultrafeedback.tasks.stages import WorkerRows, validate_rows

    if isinstance(rows, WorkerRows):
        return run.offload(validate_rows, suite, rows, context)
    return run.offload(run_gate, suite, rows(), context)


def _finish_gate(run: Run, summary: BuildSummary, gate: Gate, results: list[Any]) -> None:
    """Merge the units' results with the stage summary; record it; stop the run when it fails."""
    from ultrafeedback.expectations.checks import suite_name
    from ultrafeedback.expectations.gate import enforce
    from ultrafeedback.expectations.summary import merge

    checks = gate.summary(run) if gate.summary else []
    result = merge(gate.suite, suite_name(gate.suite), [r for r in results if r is not None], checks)
    if not result.passed:
        from ultrafeedback.tasks.empty_stage import with_reason_if_empty

        result = with_reason_if_empty(run, gate.suite, _with_failed_requests(run, gate.suite, result))
    summary.gates[gate.suite] = result.to_dict()
    run.store.write_json(f"gates/{gate.suite}.json", result.to_dict())
    _show_gate(run, gate, result)
    enforce(result)


def _show_gate(run: Run, gate: Gate, result: Any) -> None:
    """The gate in the Prefect UI: its checks as a table artifact and a link to its Great
    Expectations Data Docs page, written to the store (``data_docs/``)."""
    from ultrafeedback.infra import artifacts

    dataset = run.spec.name
    docs = _data_docs(run, gate, result) if run.spec.gates.data_docs else None
    description = f"Great Expectations gate `{gate.suite}` of `{dataset}`: {'passed' if result.passed else 'FAILED'}"
    if docs is not None:
        description += f"; Data Docs: {docs['page']}"
        artifacts.link(
            artifacts.artifact_key(dataset, "data-docs", gate.suite),
            artifacts.browsable(docs["page"]),
            f"Data Docs: the {gate.suite} gate of {dataset}",
            f"{description}; every gate of this build: {docs['index']}",
        )
    artifacts.table(artifacts.artifact_key(dataset, "gate", gate.suite), result.table(), description)


def _data_docs(run: Run, gate: Gate, result: Any) -> dict[str, str] | None:
    """Write the gate's Data Docs page (in a worker process, where GX is loaded) and return its
    store URIs (``page``, ``index``); None when that failed (Data Docs never stop a build)."""
    import shutil
    import tempfile
    import weakref

    from ultrafeedback.expectations.data_docs import write_data_docs
    from ultrafeedback.expectations.gate import GateContext

    workdir = run.facts.get("data_docs_workdir")
    if workdir is None:  # the build's local Data Docs project, removed with the run
        workdir = run.facts["data_docs_workdir"] = tempfile.mkdtemp(prefix="uf-data-docs-")
        weakref.finalize(run, shutil.rmtree, workdir, True)
    try:
        facts = gate.facts(run) if gate.facts else {}
        context = GateContext.from_spec(run.spec, scope=gate.scope, **facts)
        return run.offload(write_data_docs, run.store, result, context, run.run_id, workdir)
    except Exception as exc:  # noqa: BLE001
        get_run_logger().warning("%s gate: no Data Docs: %s: %s", gate.suite, type(exc).__name__, exc)
        return None


def _with_failed_requests(run: Run, suite: str, result: Any) -> Any:
    """A failed gate of a stage that calls models also names the stage's open request failures by
    reason (``completions:http_500 12``): why rows are missing, in the gate's own one line."""
    from ultrafeedback.expectations.models import CheckResult
    from ultrafeedback.outputs import FAILED_OUTPUTS
    from ultrafeedback.tasks.aggregate.task import top_failures

    outputs = tuple(name for name in FAILED_OUTPUTS if OUTPUTS[name].stage == suite)
    reasons = top_failures(run.store, outputs=outputs) if outputs else {}
    if not reasons:
        return result
    detail = ", ".join(f"{reason} {count}" for reason, count in reasons.items())
    check = CheckResult(
        name="failed requests",
        passed=False,
        observed=sum(reasons.values()),
        expected="none",
        detail=f"{detail} (`ultrafeedback status SPEC` lists them; a rerun sends them again)",
    )
    return result.model_copy(update={"checks": [*result.checks, check]})


# --------------------------------------------------------------------------- shard tasks


@task(name="shard", cache_policy=NO_CACHE, task_run_name="{stage}-shard-{shard}")
def shard_task(spec: Spec, stage: str, shard: int, run_id: str) -> Any:
    """One stage on one shard, then the stage's gates on that shard. Returns the report and the
    gate results; a Failed state (with them as its data) when some units failed, so the Prefect UI
    marks the shard failed while the flow goes on to the stage's gate."""
    run = Run.get(spec, run_id)
    current = run.stage(stage)
    with watching(run_id, stage, shard):  # start, live progress and end in the Prefect UI
        report: ShardReport = current.run_shard(run, shard)
    gates = {}
    for gate in () if report.stopped else current.gates if not report.waiting else ():
        result = gate_unit(run, gate, shard)
        gates[gate.suite] = None if result is None else result.to_dict()
    from ultrafeedback.infra.budget import for_store as budget_for

    budget = budget_for(run.store)
    if budget is not None:  # execution.max_cost_usd: calls were held back, the run stops
        budget.check()
    return report.as_state(extra={"gates": gates})


def _report_of(future: Any) -> dict[str, Any]:
    """A shard's data, also from a shard that ended Failed because some of its units failed
    (the data is the state's). A shard that crashed re-raises."""
    future.wait()  # sets the future's final state from the task's own result, not from the API
    data = future.state.result(raise_on_failure=False)
    if isinstance(data, BaseException):
        raise data
    return data


def _pipeline_done(run: Run, group: list[Stage], shard: int) -> bool:
    """Every stage of the pipeline says, from key columns and fingerprints, it has nothing to do."""
    try:
        done = all(stage.done is not None and stage.done(run, shard) for stage in group)
    finally:
        run.clear_cache()
    if done:
        from ultrafeedback.infra.monitor import skipped

        skipped(run.run_id, [stage.name for stage in group], shard)
    return done


def _run_pipeline(run: Run, group: list[Stage], summary: BuildSummary) -> dict[str, dict[str, list[Any]]]:
    """Run ``group`` (consecutive sharded stages) as one pipeline per shard: a shard enters the
    next stage as soon as it leaves the previous one; ``execution.parallel_shards`` shards are in
    the pipeline at once. Reports reach the summary as they arrive. When a shard task crashes no
    new shard starts, the running ones finish their current stage (their results are kept) and
    the first crash is raised. Returns stage -> suite -> the shards' gate results.

    When the run stops (``infra.stop``: Ctrl-C, SIGTERM, a cancel from the Prefect UI) no shard
    starts any more and no shard enters its next stage; the running ones stop sending, keep what
    arrived within the grace period and report the calls they made; then the stop is raised:
    ``BuildStopped``, or the interrupt that stopped it (Prefect's ``TerminationSignal`` of a cancel,
    re-raised so that Prefect marks the run cancelled)."""
    from prefect.exceptions import TerminationSignal
    from prefect.futures import as_completed

    from ultrafeedback.expectations.gate import GateResult

    queue = run.shards()
    running: dict[Any, tuple[int, int, float]] = {}
    gates: dict[str, dict[str, list[Any]]] = {stage.name: {} for stage in group}
    spans: dict[str, list[float]] = {}
    crash: BaseException | None = None
    interrupt: BaseException | None = None
    active = 0

    def submit(shard: int, index: int) -> None:
        spans.setdefault(group[index].name, [time.monotonic(), 0.0])
        future = shard_task.submit(run.spec, group[index].name, shard, run.run_id)
        running[future] = (shard, index, time.monotonic())

    def going() -> bool:
        return crash is None and not stop.requested()

    def step() -> None:
        """Start what may start, then take the next finished shard."""
        nonlocal crash, active
        while queue and going() and active < run.spec.execution.parallel_shards:
            shard = queue.pop(0)
            if _pipeline_done(run, group, shard):  # nothing to do: no task, the kept gate results
                for stage in group:
                    for gate in stage.gates:
                        gates[stage.name].setdefault(gate.suite, []).append(gate_unit(run, gate, shard))
                continue
            submit(shard, 0)
            active += 1
        if not running:
            return
        finished = next(as_completed(list(running)))
        shard, index, submitted = running.pop(finished)
        spans[group[index].name][1] = time.monotonic()
        summary.add_busy(group[index].name, spans[group[index].name][1] - submitted)
        try:
            data = _report_of(finished)
        except (KeyboardInterrupt, TerminationSignal):
            raise
        except BaseException as exc:  # noqa: BLE001 - re-raised once the running shards are done
            crash = crash or exc
            active -= 1
            return
        summary.add_reports([data])
        for suite, result in (data.get("gates") or {}).items():
            gates[group[index].name].setdefault(suite, []).append(None if result is None else GateResult(**result))
        if index + 1 < len(group) and not data.get("waiting") and going() and not data.get("stopped"):
            submit(shard, index + 1)
        else:
            active -= 1

    with stop.graceful():
        while running or (queue and going()):
            try:
                step()
            except (KeyboardInterrupt, TerminationSignal) as exc:
                # an interrupt raised here (a deployment run's SIGTERM, a lost lease's SIGINT): stop as a
                # command-line Ctrl-C does; a second one (the stop was already on) stops at once
                name = signal.Signals(getattr(exc, "signal", signal.SIGINT)).name
                if interrupt is not None or not stop.request(f"interrupted ({name})"):
                    raise
                interrupt = exc
                get_run_logger().warning(
                    "%s: stopping: no new request; the requests on the wire get %g s", stop.reason(), stop.grace_s()
                )
    for name, (started, ended) in spans.items():
        summary.span(name, started, ended)
    if len(spans) > 1:  # the stages overlapped: the pipeline's own wall time as well
        summary.span(
            PIPELINE_PREFIX + "+".join(spans), min(s for s, _ in spans.values()), max(e for _, e in spans.values())
        )
    if interrupt is not None:
        raise interrupt
    if stop.requested():
        raise BuildStopped(stop.reason() or "stopped")
    if crash is not None:
        raise crash
    return gates


# --------------------------------------------------------------------------- the build


def run_build(spec: Spec) -> Any:
    """Hold the dataset's lease (``infra.lease``; one run writes a dataset at a time), then build.
    The CLI takes the lease before Prefect starts; this takes it for deployment runs.

    Returns the release's URI, or a Cancelled state when the run was stopped (``infra.stop``):
    the flow run ends Cancelled, and a caller of the flow gets ``prefect.exceptions.CancelledRun``."""
    from prefect.runtime import flow_run
    from prefect.states import Cancelled

    from ultrafeedback.infra.lease import dataset_lease

    stop.reset()  # a new build: no stop yet, with this spec's grace period
    stop.configure(spec.execution.stop_grace_s)
    try:
        with (
            stop.own_sigterm(),
            dataset_lease(store_for(spec), run_id=f"flow-run-{flow_run.id}", notify=get_run_logger().warning),
        ):
            return _build_leased(spec)
    except BuildStopped as exc:
        return Cancelled(message=f"{exc}: the calls made are in the build summary; what arrived is stored")


def _build_leased(spec: Spec) -> str:
    """Run every stage of ``spec`` and return the published release's URI.

    The summary (counts, failures by reason, tokens, time per stage) is reported whether the run
    publishes or stops: a stopped run is the one whose summary matters most.
    """
    from ultrafeedback.infra.llm.factory import check_backends
    from ultrafeedback.tasks.assign.assign import prompt_format_versions

    prompt_format_versions(spec)  # an unknown prompt format is a spec error: fail before any work
    check_backends(spec)  # a missing API key too
    if spec.execution.pools.gpu:  # and a GPU pool without its job deployment
        from ultrafeedback.flows.gpu_jobs import check_gpu_pool

        check_gpu_pool(spec)
    from ultrafeedback.tasks.publish.hub import PushFailed, check_hub_targets

    check_hub_targets(spec)  # and a Hub target that could not be pushed to (no token, a refused one, ...)
    store = store_for(spec)
    for name in store.ls("gates"):  # stage results describe the current run only (shard results are reused)
        if name.endswith(".json"):
            store.delete(f"gates/{name}")
    from ultrafeedback.tasks.publish.task import remove_leftovers

    remove_leftovers(spec)  # a killed publish's staging folders (the lease is held: nobody else publishes)
    summary = BuildSummary()
    stopped: BaseException | None = None
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    run = Run.start(spec, run_id)
    from ultrafeedback.infra import budget

    budget.activate(spec, store)  # execution.max_cost_usd
    try:
        _run_stages(run, summary)
    except BaseException as exc:
        stopped = exc
        raise
    finally:
        run.close()
        Run.forget(run_id)
        budget.deactivate(store)
        _report(spec, store, summary, run.facts.get("release"), stopped)
    release = run.facts["release"]
    if release.get("failed_targets"):  # published to the store, not pushed: the run says so and fails
        raise PushFailed(release, release["failed_targets"])
    return release["uri"]


def _groups(all_stages: list[Stage]) -> list[list[Stage]]:
    """The stages in order, a sharded stage grouped with the ``overlap`` stages that follow it."""
    groups: list[list[Stage]] = []
    for stage in all_stages:
        if groups and stage.sharded and stage.overlap and groups[-1][-1].sharded:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


def _counts(run: Run, summary: BuildSummary, stage: Stage) -> None:
    """The summary's counts after a stage, from run facts and Parquet footers."""
    store, counts, facts = run.store, summary.counts, run.facts

    def rows(name: str) -> int:
        return sum(store.num_rows(OUTPUTS[name].shard_path(s)) for s in run.shards())

    if stage.name == "ingest":
        counts.update(instructions=facts["instructions"], quarantined=facts["quarantined"], dropped=facts["dropped"])
        for reason, count in facts.get("released_removed", {}).items():
            counts[f"released_removed:{reason}"] = count
        summary.notes += facts.get("quota_notes", [])
    elif stage.name == "assign":
        counts.update(shards=len(run.shards()), requests=rows("requests"))
    elif stage.name == "generate":
        done = run.log("completions").index()
        counts["completions"] = sum(1 for i in run.column("requests", "request_id") if i in done)
    elif stage.name == "score":
        counts["scored_completions"] = rows("scored")
    elif stage.name == "pairs":
        info = facts["pairs"]
        counts.update(pairs=info["pairs"], binarized=info["binarized"])
        for reason, count in info["binarize_dropped"].items():
            counts[f"binarize_dropped:{reason}"] = count


def _run_stages(run: Run, summary: BuildSummary) -> None:
    with _monitor(run) as monitor:
        _run_groups(run, summary, monitor)


def _monitor(run: Run) -> BuildMonitor:
    """Progress artifacts per stage, the live calls-and-cost table and the shard log lines."""
    from prefect.context import FlowRunContext

    from ultrafeedback.tasks.annotate.jobs import judge_model_id

    context = FlowRunContext.get()
    flow_run_id = context.flow_run.id if context is not None and context.flow_run is not None else None
    prices = {model.id: model.price for model in run.spec.models}
    prices[judge_model_id(run.spec)] = run.spec.judge.price
    stages = [stage.name for stage in run.stages]
    return BuildMonitor(run.spec.name, run.run_id, stages, prices, flow_run_id, get_run_logger())


def _run_groups(run: Run, summary: BuildSummary, monitor: BuildMonitor) -> None:
    logger = get_run_logger()
    for group in _groups(run.stages):
        if group[0].sharded:
            logger.info("%s: %d shards", " + ".join(s.name for s in group), len(run.shards()))
            for stage in group:
                monitor.stage_started(stage.name, len(run.shards()))
            if run.spec.execution.pools.gpu and any(stage.name == "generate" for stage in group):
                from ultrafeedback.flows.gpu_jobs import run_gpu_jobs

                with summary.stage("gpu_jobs"):  # the open models, per model across shards, on the GPU pool
                    run_gpu_jobs(run, summary)
            with stage_bars([s.name for s in group]):
                from ultrafeedback.flows.batches import run_until_collected  # again while Batch API batches run

                results = run_until_collected(run, group, summary)
            for stage in group:
                _counts(run, summary, stage)
                for gate in stage.gates:
                    _finish_gate(run, summary, gate, results[stage.name].get(gate.suite, []))
                monitor.stage_finished(stage.name)
            continue
        (stage,) = group
        if stage.name == "publish":
            run.facts.update(gates=summary.gates, summary=summary.to_dict(run.spec))
        monitor.stage_started(stage.name)
        with summary.stage(stage.name):
            report = stage.run_shard(run, 0)
            summary.add_reports([report.to_dict()])
            _counts(run, summary, stage)
            for gate in stage.gates:
                _finish_gate(run, summary, gate, [gate_unit(run, gate, u) for u in gate.unit_names(run)])
        monitor.stage_finished(stage.name)
        if stage.name == "publish":  # a link to the release and its plots
            from ultrafeedback.infra.artifacts import show_release

            show_release(run.spec.name, run.facts["release"], run.spec.execution.storage_options)


@contextmanager
def stage_bars(names: list[str]):  # noqa: ANN201
    """A progress bar per stage of a pipeline (calls made; totals are known per shard only)."""
    from contextlib import ExitStack

    with ExitStack() as bars:
        for name in names:
            bars.enter_context(stage_bar(STAGE_CALLS.get(name, name), None))
        yield


STAGE_CALLS = {"generate": "completions", "annotate": "annotations"}
"""The progress key each model-calling stage updates (``infra.progress``)."""


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
        for failure in release.get("failed_targets") or []:
            text += (
                f"\npush:      hub:{failure['repo']} FAILED ({failure['error']}); the release is kept: "
                "`ultrafeedback publish SPEC` pushes it again"
            )
    elif stop.requested():
        text += (
            f"\nrelease:   none: {stop.reason()}: the calls above were made and the answers that arrived are "
            "stored; the next run sends only what is missing"
        )
    else:
        reason = f"{type(stopped).__name__}: {str(stopped).splitlines()[0] if str(stopped) else ''}"
        text += f"\nrelease:   none: the run stopped ({reason})"
    print(text, file=sys.stderr)
    data = summary.to_dict(spec)
    data["release"] = release["uri"] if release else None
    data["stopped"] = None if stopped is None else stop.reason() or f"{type(stopped).__name__}: {stopped}"
    try:
        store.write_json("runs/last.json", data)
    except Exception as exc:  # noqa: BLE001 - never mask why the run stopped
        print(f"warning: could not record the run summary in the store: {exc}", file=sys.stderr)
    try:
        from prefect.artifacts import create_markdown_artifact

        from ultrafeedback.infra.artifacts import artifact_key

        create_markdown_artifact(
            key=artifact_key(spec.name, "build-summary"),
            markdown=f"```\n{text}\n```",
            description=f"build of {spec.name}",
        )
    except Exception:  # noqa: BLE001 - artifacts are best effort
        pass


# threads are created on demand; how many shards run at once is the spec's execution.parallel_shards
@flow(name="build", task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_SHARDS))
def build(
    spec_path: str = "deployments/specs/demo.yaml",
    overrides: list[str] | None = None,
    spec_data: dict[str, Any] | None = None,
    command: str = "build",
) -> str:
    """Build a preference dataset from a spec file (or an inline spec) and publish a release.

    Args:
        spec_path: the spec YAML (relative to the working directory of the flow run).
        overrides: dotted-path overrides, e.g. ``["endpoints.openai.base_url=http://..."]``.
        spec_data: an inline spec mapping used instead of ``spec_path`` when given.
        command: what started it (``build``, ``refresh``, ``retry-failed``): the run is named
            ``{dataset}/{command}`` and tagged with the dataset and the spec hash.
    """
    if spec_data is not None:
        from ultrafeedback.spec import apply_override, parse_override

        data = copy.deepcopy(spec_data)
        for text in overrides or []:
            apply_override(data, *parse_override(text))
        spec = validate_dict(data, origin="spec_data")
    else:
        spec = load_spec(spec_path, overrides)
    from ultrafeedback.infra.artifacts import label_flow_run

    label_flow_run(spec.name, spec.spec_hash(), command)
    return run_build(spec)
