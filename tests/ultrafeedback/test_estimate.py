"""``ultrafeedback estimate``: calls, tokens and cost per model and endpoint, without a model call."""

from __future__ import annotations

import json

import yaml

from ultrafeedback.cli import main


def write_spec(tmp_path, **execution):
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"q": f"Name {n} rivers in Europe."}) + "\n" for n in (2, 3, 5))
    )
    spec = {
        "name": "est",
        "store": str(tmp_path / "store"),
        "sources": [{"name": "s", "loader": "jsonl", "path": "in.jsonl", "fields": {"instruction": "q"}}],
        "endpoints": {
            "api": {"base_url": "http://127.0.0.1:9/v1"},
            "cheap": {"base_url": "http://127.0.0.1:9/v1", "batch_api": True},
        },
        "models": [
            {"id": "a", "backend": "openai", "endpoint": "api", "price": {"input_per_mtok": 10, "output_per_mtok": 20}},
            {"id": "b", "backend": "openai", "endpoint": "api", "price": {"input_per_mtok": 10, "output_per_mtok": 20}},
        ],
        "completions_per_instruction": 2,
        "sampling": {"max_tokens": 100},
        "judge": {
            "backend": "openai",
            "endpoint": "cheap",
            "model": "j",
            "price": {"input_per_mtok": 30, "output_per_mtok": 60},
        },
        "execution": execution,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_estimate_prints_calls_tokens_and_cost_per_model_with_the_batch_discount(tmp_path, capsys):
    assert main(["estimate", str(write_spec(tmp_path)), "--tokenizer", "cl100k_base"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("prompt tokens counted with cl100k_base")
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line.startswith(("generate", "judge"))}
    assert set(rows) == {"a", "b", "j"}
    stage, _, endpoint, api, calls, tokens_in, tokens_out, cost, source = rows["j"]
    assert (stage, endpoint, api) == ("judge", "cheap", "batch")
    assert int(calls) == 3 * 4 + 3 * 2  # 4 aspects per instruction, a critique per completion
    assert int(tokens_out) == 3 * 4 * 500 + 6 * 1024 and source == "max_tokens"  # no earlier run: the caps
    expected = (int(tokens_in) * 30 + int(tokens_out) * 60) / 1e6 * 0.5  # the Batch API's half price
    assert abs(float(cost) - expected) < 1e-3
    generated = [rows["a"], rows["b"]]
    assert sum(int(r[4]) for r in generated) == 6 and all(r[3] == "online" for r in generated)
    assert all(int(r[6]) == int(r[4]) * 100 for r in generated)
    assert "Batch API price (0.5 x list): j" in out


def test_the_cap_is_refused_at_zero_and_a_budget_stop_exits_5(tmp_path):
    from ultrafeedback.cli import EXIT_BUDGET, _report_failure
    from ultrafeedback.infra.budget import BudgetExceeded

    assert _report_failure(BudgetExceeded("execution.max_cost_usd $1 reached")) == EXIT_BUDGET == 5
    assert main(["validate", str(write_spec(tmp_path, max_cost_usd=0))]) == 2
