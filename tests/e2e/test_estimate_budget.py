"""``ultrafeedback estimate`` against what a simulator run used, and ``execution.max_cost_usd``:
a run stops at the cap, keeps what it did, and a rerun with a higher cap sends only the rest."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.e2e.test_build_simulator import SECRET, run_build, spec_data, write_sources, write_spec
from tests.e2e.test_kill_resume import PROMPTS, paid_twice
from tests.golden.golden import diff_releases, read_release
from ultrafeedback.infra.budget import BudgetExceeded
from ultrafeedback.infra.simulator.config import SimulatorConfig
from ultrafeedback.infra.simulator.server import Simulator
from ultrafeedback.infra.store import Store

pytestmark = pytest.mark.e2e


def test_the_estimate_is_within_ten_percent_of_the_tokens_a_run_uses(prefect_harness, tmp_path, monkeypatch):
    from ultrafeedback.estimate import estimate
    from ultrafeedback.spec import load_spec

    monkeypatch.setenv("UF_E2E_KEY", SECRET)
    config = SimulatorConfig(seed=11, api_key=SECRET, usage_tokenizer="o200k_base")
    with Simulator(config) as sim:
        write_sources(tmp_path)
        (tmp_path / "instructions.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
        data = spec_data(tmp_path, sim.url)
        data["execution"]["worker_processes"] = 0
        data["sources"][0]["quota"] = 6  # an earlier, smaller run: the output means it observed
        run_build(write_spec(tmp_path, data))
        del data["sources"][0]["quota"]
        spec_path = write_spec(tmp_path, data)
        result = estimate(load_spec(spec_path), "o200k_base")
        before = sim.stats()
        run_build(spec_path)
        after = sim.stats()
    used_in = after["prompt_tokens"] - before["prompt_tokens"]
    used_out = after["completion_tokens"] - before["completion_tokens"]
    total = result.total
    calls = sum(after["by_kind"].values()) - sum(before["by_kind"].values())
    print(result.render(), f"\nused: {calls} calls, {used_in} in, {used_out} out")
    assert total["calls"] == calls
    assert abs(total["input_tokens"] - used_in) <= 0.1 * used_in
    assert abs(total["output_tokens"] - used_out) <= 0.1 * used_out
    assert {line.stage for line in result.lines} == {"generate", "judge"}
    assert all(line.output_source == {"observed"} for line in result.lines)
    assert result.total["cost_usd"] > 0


def _spent(store: Store, price_in: float, price_out: float) -> float:
    total = 0
    for name in ("completions", "annotations", "critiques"):
        table = store.log(name).read(["input_tokens", "output_tokens"])
        total += sum(table.column("input_tokens").to_pylist()) * price_in
        total += sum(table.column("output_tokens").to_pylist()) * price_out
    return total / 1e6


def _bodies(sim: Simulator) -> dict:
    with urllib.request.urlopen(f"{sim.root_url}/stats/bodies") as response:
        return json.loads(response.read())["bodies"]


def test_max_cost_usd_stops_the_run_at_the_cap_and_a_rerun_with_a_higher_cap_repeats_no_call(
    prefect_harness, tmp_path, monkeypatch
):
    monkeypatch.setenv("UF_E2E_KEY", SECRET)
    price = {"input_per_mtok": 1.0, "output_per_mtok": 2.0}
    with Simulator(SimulatorConfig(seed=3, api_key=SECRET, record_bodies=True)) as sim:
        reference = tmp_path / "reference"
        reference.mkdir()
        write_sources(reference)
        expected = read_release(run_build(write_spec(reference, spec_data(reference, sim.url))))
        sim.reset()

        folder = tmp_path / "capped"
        folder.mkdir()
        write_sources(folder)
        data = spec_data(folder, sim.url)
        data["judge"]["price"] = price
        data["execution"].update(max_cost_usd=0.02, worker_processes=0)
        spec_path = write_spec(folder, data)
        with pytest.raises(BudgetExceeded, match=r"max_cost_usd \$0\.02 reached"):
            run_build(spec_path)
        store = Store(str(folder / "store"), "e2e")
        spent = _spent(store, 1.0, 2.0)
        stats = sim.stats()
        assert 0 < spent <= 0.02
        # usage is counted in words here, at most the tokenizer's count the budget booked: what the
        # simulator billed stays under the cap too
        billed = (stats["prompt_tokens"] * 1.0 + stats["completion_tokens"] * 2.0) / 1e6
        assert billed <= 0.02
        judged = stats["by_kind"].get("judge_aspect", 0) + stats["by_kind"].get("critique", 0)
        assert stats["by_kind"]["generation"] == 36 and 0 < judged < 72  # it stopped while judging
        assert len(store.log("annotations").index()) + len(store.log("critiques").index()) == judged  # all kept
        assert not (folder / "store" / "e2e" / "releases").exists()
        first_total = stats["total"]

        uri = run_build(spec_path, ["execution.max_cost_usd=5"])
        bodies = _bodies(sim)
        assert not paid_twice(bodies, []), paid_twice(bodies, [])[:5]
        assert sim.stats()["total"] == 108  # 36 completions, 36 aspect calls, 36 critiques: each once
        assert first_total < 108
    assert not diff_releases(expected, read_release(uri))
