"""``sampling.cut_at``: a response is cut at the first occurrence after stripping (the original cut
generations at four newlines), the cut is part of the request key and never sent to the model."""

from __future__ import annotations

import pytest

from tests.tasks.generate.test_generate import FakeBackend, setup  # noqa: F401 - the fixture
from ultrafeedback.infra.checkpoint import failure_log
from ultrafeedback.infra.llm.openai_compat import request_body
from ultrafeedback.records import Completion
from ultrafeedback.tasks.assign.assign import assign
from ultrafeedback.tasks.generate.generate import STAGE, cut_response, generate_shard, to_llm_request

CUT = "\n\n\n\n"


@pytest.mark.parametrize(
    ("text", "cut", "stored"),
    [
        ("\n\n\n\nAn answer.\n\n\n\nA ramble", CUT, "An answer."),  # stripped first, as the original did
        ("An answer.  \n\n\n\n\n\nmore", CUT, "An answer."),
        ("One\n\n\nthree newlines stay", CUT, "One\n\n\nthree newlines stay"),
        ("  no cut at all  ", None, "no cut at all"),
    ],
)
def test_cut_response(text: str, cut: str | None, stored: str):
    assert cut_response(text, cut) == stored


def test_generation_stores_the_cut_response_and_the_cut_changes_the_key(setup):  # noqa: F811
    spec, store, instructions, requests, backend = setup
    cut = spec.model_copy(update={"sampling": spec.sampling.model_copy(update={"cut_at": CUT})})
    cut_requests = assign(list(instructions.values()), cut)
    assert {r.request_id for r in cut_requests}.isdisjoint(r.request_id for r in requests)
    call = to_llm_request(cut_requests[0], instructions[cut_requests[0].instruction_id], "served")
    assert "cut_at" not in request_body(call)[1]  # a client-side cut: the server never sees it
    backend.reply = lambda request: f"kept {request.key}{CUT}dropped"
    generate_shard(cut, store, 0, cut_requests, instructions)
    rows = store.results(STAGE, Completion, key="request_id").rows()
    assert sorted(r["response"] for r in rows) == sorted(f"kept {r.request_id}" for r in cut_requests)
    assert {r["prompt_template"] for r in rows} == {r.prompt_template for r in cut_requests} != {""}


def test_a_response_the_cut_leaves_empty_is_a_failure(setup):  # noqa: F811
    spec, store, instructions, requests, backend = setup
    cut = spec.model_copy(update={"sampling": spec.sampling.model_copy(update={"cut_at": "Q:"})})
    cut_requests = assign(list(instructions.values()), cut)
    backend.reply = lambda request: "Q: what was asked?"
    report = generate_shard(cut, store, 0, cut_requests, instructions)
    assert report.failed == {"empty_response": len(cut_requests)}
    (failure, *_) = failure_log(store, STAGE).rows()
    assert failure["error"] == "empty response after the cut at 'Q:' (finish_reason=stop)"
