"""The run's cost budget (execution.max_cost_usd): worst cases booked, real costs settled, a stop."""

from __future__ import annotations

import pytest

from ultrafeedback.infra.budget import BudgetExceeded, CostBudget, Rate, batch_factor, model_rates, worst_case_tokens
from ultrafeedback.infra.llm.base import LLMRequest, LLMResult
from ultrafeedback.spec import validate_dict


def call(key: str, max_tokens: int = 100) -> LLMRequest:
    return LLMRequest(
        key, "m", messages=[{"role": "user", "content": "Hello there"}], sampling={"max_tokens": max_tokens}
    )


def test_calls_go_out_while_their_worst_case_fits_and_wait_while_others_are_in_flight():
    prompt, out = worst_case_tokens(call("a"))
    assert out == 100 and prompt == 2 + 3 + 3  # two tokens, the message's overhead, the reply's priming
    worst = prompt * 1e-6 + 100 * 2e-6
    budget = CostBudget(cap=worst * 2.5, rates={"m": Rate(1e-6, 2e-6)})
    admitted, later = budget.admit([call("a"), call("b"), call("c")])
    assert [r.key for r in admitted] == ["a", "b"] and [r.key for r in later] == ["c"]
    assert not budget.stopped  # two calls are in flight: their answers may leave room
    budget.settle("m", LLMResult("a", "hi", input_tokens=prompt, output_tokens=10))
    budget.settle("m", LLMResult("b", "hi", input_tokens=prompt, output_tokens=10))
    assert budget.in_flight == pytest.approx(0) and budget.spent == pytest.approx(2 * (prompt * 1e-6 + 10 * 2e-6))
    admitted, later = budget.admit(later)
    assert [r.key for r in admitted] == ["c"]
    budget.settle("m", LLMResult("c", "hi", input_tokens=prompt, output_tokens=200))  # more than booked
    admitted, later = budget.admit([call("d")])
    assert not admitted and budget.stopped  # nothing in flight and it does not fit: stop
    budget.hold_back(1)
    with pytest.raises(BudgetExceeded, match=r"\$[0-9.e-]+ reached: spent .* 1 calls held back"):
        budget.check()


def test_batch_endpoints_are_priced_at_their_discount():
    spec = validate_dict(
        {
            "name": "x",
            "sources": [{"name": "s", "loader": "jsonl", "path": "x.jsonl"}],
            "endpoints": {"api": {"base_url": "http://h/v1", "batch_api": True, "batch_discount": 0.5}},
            "models": [{"id": "a", "backend": "openai", "endpoint": "api", "price": {"input_per_mtok": 2.0}}],
            "completions_per_instruction": 1,
            "judge": {"backend": "openai", "endpoint": "api", "model": "j", "price": {"output_per_mtok": 4.0}},
        }
    )
    rates = model_rates(spec)
    assert rates["a"].cost(1_000_000, 0, batch=True) == pytest.approx(1.0)
    assert rates["j"].cost(0, 1_000_000, batch=False) == pytest.approx(4.0)
    assert batch_factor(spec, "a") == batch_factor(spec, "j") == 0.5


def test_every_api_model_of_the_paper_spec_has_a_price():
    from ultrafeedback.spec import load_spec

    spec = load_spec("deployments/specs/ultrafeedback.yaml")
    api = [m for m in spec.models if m.endpoint in ("openai", "bard")]
    assert {m.id for m in api} == {"gpt-4", "gpt-3.5-turbo", "bard"}
    assert all(m.price.input_per_mtok > 0 and m.price.output_per_mtok > 0 for m in api)
    assert spec.judge.price.input_per_mtok > 0
