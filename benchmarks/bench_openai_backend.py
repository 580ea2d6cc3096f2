"""Throughput of OpenAICompatBackend against the simulator, as a share of the ideal.

With a fixed server latency L and C requests in flight, no client can exceed C / L requests a
second; the ratio to that ideal measures the client's own overhead. (Reference figures on a
2-core box: a bare asyncio client reached ~760/s of an ideal 1,000/s; the openai SDK ~37/s.)

The simulator runs in a separate process by default, as a real endpoint would, so the client and
the server do not share one interpreter lock; ``--in-process`` runs it on a thread instead.

    .venv/bin/python benchmarks/bench_openai_backend.py --requests 2000 --in-flight 200 --latency-ms 200
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.llm.base import LLMRequest, LLMResult  # noqa: E402
from infra.llm.openai_compat import OpenAICompatBackend  # noqa: E402


@contextmanager
def simulator(latency_ms: float, in_process: bool) -> Iterator[str]:
    """Yield the base URL of a running simulator, stopped on exit."""
    if in_process:
        from infra.simulator import Simulator

        with Simulator(latency_ms=latency_ms) as sim:
            yield sim.url
        return
    command = [
        sys.executable, "-m", "infra.simulator.server",
        "--host", "127.0.0.1", "--port", "0", "--latency-ms", str(latency_ms),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = next((w for w in line.split() if w.startswith("http://")), None)
        if url is None:
            raise RuntimeError(f"simulator did not start: {line!r}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def requests(count: int) -> list[LLMRequest]:
    return [
        LLMRequest(
            key=f"r{i}",
            model="bench-model",
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"Describe item number {i} of the inventory in detail."},
            ],
            sampling={"temperature": 1.0, "top_p": 1.0, "max_tokens": 256},
        )
        for i in range(count)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--in-process", action="store_true", help="run the simulator on a thread")
    args = parser.parse_args(argv)

    batch = requests(args.requests)
    results: list[LLMResult] = []
    with simulator(args.latency_ms, args.in_process) as url:
        backend = OpenAICompatBackend(
            "bench", url, api_key="sk-bench", max_in_flight=args.in_flight, timeout_s=30, max_retries=2
        )
        backend.run(requests(min(args.in_flight, 50)), lambda r: None)  # warm imports and the server
        started = time.perf_counter()
        backend.run(batch, results.append)
        elapsed = time.perf_counter() - started

    failures = Counter(r.reason for r in results if not r.ok)
    rate = len(results) / elapsed
    ideal = args.in_flight / (args.latency_ms / 1000.0)
    where = "thread" if args.in_process else "subprocess"
    print(
        f"{len(results)} requests, {args.in_flight} in flight, {args.latency_ms:g} ms latency "
        f"(simulator in a {where}): {elapsed:.2f} s, {rate:.0f} requests/s; "
        f"ideal {ideal:.0f}/s; ratio {rate / ideal:.2f}; failures {dict(failures) or 0}"
    )
    return 0 if not failures and len(results) == len(batch) else 1


if __name__ == "__main__":
    sys.exit(main())
