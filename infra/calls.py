"""How a stage sends its calls: online through the result journal, or through a batch session,
under the run's cost budget when it has one (``infra.budget``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ultrafeedback.infra import stop
from ultrafeedback.infra.journal import Journal, JournalReplay, run_journaled
from ultrafeedback.infra.llm.base import LLMRequest, LLMResult


def run_calls(
    backend: Any,
    requests: Sequence[LLMRequest],
    on_result: Callable[[LLMResult], None],
    journal: Journal | None,
    replay: JournalReplay | None,
    session: Any = None,
    budget: Any = None,
) -> int:
    """Send ``requests`` and hand each answer to ``on_result``; returns how many were answered
    from the journal. With a batch ``session`` the calls go into batches and those still running
    are left waiting (``session.waiting_keys``). With a ``budget``, online calls go out in waves
    that fit it: what does not fit is held back (not sent, not recorded) and the budget stops."""
    if session is not None:
        session.run(requests, on_result, budget)
        return 0
    if budget is None:
        return run_journaled(backend, requests, on_result, journal, replay)
    models = {request.key: request.model for request in requests}

    def settled(result: LLMResult) -> None:
        budget.settle(models.get(result.key, ""), result)
        on_result(result)

    replayed = 0
    remaining = list(requests)
    try:
        while remaining:
            admitted, remaining = budget.admit(remaining)
            if admitted:
                replayed += run_journaled(backend, admitted, settled, journal, replay)
            elif budget.stopped:
                budget.hold_back(len(remaining))
                break
            else:  # what is in flight (other shards' calls) must answer first
                stop.check()
                time.sleep(0.05)
    except stop.Stopped as exc:  # the run stops (infra.stop): the waves not admitted are not sent either
        exc.unsent += len(remaining)
        exc.replayed += replayed
        raise
    return replayed
