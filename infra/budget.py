"""``execution.max_cost_usd``: stop issuing calls before this run's spending would pass a cap.

The budget knows what the run has spent (the tokens each answer reports, priced per model, the
Batch API's discount applied for batch endpoints) and what is in flight: every call it let through
and that has not answered yet, booked at its worst case (its prompt tokens, counted with the
default tokenizer of ``infra.llm.tokens``, plus ``max_tokens`` of output). A call is let through
only while spent + in flight + its own worst case stays within the cap; one that does not fit waits
for calls in flight to answer (their real cost is usually below their booking), and when nothing
is in flight and it still does not fit, the budget stops: no call is let through again (what is in
flight finishes and is kept), and the shard task raises ``BudgetExceeded``, which stops the run. Every answer is
checkpointed as usual, so a rerun with a higher cap sends only what is still missing.

The cap is per run: what earlier runs spent is not counted again (their answers are stored and are
not paid for twice). Calls answered from the result journal of a killed run count as spent.

One budget per store and dataset is active while a build runs (``activate``/``deactivate`` in
``flows.build``); stage code finds it with ``for_store``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ultrafeedback.infra.llm.base import LLMRequest, LLMResult

if TYPE_CHECKING:
    from ultrafeedback.infra.store import Store
    from ultrafeedback.spec import Spec


class BudgetExceeded(RuntimeError):
    """The run reached ``execution.max_cost_usd``: calls were held back; what was done is kept."""


@dataclass(frozen=True)
class Rate:
    input_per_tok: float
    output_per_tok: float
    batch_factor: float = 1.0

    def cost(self, tokens_in: int, tokens_out: int, batch: bool) -> float:
        value = tokens_in * self.input_per_tok + tokens_out * self.output_per_tok
        return value * (self.batch_factor if batch else 1.0)


def model_rates(spec: Spec) -> dict[str, Rate]:
    """Served model name -> its price (per token) and the batch factor of its endpoint."""
    rates: dict[str, Rate] = {}

    def add(name: str, price: object, endpoint: str | None) -> None:
        point = spec.endpoints.get(endpoint) if endpoint else None
        factor = 1.0 - point.batch_discount if point is not None and point.batch_api else 1.0
        rate = Rate(price.input_per_mtok / 1e6, price.output_per_mtok / 1e6, factor)  # type: ignore[attr-defined]
        old = rates.get(name)
        if old is None or rate.cost(1, 1, False) > old.cost(1, 1, False):
            rates[name] = rate

    for entry in spec.models:
        add(entry.served_name, entry.price, entry.endpoint)
    if spec.judge.backend == "openai" and spec.judge.model:
        add(spec.judge.model, spec.judge.price, spec.judge.endpoint)
    return rates


def batch_factor(spec: Spec, model_id: str) -> float:
    """What a model's calls cost relative to list price: ``1 - batch_discount`` when its endpoint
    (the judge's for the judge model) uses the Batch API, else 1."""
    endpoint = None
    for entry in spec.models:
        if entry.id == model_id:
            endpoint = entry.endpoint
    if spec.judge.backend == "openai" and spec.judge.model == model_id:
        endpoint = spec.judge.endpoint
    point = spec.endpoints.get(endpoint) if endpoint else None
    return 1.0 - point.batch_discount if point is not None and point.batch_api else 1.0


def worst_case_tokens(request: LLMRequest) -> tuple[int, int]:
    from ultrafeedback.infra.llm import tokens

    prompt = tokens.count_request(request.messages, request.prompt)
    return prompt, int(request.sampling.get("max_tokens") or 4096)


class CostBudget:
    def __init__(self, cap: float, rates: dict[str, Rate]) -> None:
        self.cap = cap
        self.rates = rates
        self.spent = 0.0
        self.in_flight = 0.0
        self.held_back = 0
        self.stopped = False
        self._booked: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def _rate(self, model: str) -> Rate:
        return self.rates.get(model) or Rate(0.0, 0.0)

    def admit(self, requests: Sequence[LLMRequest], batch: bool = False) -> tuple[list[LLMRequest], list[LLMRequest]]:
        """(let through, not yet): the longest prefix of ``requests`` whose worst cases fit beside
        what is spent and in flight. When not even the first fits and nothing is in flight (so
        nothing can free up), the budget stops: ``stopped`` is set and no call is let through again."""
        admitted: list[LLMRequest] = []
        for request in requests:
            worst = self._rate(request.model).cost(*worst_case_tokens(request), batch)
            with self._lock:
                if self.stopped:
                    break
                if self.spent + self.in_flight + worst > self.cap + 1e-12:
                    if self.in_flight <= 1e-12:
                        self.stopped = True
                    break
                self.in_flight += worst
                self._booked.setdefault((request.model, request.key), []).append(worst)
            admitted.append(request)
        return admitted, list(requests[len(admitted) :])

    def hold_back(self, count: int) -> None:
        """``count`` calls were not sent because the budget stopped."""
        with self._lock:
            self.held_back += count

    def settle(self, model: str, result: LLMResult, batch: bool = False) -> None:
        """An answer (or failure) arrived: its booking leaves the in-flight sum, its cost is spent."""
        cost = 0.0 if result.replayed else self._rate(model).cost(result.input_tokens, result.output_tokens, batch)
        with self._lock:
            booked = self._booked.get((model, result.key))
            if booked:
                self.in_flight = max(0.0, self.in_flight - booked.pop())
                if not booked:
                    del self._booked[(model, result.key)]
            self.spent += cost

    def check(self) -> None:
        """Raise ``BudgetExceeded`` once calls were held back."""
        if self.stopped:
            raise BudgetExceeded(
                f"execution.max_cost_usd ${self.cap:g} reached: spent ${self.spent:.4f}, "
                f"{self.held_back} calls held back; what was done is kept, a rerun with a higher cap continues"
            )


_ACTIVE: dict[str, CostBudget] = {}
_LOCK = threading.Lock()


def activate(spec: Spec, store: Store) -> CostBudget | None:
    """The run's budget (None without ``execution.max_cost_usd``), found by ``for_store``."""
    cap = spec.execution.max_cost_usd
    with _LOCK:
        _ACTIVE.pop(store.uri(), None)
        if cap is None:
            return None
        budget = _ACTIVE[store.uri()] = CostBudget(cap, model_rates(spec))
        return budget


def deactivate(store: Store) -> None:
    with _LOCK:
        _ACTIVE.pop(store.uri(), None)


def for_store(store: Store) -> CostBudget | None:
    with _LOCK:
        return _ACTIVE.get(store.uri())
