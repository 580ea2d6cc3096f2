"""The whole paper build at 1%, 10% and 100% of its 63,967 instructions, against the simulator.

    .venv/bin/python benchmarks/bench_scale.py                        # 1%, 10% and 100%
    .venv/bin/python benchmarks/bench_scale.py --fractions 0.01 --out scale-1pct.json

For each fraction it writes synthetic sources for the 6 sources of
``deployments/specs/ultrafeedback.yaml`` (quotas scaled; see ``scale_inputs.py``), then runs
``ultrafeedback build`` on that spec (17 models, k = 4, critique on) as a subprocess, with every
endpoint pointed at one simulator running in its own process (``ultrafeedback simulate``) and given
the same ``max_in_flight`` (``--in-flight``) and no rate limits. It reports:

- per stage (from the run summary the build keeps in ``runs/last.json``, whatever its stage names):
  wall time, requests and requests per second (counted by the simulator, per kind), time per
  request, and for the stages that call the endpoints the ratio to the **bare-client floor**: right
  after the build, a minimal asyncio + aiohttp client sends the same number of requests per model
  (generation) and per kind (judge) to the same simulator, with one in-flight budget per endpoint
  of the same size, and is timed. Ratio = floor time / stage time (1.0 = as fast as a bare client);
- the peak RSS of the build's whole process tree (sampled every 0.5 s; the Prefect server, Dask
  workers and any other child included), the store's size and file count;
- the no-op rerun: the same build on the same store, timed, with the simulator's request counter
  read before and after (a finished build must send nothing).

A build that fails (non-zero exit, timeout) is reported with its exit code, the stage it stopped in
and the last lines of its log, and the benchmark goes on to the next fraction. The simulator and
every process the benchmark started are stopped at the end, also on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_inputs import PAPER_SPEC, floor_bodies, write_sources  # noqa: E402

PAPER_INSTRUCTIONS = 63_967
GIB = 1024**3
POLL_S = 0.5
JUDGE_KINDS = ("judge_aspect", "critique")
LLM_KINDS = ("generation", *JUDGE_KINDS)
# Acceptance figures of the scale issue (printed as PASS/FAIL when the fractions they need ran).
MAX_RSS_GROWTH, MAX_RSS_GIB = 1.5, 3.0
MAX_TIME_PER_REQUEST_GROWTH = 1.25
MIN_FLOOR_RATIO = 0.8
MAX_NOOP_RERUN_S = 60.0
PIPELINE_ORDER = ("ingest", "assign", "generate", "annotate", "score", "aggregate", "pairs", "publish")


# ------------------------------------------------------------------------------------- processes
def _cli() -> list[str]:
    local = ROOT / ".venv" / "bin" / "ultrafeedback"
    if local.exists():
        return [str(local)]
    found = shutil.which("ultrafeedback")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from ultrafeedback.cli import main; sys.exit(main())"]


def _tree(pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def stop_tree(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """Stop a process this script started and every process below it: SIGTERM, then SIGKILL."""
    import psutil

    members = _tree(process.pid)
    for member in members:
        with contextlib.suppress(psutil.Error):
            member.terminate()
    _, alive = psutil.wait_procs(members, timeout=grace_s)
    for member in alive:
        with contextlib.suppress(psutil.Error):
            member.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


class RssMonitor(threading.Thread):
    """Peak RSS of a process and all its descendants, summed, sampled every ``POLL_S`` seconds; and
    the CPU seconds (user + system) each of them used, as last sampled (a process that lives less
    than ``POLL_S`` may be missed)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_tree = 0
        self.peak_main = 0
        self.peak_processes = 0
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (role, CPU seconds)
        self._stop_event = threading.Event()

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds per kind of process: main, prefect-server, worker (spawned pools), other."""
        out: Counter[str] = Counter()
        for role, seconds in self.cpu.values():
            out[role] += seconds
        return {role: round(seconds, 2) for role, seconds in out.items()}

    def sample(self) -> None:
        import psutil

        total = 0
        members = _tree(self.pid)
        for member in members:
            with contextlib.suppress(psutil.Error):
                rss = member.memory_info().rss
                total += rss
                if member.pid == self.pid:
                    self.peak_main = max(self.peak_main, rss)
                times = member.cpu_times()
                role = self.cpu.get(member.pid, ("", 0.0))[0] or _role(member, self.pid)
                self.cpu[member.pid] = (role, times.user + times.system)
        self.peak_tree = max(self.peak_tree, total)
        self.peak_processes = max(self.peak_processes, len(members))

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(POLL_S)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def _role(member: Any, main_pid: int) -> str:
    """What a process of the build's tree is, from its command line."""
    if member.pid == main_pid:
        return "main"
    command = " ".join(member.cmdline())
    if "uvicorn" in command or "prefect" in command and "server" in command:
        return "prefect-server"
    if "multiprocessing" in command:
        return "worker"
    return "other"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants."""
    import psutil

    total = 0.0
    for member in _tree(pid):
        with contextlib.suppress(psutil.Error):
            times = member.cpu_times()
            total += times.user + times.system
    return total


class SimulatorProcess:
    """``ultrafeedback simulate`` on 127.0.0.1 (a free port) in its own process."""

    def __init__(self, latency_ms: float, log: Path) -> None:
        self.latency_ms = latency_ms
        self.log = log
        self.process: subprocess.Popen | None = None
        self.url = ""  # the OpenAI base URL, .../v1

    def __enter__(self) -> SimulatorProcess:
        command = [*_cli(), "simulate", "--host", "127.0.0.1", "--port", "0", "--latency-ms", f"{self.latency_ms:g}"]
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            words = self.log.read_text().split()
            url = next((w for w in words if w.startswith("http://")), None)
            if url:
                self.url = url.rstrip("/")
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"the simulator did not start: {self.log.read_text()[-2000:]!r}")

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_tree(self.process, grace_s=10)
        self.process = None

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    def reset(self) -> None:
        """Zero the counters (and the running maximum of requests in flight)."""
        request = urllib.request.Request(f"{self.root}/stats/reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.root}/stats", timeout=30) as response:
            return json.loads(response.read())


def stats_delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """Requests the simulator received between two ``/stats`` documents."""
    out: dict[str, Any] = {"total": after["total"] - before["total"]}
    for key in ("by_kind", "by_model", "by_endpoint", "faults", "statuses"):
        diff = Counter(after.get(key) or {})
        diff.subtract(Counter(before.get(key) or {}))
        out[key] = {k: v for k, v in diff.items() if v}
    out["max_in_flight"] = after.get("max_in_flight")
    return out


# ------------------------------------------------------------------------------------- the build
def build_overrides(
    spec: dict[str, Any], store: Path, sources: list[dict[str, Any]], url: str, args: argparse.Namespace
) -> tuple[list[str], dict[str, Any]]:
    """The ``--set`` overrides for one fraction, and the execution settings they chose."""
    instructions = sum(s["quota"] for s in sources)
    shard_size = args.shard_size or min(int(spec["execution"].get("shard_size", 1000)), max(25, -(-instructions // 8)))
    test_size = spec.get("binarize", {}).get("test_size", 0.1)
    if isinstance(test_size, int) and test_size >= 1:  # a row count: scale it with the data
        test_size = max(2, round(test_size * instructions / PAPER_INSTRUCTIONS))
    overrides = [f"store={store}"]
    for source in sources:
        name = source["name"]
        overrides += [f"sources.{name}.loader=jsonl", f"sources.{name}.path={source['path']}"]
        overrides.append(f"sources.{name}.quota={source['quota']}")
    for name in spec["endpoints"]:
        overrides += [
            f"endpoints.{name}.base_url={url}",
            f"endpoints.{name}.max_in_flight={args.in_flight}",
            f"endpoints.{name}.requests_per_minute=null",
            f"endpoints.{name}.tokens_per_minute=null",
        ]
    overrides += [
        f"gates.min_instructions={math.floor(instructions * 0.95)}",
        "gates.min_pairs=1",
        f"binarize.test_size={test_size}",
        f"execution.shard_size={shard_size}",
        f"execution.parallel_shards={args.parallel_shards}",
    ]
    return overrides, {"instructions": instructions, "shard_size": shard_size, "test_size": test_size}


def build_env(spec: dict[str, Any], prefect_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    for endpoint in spec["endpoints"].values():  # placeholder keys: the simulator accepts any
        if endpoint.get("api_key_env"):
            env[endpoint["api_key_env"]] = "simulated"
    env.update(
        PREFECT_HOME=str(prefect_home),
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        ULTRAFEEDBACK_PROGRESS="0",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    return env


def run_build(
    overrides: list[str], env: dict[str, str], log: Path, timeout_s: float, sim_pid: int | None = None
) -> dict[str, Any]:
    """Run ``ultrafeedback build`` on the paper spec; wall time, exit code and peak RSS of its tree."""
    command = [*_cli(), "build", str(PAPER_SPEC)]
    for override in overrides:
        command += ["--set", override]
    with log.open("w") as out:
        started = time.monotonic()
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True
        )
        monitor = RssMonitor(process.pid)
        monitor.start()
        sim_cpu = cpu_seconds(sim_pid) if sim_pid else None
        timed_out = False
        try:
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                stop_tree(process)
        except BaseException:  # Ctrl-C or SIGTERM: leave nothing running
            stop_tree(process)
            raise
        finally:
            monitor.stop()
        wall = time.monotonic() - started
    lines = log.read_text(errors="replace").splitlines()
    return {
        "exit_code": process.returncode,
        "timed_out": timed_out,
        "wall_s": round(wall, 2),
        "peak_rss_tree_bytes": monitor.peak_tree,
        "peak_rss_main_bytes": monitor.peak_main,
        "peak_processes": monitor.peak_processes,
        "cpu_s": monitor.cpu_by_role(),
        "simulator_cpu_s": round(cpu_seconds(sim_pid) - sim_cpu, 2) if sim_pid and sim_cpu is not None else None,
        "release": next((line.strip() for line in reversed(lines) if "releases/v" in line), None),
        "log_tail": lines[-15:],
    }


def read_summary(store: Path, name: str) -> dict[str, Any] | None:
    path = store / name / "runs" / "last.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def store_usage(store: Path) -> tuple[int, int]:
    size = files = 0
    for folder, _, names in os.walk(store):
        for name in names:
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(folder, name)).st_size
                files += 1
    return size, files


# ------------------------------------------------------------------------------------- the floor
def _round_robin(jobs: list[tuple[list[tuple[str, bytes]], int]]) -> Iterator[tuple[str, bytes]]:
    """``count`` bodies of each job (cycling through its distinct bodies), the jobs interleaved."""
    remaining = [count for _, count in jobs]
    sent = [0] * len(jobs)
    while any(remaining):
        for j, (items, _) in enumerate(jobs):
            if remaining[j]:
                yield items[sent[j] % len(items)]
                sent[j] += 1
                remaining[j] -= 1


async def _send_all(session: Any, base: str, bodies: Iterator[tuple[str, bytes]], slots: int, errors: Counter) -> None:
    """POST every body, ``slots`` at a time (one worker coroutine per slot)."""
    headers = {"Content-Type": "application/json", "Authorization": "Bearer simulated"}

    async def worker() -> None:
        for path, body in bodies:  # one shared iterator: next() never awaits, so no body goes twice
            try:
                async with session.post(f"{base}/{path}", data=body, headers=headers) as response:
                    raw = await response.read()
                    if response.status != 200:
                        errors[f"http_{response.status}"] += 1
                    elif not json.loads(raw).get("choices"):
                        errors["no_choices"] += 1
            except Exception as exc:  # noqa: BLE001 - a floor request that fails is counted, not fatal
                errors[type(exc).__name__] += 1

    await asyncio.gather(*(worker() for _ in range(slots)))


async def _phase(
    base: str, plan: dict[str, list[tuple[list[tuple[str, bytes]], int]]], in_flight: int, sim_pid: int | None = None
) -> dict:
    """Send one phase, every endpoint at once with ``in_flight`` slots each (its models share them); time it."""
    import aiohttp

    errors: Counter[str] = Counter()
    sent = sum(count for jobs in plan.values() for _, count in jobs)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        started = time.perf_counter()
        cpu = time.process_time()
        sim_cpu = cpu_seconds(sim_pid) if sim_pid else None
        runs = [
            _send_all(session, base, _round_robin(jobs), min(in_flight, sum(c for _, c in jobs)), errors)
            for jobs in plan.values()
            if any(count for _, count in jobs)
        ]
        await asyncio.gather(*runs)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        sim_cpu = cpu_seconds(sim_pid) - sim_cpu if sim_pid and sim_cpu is not None else None
    return {
        "requests": sent,
        "seconds": round(seconds, 3),
        "errors": dict(errors),
        "client_cpu_s": round(cpu, 2),
        "simulator_cpu_s": round(sim_cpu, 2) if sim_cpu is not None else None,
    }


def bare_floor(spec: dict[str, Any], delta: dict[str, Any], sim: SimulatorProcess, in_flight: int) -> dict[str, Any]:
    """Replay the build's request mix with a bare aiohttp client: generation, then the judge calls."""
    bodies, faithful = floor_bodies(spec)
    judge = spec.get("judge") or {}
    judge_model = judge.get("model")
    by_kind = delta.get("by_kind", {})
    judge_total = sum(by_kind.get(k, 0) for k in JUDGE_KINDS)
    endpoint_of = {(m.get("model") or m["id"]): m.get("endpoint") or "default" for m in spec["models"]}
    generation: dict[str, list[tuple[list[tuple[str, bytes]], int]]] = {}
    for model, count in delta.get("by_model", {}).items():
        count -= judge_total if model == judge_model else 0
        if count > 0:
            items = bodies.get(model) or bodies[next(iter(endpoint_of))]
            generation.setdefault(endpoint_of.get(model, "default"), []).append((items, count))
    judge_plan = {
        judge.get("endpoint") or "judge": [
            (bodies["judge:aspect"], by_kind.get("judge_aspect", 0)),
            (bodies["judge:critique"], by_kind.get("critique", 0)),
        ]
    }
    # the overlapped stages' floor: generation and judge calls at once, each endpoint's budget shared
    # by every model and the judge on it, as in the build
    pipeline: dict[str, list[tuple[list[tuple[str, bytes]], int]]] = {}
    for plan in (generation, judge_plan):
        for endpoint, jobs in plan.items():
            pipeline.setdefault(endpoint, []).extend(jobs)
    out = {"faithful_bodies": faithful, "in_flight_per_endpoint": in_flight}
    for phase, plan in (("generation", generation), ("judge", judge_plan), ("pipeline", pipeline)):
        sim.reset()
        out[phase] = asyncio.run(_phase(sim.url, plan, in_flight, sim.process.pid if sim.process else None))
        out[phase]["max_in_flight"] = sim.stats().get("max_in_flight")
    return out


# ------------------------------------------------------------------------------------- per stage
def _kind_stage(seconds: dict[str, float]) -> dict[str, str | None]:
    """Which stage of the summary sent each kind of request (by stage name; names may change)."""

    def first(*needles: str) -> str | None:
        return next((s for s in seconds if any(n in s.lower() for n in needles)), None)

    judge = first("annot", "judg", "rating")
    return {
        "generation": first("generat", "complet"),
        "judge_aspect": judge,
        "critique": first("critiq") or judge,
    }


def ordered_stages(seconds: dict[str, float]) -> dict[str, float]:
    """The summary's stage times in pipeline order (the stored JSON sorts its keys); unknown names last."""
    rank = {name: i for i, name in enumerate(PIPELINE_ORDER)}
    return dict(sorted(seconds.items(), key=lambda item: rank.get(item[0], len(rank))))


def stage_rows(
    summary: dict[str, Any] | None, delta: dict[str, Any], floor: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """One row per stage: seconds, requests (simulator), req/s, ms per request, floor ratio."""
    seconds = ordered_stages((summary or {}).get("seconds") or {})
    busy = (summary or {}).get("busy_seconds") or {}
    by_kind = delta.get("by_kind", {})
    total_requests = sum(by_kind.get(k, 0) for k in LLM_KINDS)
    owner = _kind_stage(seconds)
    floor_kind = {"generation": "generation", "judge_aspect": "judge", "critique": "judge"}
    rows = []
    for stage, secs in seconds.items():
        kinds = [k for k in LLM_KINDS if owner[k] == stage]
        requests = sum(by_kind.get(k, 0) for k in kinds)
        row: dict[str, Any] = {"stage": stage, "seconds": secs, "requests": requests, "kinds": kinds}
        row["req_per_s"] = round(requests / secs, 1) if requests and secs else None
        denominator = requests or total_requests
        row["ms_per_request"] = round(secs * 1000 / denominator, 4) if denominator else None
        row["per_request_of"] = "own requests" if requests else "all requests"
        if busy.get(stage) and denominator:  # an overlapping stage: its shard tasks' wall times, summed
            row["busy_seconds"] = busy[stage]
            row["busy_ms_per_request"] = round(busy[stage] * 1000 / denominator, 4)
        if stage.startswith("pipeline:"):  # overlapping stages: every call, against the concurrent floor
            kinds = list(LLM_KINDS)
            requests = total_requests
            row.update(requests=requests, kinds=kinds, per_request_of="all requests")
            row["req_per_s"] = round(requests / secs, 1) if requests and secs else None
            row["ms_per_request"] = round(secs * 1000 / requests, 4) if requests else None
            if floor and floor.get("pipeline", {}).get("seconds") and secs:
                row["floor_req_per_s"] = round(floor["pipeline"]["requests"] / floor["pipeline"]["seconds"], 1)
                row["floor_ratio"] = round((requests / secs) / row["floor_req_per_s"], 3)
        elif floor and requests:
            phases = {floor_kind[k] for k in kinds}
            floor_requests = sum(floor[p]["requests"] for p in phases)
            floor_seconds = sum(floor[p]["seconds"] for p in phases)
            # same requests in both, so rate ratio = floor seconds / stage seconds (scaled if counts differ)
            if floor_requests and floor_seconds and secs:
                row["floor_req_per_s"] = round(floor_requests / floor_seconds, 1)
                row["floor_ratio"] = round((requests / secs) / (floor_requests / floor_seconds), 3)
        rows.append(row)
    unowned = [k for k in LLM_KINDS if by_kind.get(k) and owner[k] is None]
    if unowned:
        rows.append({"stage": "(not attributed: " + ", ".join(unowned) + ")", "seconds": None,
                     "requests": sum(by_kind[k] for k in unowned), "kinds": unowned})  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------- one fraction
def run_fraction(
    fraction: float, spec: dict[str, Any], sim: SimulatorProcess, workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    label = f"{fraction * 100:g}%"
    folder = workdir / f"fraction-{label.rstrip('%')}"
    for n in range(2, 1000):  # the same fraction twice gets a second folder
        if not folder.exists():
            break
        folder = workdir / f"fraction-{label.rstrip('%')}-{n}"
    store = folder / "store"
    sources = write_sources(folder / "inputs", fraction)
    overrides, chosen = build_overrides(spec, store, sources, sim.url, args)
    result: dict[str, Any] = {"fraction": fraction, "label": label, **chosen, "folder": str(folder)}
    result["sources"] = {s["name"]: s["quota"] for s in sources}
    timeout_s = args.timeout_s or 1800 + 14400 * fraction
    env = build_env(spec, folder / "prefect-home")
    print(
        f"\n== {label}: {chosen['instructions']} instructions, {len(spec['models'])} models, "
        f"k={spec.get('completions_per_instruction')}, critique {'on' if spec['judge'].get('critique') else 'off'}; "
        f"shard_size {chosen['shard_size']} x {args.parallel_shards} parallel; timeout {timeout_s:.0f} s",
        flush=True,
    )
    sim.reset()  # so max_in_flight is this build's
    before = sim.stats()
    sim_pid = sim.process.pid if sim.process else None
    build = run_build(overrides, env, folder / "build.log", timeout_s, sim_pid)
    after = sim.stats()
    delta = stats_delta(after, before)
    summary = read_summary(store, spec["name"])
    result.update(build=build, simulator=delta, summary=summary)
    result["store_bytes"], result["store_files"] = store_usage(store)
    ok = build["exit_code"] == 0 and not build["timed_out"]  # a stopped build may exit 0
    if not ok:
        stages = list(ordered_stages((summary or {}).get("seconds") or {}))
        where = f"in stage {stages[-1]!r}" if stages else "before its first stage"
        why = (summary or {}).get("stopped") or next(
            (line.strip() for line in reversed(build["log_tail"]) if "Error" in line), "no run summary in the store"
        )
        what = "timed out" if build["timed_out"] else f"exit code {build['exit_code']}"
        result["error"] = f"build failed ({what}) {where}: {why}"
        print(f"   FAILED: {result['error']}\n   last lines of {folder / 'build.log'}:", flush=True)
        for line in build["log_tail"]:
            print(f"     | {line}")
    if delta["total"]:
        print(f"   floor: replaying {delta['total']} requests with a bare aiohttp client ...", flush=True)
        try:
            result["floor"] = bare_floor(spec, delta, sim, args.in_flight)
        except Exception as exc:  # noqa: BLE001 - report and go on
            result["floor_error"] = f"{type(exc).__name__}: {exc}"
    result["stages"] = stage_rows(summary, delta, result.get("floor"))
    if ok and not args.no_rerun:
        before = sim.stats()
        rerun = run_build(overrides, env, folder / "rerun.log", timeout_s, sim_pid)
        moved = sim.stats()["total"] - before["total"]
        rerun_summary = read_summary(store, spec["name"])
        rerun.update(
            new_release=rerun["release"] != build["release"],
            simulator_requests=moved,
            stage_seconds=(rerun_summary or {}).get("seconds"),
            requests_sent=(rerun_summary or {}).get("requests_sent"),
        )
        result["rerun"] = rerun
        if rerun["exit_code"] != 0 or rerun["timed_out"]:
            what = "timed out" if rerun["timed_out"] else f"exit code {rerun['exit_code']}"
            result["rerun_error"] = f"no-op rerun failed ({what}): " + (
                (rerun_summary or {}).get("stopped") or "see rerun.log"
            )
        size, files = store_usage(store)
        result["rerun_store_growth_bytes"], result["rerun_store_growth_files"] = (
            size - result["store_bytes"],
            files - result["store_files"],
        )
    report_fraction(result)
    return result


# ------------------------------------------------------------------------------------- reporting
def _gib(value: float | None) -> str:
    return "-" if not value else f"{value / GIB:.2f} GiB"


def _num(value: Any, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def report_fraction(result: dict[str, Any]) -> None:
    build = result["build"]
    status = "ok" if "error" not in result else "FAILED"
    stopped = ", stopped at the timeout" if build["timed_out"] else ""
    print(
        f"   build {status} in {build['wall_s']:.1f} s (exit {build['exit_code']}{stopped}); release {build['release']}"
    )
    kinds = result["simulator"].get("by_kind", {})
    print(
        "   requests at the simulator: "
        + (", ".join(f"{k} {v}" for k, v in kinds.items()) or "none")
        + f"; total {result['simulator']['total']}; max in flight seen {result['simulator'].get('max_in_flight')}"
    )
    if result.get("summary"):
        print(f"   summary requests_sent: {result['summary'].get('requests_sent')}")
    floor = result.get("floor")
    if floor:
        for phase in ("generation", "judge", "pipeline"):
            f = floor[phase]
            rate = f["requests"] / f["seconds"] if f["seconds"] else 0
            print(
                f"   floor {phase}: {f['requests']} requests in {f['seconds']:.1f} s = {rate:.0f} req/s, "
                f"max in flight {f.get('max_in_flight')}; CPU ms/request: "
                f"client {_per(f.get('client_cpu_s'), f['requests'])}, "
                f"simulator {_per(f.get('simulator_cpu_s'), f['requests'])}"
                + (f"; errors {f['errors']}" if f["errors"] else "")
            )
        if not floor["faithful_bodies"]:
            print("   note: the project's prompt builders did not import; the floor used plain bodies")
    if result.get("floor_error"):
        print(f"   floor FAILED: {result['floor_error']}")
    print(
        f"   {'stage':<12} {'seconds':>9} {'requests':>9} {'req/s':>8} {'floor/s':>8} {'ratio':>6} {'ms/req':>8} "
        f"{'busy s':>8} {'busy ms/req':>11}"
    )
    for row in result["stages"]:
        print(
            f"   {row['stage']:<12} {_num(row['seconds']):>9} {row['requests'] or '-':>9} "
            f"{_num(row.get('req_per_s'), '{:.0f}'):>8} {_num(row.get('floor_req_per_s'), '{:.0f}'):>8} "
            f"{_num(row.get('floor_ratio'), '{:.2f}'):>6} {_num(row.get('ms_per_request'), '{:.3f}'):>8} "
            f"{_num(row.get('busy_seconds')):>8} {_num(row.get('busy_ms_per_request'), '{:.3f}'):>11}"
        )
    print(
        "   (ms/req: a stage's time per request it sent; for stages sending none, per request of the build. "
        "Overlapping stages: seconds is the span, first shard's start to last shard's end; busy is the sum "
        "of their shard tasks' wall times)"
    )
    in_stages = sum(row["seconds"] or 0 for row in result["stages"])
    if in_stages:
        print(
            f"   stage times add up to {in_stages:.1f} s of the {build['wall_s']:.1f} s wall time (the rest: process "
            "start, Prefect server, imports, exit; stages that overlap count twice)"
        )
    print(
        f"   peak RSS of the build's process tree {_gib(build['peak_rss_tree_bytes'])} "
        f"(main process {_gib(build['peak_rss_main_bytes'])}, up to {build['peak_processes']} processes); "
        f"store {result['store_bytes'] / 1024**2:.1f} MiB in {result['store_files']} files"
    )
    total = result["simulator"]["total"]
    if build.get("cpu_s") and total:
        roles = ", ".join(f"{role} {secs:.1f} s" for role, secs in sorted(build["cpu_s"].items()))
        print(
            f"   CPU of the build: {sum(build['cpu_s'].values()):.1f} s ({roles}) = "
            f"{_per(sum(build['cpu_s'].values()), total)} ms/request; simulator "
            f"{_per(build.get('simulator_cpu_s'), total)} ms/request"
        )
    rerun = result.get("rerun")
    if rerun:
        stages = ordered_stages(rerun.get("stage_seconds") or {})
        each = ", ".join(f"{name} {secs:.1f}" for name, secs in stages.items())
        print(
            f"   no-op rerun: {rerun['wall_s']:.1f} s (stages {sum(stages.values()):.1f} s: {each}), "
            f"exit {rerun['exit_code']}, {'a NEW release' if rerun['new_release'] else 'no new release'}, "
            f"{rerun['simulator_requests']} requests at the simulator; peak RSS {_gib(rerun['peak_rss_tree_bytes'])}; "
            f"store grew by {result['rerun_store_growth_files']} files"
        )
    if result.get("rerun_error"):
        print(f"   {result['rerun_error']}")


def _per(seconds: float | None, requests: int) -> str:
    """CPU milliseconds per request, as text."""
    return f"{seconds * 1000 / requests:.3f}" if seconds is not None and requests else "-"


def _stage(result: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((row for row in result.get("stages", []) if kind in row.get("kinds", [])), None)


def summary_table(results: list[dict[str, Any]]) -> None:
    print("\n== summary ==")
    header = (
        f"{'fraction':>8} {'instr':>6} {'status':>7} {'build s':>8} {'gen req/s':>9} {'gen/floor':>9} "
        f"{'ann req/s':>9} {'ann/floor':>9} {'peak RSS':>9} {'store MiB':>9} {'files':>6} {'rerun s':>8} "
        f"{'rerun req':>9}"
    )
    print(header)
    for r in results:
        gen, ann = _stage(r, "generation") or {}, _stage(r, "judge_aspect") or {}
        rerun = r.get("rerun") or {}
        print(
            f"{r['label']:>8} {r['instructions']:>6} {'ok' if 'error' not in r else 'FAILED':>7} "
            f"{r['build']['wall_s']:>8.1f} {_num(gen.get('req_per_s'), '{:.0f}'):>9} "
            f"{_num(gen.get('floor_ratio'), '{:.2f}'):>9} {_num(ann.get('req_per_s'), '{:.0f}'):>9} "
            f"{_num(ann.get('floor_ratio'), '{:.2f}'):>9} {r['build']['peak_rss_tree_bytes'] / GIB:>8.2f}G "
            f"{r['store_bytes'] / 1024**2:>9.1f} {r['store_files']:>6} {_num(rerun.get('wall_s')):>8} "
            f"{_num(rerun.get('simulator_requests'), '{}'):>9}"
        )
    for r in results:
        if r.get("error"):
            print(f"{r['label']}: {r['error']}")


def acceptance(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scale issue's acceptance figures, for the fractions that ran (largest vs the next one)."""
    checks: list[dict[str, Any]] = []
    infos: list[str] = []

    def check(name: str, value: Any, passed: bool) -> None:
        checks.append({"check": name, "value": value, "pass": passed})

    done = sorted((r for r in results if "error" not in r), key=lambda r: r["fraction"])
    for r in done:
        for kind, what in (("generation", "generation"), ("judge_aspect", "annotation")):
            row = _stage(r, kind)
            if row and row.get("floor_ratio") is not None:
                check(f"{r['label']} {what} >= {MIN_FLOOR_RATIO} of the bare-client floor", row["floor_ratio"],
                      row["floor_ratio"] >= MIN_FLOOR_RATIO)  # fmt: skip
        pipeline = next((row for row in r["stages"] if str(row["stage"]).startswith("pipeline:")), None)
        if pipeline and pipeline.get("floor_ratio") is not None:
            check(f"{r['label']} overlapped generation + annotation >= {MIN_FLOOR_RATIO} of the concurrent floor",
                  pipeline["floor_ratio"], pipeline["floor_ratio"] >= MIN_FLOOR_RATIO)  # fmt: skip
        rerun = r.get("rerun")
        if rerun:
            check(
                f"{r['label']} no-op rerun < {MAX_NOOP_RERUN_S:g} s",
                rerun["wall_s"],
                rerun["wall_s"] < MAX_NOOP_RERUN_S,
            )
            check(
                f"{r['label']} no-op rerun sends nothing", rerun["simulator_requests"], rerun["simulator_requests"] == 0
            )
    if len(done) >= 2:
        small, big = done[-2], done[-1]
        pair = f"{big['label']} vs {small['label']}"
        growth = big["build"]["peak_rss_tree_bytes"] / max(1, small["build"]["peak_rss_tree_bytes"])
        check(f"peak RSS {pair} <= {MAX_RSS_GROWTH}x", round(growth, 3), growth <= MAX_RSS_GROWTH)
        peak = big["build"]["peak_rss_tree_bytes"] / GIB
        check(f"peak RSS at {big['label']} < {MAX_RSS_GIB:g} GiB", round(peak, 3), peak < MAX_RSS_GIB)
        smaller = {row["stage"]: row for row in small["stages"]}
        for row in big["stages"]:
            other = smaller.get(row["stage"])
            # an overlapping stage by its shard tasks (its span also counts the wait for the stages before
            # it, a share that shrinks as the build grows); the pipeline row is the overlapping stages' span
            field = "busy_ms_per_request" if row.get("busy_ms_per_request") else "ms_per_request"
            if other and row.get(field) and other.get(field):
                growth = row[field] / other[field]
                what = "time per request" if field == "ms_per_request" else "shard-task time per request"
                check(f"{row['stage']} {what} {pair} <= {MAX_TIME_PER_REQUEST_GROWTH}x", round(growth, 3),
                      growth <= MAX_TIME_PER_REQUEST_GROWTH)  # fmt: skip
                if field != "ms_per_request" and row.get("ms_per_request") and other.get("ms_per_request"):
                    span = row["ms_per_request"] / other["ms_per_request"]
                    infos.append(f"info  {row['stage']} span per request {pair}: {span:.3f}x")
    if checks:
        print("\n== acceptance (the scale issue's figures) ==")
        for c in checks:
            print(f"{'PASS' if c['pass'] else 'FAIL'}  {c['check']}: {c['value']}")
        for line in infos:
            print(line)
    return checks


def machine() -> dict[str, Any]:
    import psutil

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True)  # fmt: skip
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "commit": (commit.stdout.strip() or "unknown (not a git checkout)")
        + ("+uncommitted changes" if dirty.stdout.strip() else ""),
        "load_average": os.getloadavg(),
    }


# ------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", default="0.01,0.1,1.0", help="comma-separated (default %(default)s)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="simulator latency (default %(default)s)")
    parser.add_argument(
        "--in-flight",
        type=int,
        default=128,
        help="max_in_flight of every endpoint, and the floor's (default %(default)s)",
    )
    parser.add_argument(
        "--shard-size", type=int, default=0, help="execution.shard_size (default: the spec's, at most 1/8 of the data)"
    )
    parser.add_argument(
        "--parallel-shards", type=int, default=4, help="execution.parallel_shards (default %(default)s)"
    )
    parser.add_argument("--timeout-s", type=float, default=0, help="per build (default 1800 + 14400 x fraction)")
    parser.add_argument("--no-rerun", action="store_true", help="skip the no-op rerun")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (stores, inputs, logs)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to work (default: a new temp folder)")
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    args = parser.parse_args(argv)
    try:
        args.fraction_list = [float(f) for f in args.fractions.split(",") if f.strip()]
    except ValueError:
        parser.error(f"--fractions: not a list of numbers: {args.fractions!r}")
    if not args.fraction_list or any(not 0 < f <= 1 for f in args.fraction_list):
        parser.error("--fractions: each fraction must be in (0, 1]")
    return args


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # a killed benchmark still stops its processes
    spec = yaml.safe_load(PAPER_SPEC.read_text())
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="uf-bench-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(
        f"bench_scale: fractions {args.fraction_list} of {PAPER_INSTRUCTIONS} instructions; simulator latency "
        f"{args.latency_ms:g} ms; max_in_flight {args.in_flight} per endpoint ({', '.join(spec['endpoints'])}), "
        f"no rate limits; machine {info['cpus']} CPUs, {info['memory_gib']} GiB, load average "
        f"{info['load_average'][0]:.1f}; commit {info['commit']}; "
        f"work folder {workdir}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    interrupted = False
    try:
        with SimulatorProcess(args.latency_ms, workdir / "simulator.log") as sim:
            print(f"simulator at {sim.url} (pid {sim.process.pid if sim.process else '?'})", flush=True)
            for fraction in args.fraction_list:
                try:
                    results.append(run_fraction(fraction, spec, sim, workdir, args))
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # noqa: BLE001 - report it and go on to the next fraction
                    print(f"   FAILED: {fraction:g}: {type(exc).__name__}: {exc}", flush=True)
                    results.append({"fraction": fraction, "error": f"{type(exc).__name__}: {exc}"})
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: the simulator and the build were stopped", file=sys.stderr)
    finally:
        complete = [r for r in results if "build" in r]
        if complete:
            summary_table(complete)
        checks = acceptance(complete)
        if args.out:
            settings = {k: v for k, v in vars(args).items() if k not in ("out", "workdir")}
            info["load_average_at_end"] = os.getloadavg()
            document = {"machine": info, "settings": settings, "results": results, "acceptance": checks}
            args.out.write_text(json.dumps(document, indent=2, default=str) + "\n")
            print(f"\nfigures written to {args.out}")
        if args.keep:
            print(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if interrupted:
        return 130
    return 0 if results and all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
