"""Throughput of OpenAICompatBackend against the simulator, beside a bare asyncio client.

With a fixed server latency L and C requests in flight, no client can exceed C / L requests a
second; the ratio to that ideal measures the client's own overhead. Each run also times a bare
aiohttp client (one loop, one session, a semaphore, no limiter, retries or callbacks) against the
same server, so the backend's cost shows as a ratio to it, on the same machine at the same moment,
in wall time and in this process's CPU time per request (all threads; the simulator's is not
counted, and CPU time is the steadier figure on a shared machine). The bare client opens fresh
connections on every timed run; the backend keeps its base URL's session, and its connections,
alive across runs, as it does across a real build's shards. (Reference figures on a 2-core box: a
bare asyncio client reached ~760/s of an ideal 1,000/s; the openai SDK ~37/s.)

``--threads 1,4`` times the backend driven by one thread, then by four threads at once, each
calling ``run`` with its share of the batch under one shared in-flight budget of ``--in-flight``,
as Prefect shard threads do: several threads must not lose throughput against one.

The simulator runs in a separate process by default, as a real endpoint would, so the client and
the server do not share one interpreter lock; ``--in-process`` runs it on a thread instead.

    .venv/bin/python benchmarks/bench_openai_backend.py --requests 2000 --in-flight 200 --latency-ms 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ultrafeedback.infra.llm.base import LLMRequest, LLMResult  # noqa: E402
from ultrafeedback.infra.llm.limiter import InFlightLimit  # noqa: E402
from ultrafeedback.infra.llm.openai_compat import OpenAICompatBackend, request_body  # noqa: E402


@contextmanager
def simulator(latency_ms: float, in_process: bool) -> Iterator[str]:
    """Yield the base URL of a running simulator, stopped on exit."""
    if in_process:
        from ultrafeedback.infra.simulator import Simulator

        with Simulator(latency_ms=latency_ms) as sim:
            yield sim.url
        return
    command = [
        sys.executable, "-m", "ultrafeedback.infra.simulator.server",
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


def requests(count: int, prefix: str = "r") -> list[LLMRequest]:
    return [
        LLMRequest(
            key=f"{prefix}{i}",
            model="bench-model",
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"Describe item number {i} of the inventory in detail."},
            ],
            sampling={"temperature": 1.0, "top_p": 1.0, "max_tokens": 256},
        )
        for i in range(count)
    ]


def bare_client(url: str, batch: list[LLMRequest], in_flight: int) -> int:
    """The reference: one loop, one session, a semaphore; returns how many answers parsed."""
    import aiohttp

    async def main() -> int:
        gate = asyncio.Semaphore(in_flight)
        connector = aiohttp.TCPConnector(limit=in_flight, limit_per_host=0)
        headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

            async def one(request: LLMRequest) -> bool:
                path, body = request_body(request)
                payload = json.dumps(body).encode()
                async with gate, session.post(f"{url}/{path}", data=payload) as response:
                    data = json.loads(await response.read())
                return response.status == 200 and bool(data["choices"][0]["message"]["content"])

            return sum(await asyncio.gather(*(one(r) for r in batch)))

    return asyncio.run(main())


def backend_in_threads(backend: OpenAICompatBackend, batch: list[LLMRequest], threads: int) -> list[LLMResult]:
    """``backend.run`` from ``threads`` threads at once, each with its share of ``batch``."""
    results: list[LLMResult] = []
    errors: list[BaseException] = []
    shares = [batch[t::threads] for t in range(threads)]

    def shard(share: list[LLMRequest]) -> None:
        mine: list[LLMResult] = []
        try:
            backend.run(share, mine.append)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        results.extend(mine)

    workers = [threading.Thread(target=shard, args=(share,)) for share in shares]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return results


def best_of(repeat: int, timed: Callable[[], int]) -> tuple[float, float, int]:
    """The shortest wall time of ``repeat`` runs (the machine is shared), the least CPU time this
    process spent on one (all threads; the simulator's is not counted), and the count returned."""
    best, cpu, count = float("inf"), float("inf"), 0
    for _ in range(repeat):
        started, cpu_started = time.perf_counter(), time.process_time()
        count = timed()
        best = min(best, time.perf_counter() - started)
        cpu = min(cpu, time.process_time() - cpu_started)
    return best, cpu, count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--threads", default="1,4", help="comma-separated thread counts to time")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best counts")
    parser.add_argument("--in-process", action="store_true", help="run the simulator on a thread")
    args = parser.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]

    batch = requests(args.requests)
    ideal = args.in_flight / (args.latency_ms / 1000.0)
    where = "thread" if args.in_process else "subprocess"
    print(
        f"{args.requests} requests, {args.in_flight} in flight, {args.latency_ms:g} ms latency "
        f"(simulator in a {where}); ideal {ideal:.0f}/s; best of {args.repeat}"
    )
    ok = True
    with simulator(args.latency_ms, args.in_process) as url:
        backend = OpenAICompatBackend(
            "bench", url, api_key="sk-bench", max_in_flight=args.in_flight, timeout_s=30, max_retries=2,
            in_flight=InFlightLimit(args.in_flight),  # one endpoint budget, as backend_from_endpoint sets
        )  # fmt: skip
        backend.run(requests(min(args.in_flight, 50), "w"), lambda r: None)  # warm imports, the server
        bare_client(url, requests(min(args.in_flight, 50), "w"), args.in_flight)

        elapsed, cpu, parsed = best_of(args.repeat, lambda: bare_client(url, batch, args.in_flight))
        bare_rate, bare_cpu = parsed / elapsed, cpu / len(batch) * 1e3
        ok &= parsed == len(batch)
        print(
            f"  bare asyncio client : {elapsed:6.2f} s {bare_rate:6.0f}/s  ratio to ideal {bare_rate / ideal:.2f}; "
            f"client CPU {bare_cpu:.3f} ms/request"
        )

        for threads in thread_counts:
            outcome: dict[str, list[LLMResult]] = {}

            def timed(threads: int = threads, outcome: dict[str, list[LLMResult]] = outcome) -> int:
                outcome["results"] = backend_in_threads(backend, batch, threads)
                return len(outcome["results"])

            elapsed, cpu, count = best_of(args.repeat, timed)
            failures = Counter(r.reason for r in outcome["results"] if not r.ok)
            ok &= not failures and count == len(batch)
            rate, per_request = count / elapsed, cpu / len(batch) * 1e3
            print(
                f"  backend, {threads} thread{'s' if threads > 1 else ' '}  : {elapsed:6.2f} s {rate:6.0f}/s  "
                f"ratio to ideal {rate / ideal:.2f}, to bare {rate / bare_rate:.2f}; "
                f"client CPU {per_request:.3f} ms/request ({per_request / bare_cpu:.2f} of bare); "
                f"failures {dict(failures) or 0}"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
