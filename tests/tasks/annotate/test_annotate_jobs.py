"""The planned judge calls survive the trip through a shard's work file."""

from __future__ import annotations

from tasks.annotate.annotate import AspectJob, CritiqueJob, jobs_from_table, jobs_table
from ultrafeedback.records import CompletionRequest, Instruction


def test_jobs_round_trip_through_a_table():
    instruction = Instruction(id="i1", source="s", instruction="Why?", origin="f:1")
    request = CompletionRequest(
        request_id="r1",
        instruction_id="i1",
        source="s",
        position=0,
        model="m",
        principle="honesty",
        system_prompt="Be honest.",
        prompt_format="chat",
        sampling_json="{}",
        shard=3,
    )
    aspect = AspectJob("a1", instruction, "truthfulness", ["r1", "r2"], ["one", "two\n\nlines"], "knowledge")
    plain = AspectJob("a2", instruction, "honesty", ["r2", "r1"], ["two", "one"], None)
    critique = CritiqueJob("c1", instruction, request, "one")
    aspects, critiques = jobs_from_table(jobs_table([aspect, plain], [critique]), {"i1": instruction}, {"r1": request})
    assert aspects == [aspect, plain]
    assert critiques == [critique]
