"""run_calls under a budget when the run stops: the waves not admitted count as never sent."""

from __future__ import annotations

import pytest

from ultrafeedback.infra import stop
from ultrafeedback.infra.calls import run_calls
from ultrafeedback.infra.llm.base import LLMRequest, LLMResult


class WavesOfTwo:
    """A budget that admits two calls at a time."""

    stopped = False

    def admit(self, requests):
        return requests[:2], requests[2:]

    def settle(self, model, result):
        pass


class StopsInItsSecondRun:
    name = "fake"

    def __init__(self) -> None:
        self.runs = 0

    def run(self, requests, on_result):
        stop.check(unsent=len(requests))
        self.runs += 1
        on_result(LLMResult(key=requests[0].key, text="ok"))  # one answered
        if self.runs == 2:
            stop.request("test")
            raise stop.Stopped(unsent=len(requests) - 1)
        for request in requests[1:]:
            on_result(LLMResult(key=request.key, text="ok"))


def test_a_stop_in_a_wave_counts_the_waves_not_admitted_as_unsent():
    requests = [LLMRequest(key=f"k{i}", model="m", messages=[{"role": "user", "content": "hi"}]) for i in range(7)]
    answered: list[str] = []
    try:
        with pytest.raises(stop.Stopped) as err:
            run_calls(
                StopsInItsSecondRun(), requests, lambda r: answered.append(r.key), None, None, budget=WavesOfTwo()
            )
    finally:
        stop.reset()
    # waves k0-k1 (both answered), k2-k3 (k2 answered, k3 not sent), then k4-k6 never admitted
    assert answered == ["k0", "k1", "k2"] and err.value.unsent == 1 + 3
