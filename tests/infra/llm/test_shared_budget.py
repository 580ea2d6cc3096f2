"""infra.llm.shared_budget: an endpoint's budgets shared by the processes of a machine through a
folder; and two worker processes on one endpoint against the simulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ultrafeedback.infra.llm.shared_budget import SharedInFlight, SharedRateLimiter, budget_key
from ultrafeedback.infra.simulator import Simulator, SimulatorConfig

ROOT = Path(__file__).resolve().parents[3]


def test_two_limiters_on_one_file_share_the_requests_budget(tmp_path: Path) -> None:
    first = SharedRateLimiter(tmp_path / "e.rate", 60, None)  # 1/s, a bucket of 1
    second = SharedRateLimiter(tmp_path / "e.rate", 60, None)  # another process's, as far as the file knows
    now = time.monotonic()
    assert first.reserve() <= now + 0.05
    assert second.reserve() >= now + 0.9  # the first took the only request of this second
    assert first.reserve() >= now + 1.9


def test_two_limiters_on_one_file_share_the_tokens_budget(tmp_path: Path) -> None:
    first = SharedRateLimiter(tmp_path / "e.rate", None, 6000)  # 100 tokens/s
    second = SharedRateLimiter(tmp_path / "e.rate", None, 6000)
    now = time.monotonic()
    first.reserve(100)
    assert second.reserve(200) >= now + 1.9  # 200 more tokens: 2 s of debt


def test_a_429_in_one_process_pauses_the_others(tmp_path: Path) -> None:
    first = SharedRateLimiter(tmp_path / "e.rate", 6000, None)
    second = SharedRateLimiter(tmp_path / "e.rate", 6000, None)
    first.penalize(3.0)
    assert second.reserve() >= time.monotonic() + 2.5


def test_a_file_from_before_a_reboot_starts_afresh(tmp_path: Path) -> None:
    import struct

    far = time.monotonic() + 10 * 86400  # the monotonic clock of a machine that ran for longer
    (tmp_path / "e.rate").write_bytes(struct.pack("<5d", -100.0, far, 0.0, 0.0, far))
    assert SharedRateLimiter(tmp_path / "e.rate", 60, None).reserve() <= time.monotonic() + 0.05


def test_the_key_names_the_endpoint_and_its_urls() -> None:
    assert budget_key("vllm/a b", ["http://h:1/v1/", "http://g:2/v1"]) == budget_key(
        "vllm/a b", ["http://g:2/v1", "http://h:1/v1"]
    )
    assert budget_key("vllm", ["http://h:1/v1"]) != budget_key("vllm", ["http://h:2/v1"])
    assert "/" not in budget_key("a/b", ["x"])


_HOLDER = """
import sys, time, asyncio
from pathlib import Path
from ultrafeedback.infra.llm.shared_budget import SharedInFlight
slots = SharedInFlight(Path(sys.argv[1]), 2)
async def main():
    await slots.acquire(); await slots.acquire()
    print("held", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


def test_in_flight_slots_are_shared_and_a_killed_holder_frees_them(tmp_path: Path) -> None:
    import asyncio

    path = tmp_path / "e.slots"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        slots = SharedInFlight(path, 2)

        async def take(timeout: float) -> bool:
            try:
                await asyncio.wait_for(slots.acquire(), timeout)
            except TimeoutError:
                return False
            return True

        assert not asyncio.run(take(0.3))  # both of the machine's slots are the other process's
        assert slots.in_use == 0  # the cancelled wait gave its process slot back
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        assert asyncio.run(take(5.0))  # the kernel dropped the dead holder's locks
        slots.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


# --------------------------------------------------------------------------- two worker processes

_WORKER = """
import json, sys
from ultrafeedback.infra.llm import factory
from ultrafeedback.infra.llm.base import LLMRequest
from ultrafeedback.spec import validate_dict

url, tag, count, endpoint = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
execution = json.loads(sys.argv[5])
spec = validate_dict({
    "name": "w", "sources": [{"name": "s", "loader": "jsonl", "path": "x.jsonl"}],
    "endpoints": {"sim": {"base_url": url, "timeout_s": 10, "max_retries": 2, **endpoint}},
    "models": [{"id": "m", "backend": "openai", "endpoint": "sim", "model": "sim-model"}],
    "completions_per_instruction": 1, "execution": execution,
})
backend = factory.model_backend(spec, spec.models[0])
results = []
requests = [LLMRequest(key=f"{tag}{i}", model="sim-model", messages=[{"role": "user", "content": f"{tag} {i}"}])
            for i in range(count)]
backend.run(requests, results.append)
print(json.dumps({"ok": sum(r.ok for r in results)}))
"""


def _workers(url: str, count: int, endpoint: dict, execution: dict, env: dict[str, str] | None = None) -> None:
    """Two worker processes, each sending ``count`` requests to the endpoint; both must finish."""
    environment = {**os.environ, **(env or {})}
    args = [url, "", str(count), json.dumps(endpoint), json.dumps(execution)]
    procs = []
    for tag in ("a", "b"):
        args[1] = tag
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=environment
            )
        )
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0
            assert json.loads(out.strip().splitlines()[-1]) == {"ok": count}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def _arrivals(sim: Simulator) -> list[float]:
    with urllib.request.urlopen(f"{sim.root_url}/stats/bodies", timeout=5) as response:
        bodies = json.load(response)["bodies"]
    return sorted(entry[0] for entries in bodies.values() for entry in entries)


def test_two_workers_on_one_endpoint_keep_its_requests_per_minute(tmp_path: Path) -> None:
    rpm, per_worker = 900, 90  # 15/s together; 180 requests take ~12 s (twice as fast if each kept its own)
    with Simulator(SimulatorConfig(latency_ms=5, record_bodies=True)) as sim:
        _workers(sim.url, per_worker, {"requests_per_minute": rpm, "max_in_flight": 16}, {"budget_dir": str(tmp_path)})
        came = _arrivals(sim)
    assert len(came) == 2 * per_worker
    burst = max(int(rpm / 60), 1)  # a fresh bucket holds one second's worth
    rate = (len(came) - burst - 1) / (came[-1] - came[burst])
    assert rate <= rpm / 60 * 1.05, f"{rate * 60:.0f} requests a minute, the budget is {rpm}"


def test_two_workers_on_one_endpoint_keep_its_in_flight_budget(tmp_path: Path) -> None:
    with Simulator(SimulatorConfig(latency_ms=150)) as sim:
        _workers(sim.url, 20, {"max_in_flight": 3}, {}, env={"ULTRAFEEDBACK_BUDGET_DIR": str(tmp_path)})
        stats = sim.stats()
    assert stats["total"] == 40
    assert stats["max_in_flight"] == 3  # reached, never passed, by the two processes together


@pytest.fixture(autouse=True)
def _no_budget_dir_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ULTRAFEEDBACK_BUDGET_DIR", raising=False)
