"""Whole-build benchmark against the simulator: per-stage wall time and request throughput.

    .venv/bin/python benchmarks/bench_build.py --instructions 2000 --latency-ms 100 --in-flight 64

Generation and annotation are I/O bound, so the ideal throughput of a stage is
``in_flight / latency`` requests per second: ``max_in_flight`` is the endpoint's budget, shared
by every shard running at once. The script prints the measured rate and its ratio to that ideal,
then re-runs the build and reports the requests the rerun sent (the contract says zero).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
os.environ.setdefault("ULTRAFEEDBACK_PROGRESS", "0")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="uf-bench-prefect-"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_inputs(folder: Path, n: int) -> None:
    topics = ["rivers", "compilers", "bread", "volcanoes", "chess", "bees", "tides", "jazz", "glaciers", "maps"]
    verbs = ["Explain", "Summarise", "Compare", "Describe", "List three facts about", "Write a short note on"]
    with (folder / "instructions.jsonl").open("w") as handle:
        for i in range(n):
            text = f"{verbs[i % len(verbs)]} {topics[i % len(topics)]} (case {i}) for a curious reader."
            handle.write(json.dumps({"prompt": text}) + "\n")


def spec(folder: Path, url: str, args: argparse.Namespace) -> dict:
    return {
        "name": "bench",
        "seed": 1,
        "store": str(folder / "store"),
        "sources": [
            {"name": "bench", "loader": "jsonl", "path": "instructions.jsonl", "fields": {"instruction": "prompt"}}
        ],
        "endpoints": {"sim": {"base_url": url, "max_in_flight": args.in_flight, "timeout_s": 30, "max_retries": 3}},
        "models": [{"id": f"m{i}", "backend": "openai", "endpoint": "sim"} for i in range(6)],
        "completions_per_instruction": 4,
        "sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 64},
        "judge": {"backend": "openai", "endpoint": "sim", "model": "judge"},
        "ingest": {"dedup": "exact"},
        "execution": {"shard_size": args.shard_size, "checkpoint_every": 256},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instructions", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--in-flight", type=int, default=64, help="the endpoint's max_in_flight")
    parser.add_argument("--shard-size", type=int, default=250)
    args = parser.parse_args()

    import yaml
    from prefect.testing.utilities import prefect_test_harness

    from ultrafeedback.flows.build import build
    from ultrafeedback.infra.simulator.config import SimulatorConfig
    from ultrafeedback.infra.simulator.server import Simulator

    folder = Path(tempfile.mkdtemp(prefix="uf-bench-"))
    write_inputs(folder, args.instructions)
    with (
        prefect_test_harness(server_startup_timeout=180),
        Simulator(SimulatorConfig(latency_ms=args.latency_ms, seed=1)) as sim,
    ):
        path = folder / "spec.yaml"
        path.write_text(yaml.safe_dump(spec(folder, sim.url, args)))
        started = time.monotonic()
        uri = build(spec_path=str(path))
        wall = time.monotonic() - started
        first = sim.stats()
        store_summary = json.loads((Path(uri) / "manifest.json").read_text())["build"]
        sim.reset()
        started = time.monotonic()
        build(spec_path=str(path))
        rerun = time.monotonic() - started
        rerun_requests = sim.stats()["total"]

    seconds = store_summary["seconds"]
    ideal = args.in_flight / (args.latency_ms / 1000)
    print(f"instructions {args.instructions}, k=4, latency {args.latency_ms:.0f} ms, in flight {args.in_flight}")
    print(f"requests: {first['by_kind']}  total {first['total']}")
    for stage in ("generate", "annotate"):
        kind = ["generation"] if stage == "generate" else ["judge_aspect", "critique"]
        count = sum(first["by_kind"].get(k, 0) for k in kind)
        rate = count / seconds[stage]
        print(
            f"{stage:>9}: {count} requests in {seconds[stage]:.1f} s = {rate:.0f} req/s; ideal {ideal:.0f} req/s "
            f"({args.in_flight} in flight / {args.latency_ms:.0f} ms); ratio {rate / ideal:.2f}"
        )
    print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    print(f"build wall time {wall:.1f} s; rerun {rerun:.1f} s with {rerun_requests} requests sent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
