"""Hand-built inputs of one annotate/score shard: 2 instructions x 2 completions, a spec with a
model judge on the simulator (or the heuristic judge) rating two aspects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.e2e.sim_spec import SIM_JUDGE, sim_endpoint, sim_models
from ultrafeedback.records import Completion, CompletionRequest, Instruction
from ultrafeedback.spec import Spec, validate_dict

KEY_ENV = "UF_TEST_ANNOTATE_KEY"
ASPECTS = ["honesty", "truthfulness"]
SHARD = 4


def make_spec(tmp_path, url: str = "http://127.0.0.1:9/v1", model_judge: bool = True, **judge: Any) -> Spec:
    """Two instructions' worth of a spec: a model judge on the simulator, or the heuristic one."""
    judge_config = {**SIM_JUDGE, **judge} if model_judge else {**judge}
    return validate_dict(
        {
            "name": "ann",
            "store": str(tmp_path / "store"),
            "sources": [{"name": "s", "loader": "jsonl", "path": "x.jsonl", "world_knowledge": "answers"}],
            "endpoints": {"sim": {**sim_endpoint(url, KEY_ENV), "max_retries": 1}},
            "models": sim_models(2),
            "completions_per_instruction": 2,
            "judge": {**judge_config, "aspects": ASPECTS},
            "execution": {"checkpoint_every": 3},
        }
    )


@dataclass
class ShardInputs:
    instructions: dict[str, Instruction]
    requests: list[CompletionRequest]
    completions: dict[str, Completion]

    def available(self, instruction_id: str) -> list[CompletionRequest]:
        return [r for r in self.requests if r.instruction_id == instruction_id and r.request_id in self.completions]


def shard_inputs() -> ShardInputs:
    instructions = {
        "i0": Instruction(
            id="i0",
            source="s",
            instruction="Is the Great Wall of China visible from space with the naked eye?",
            correct_answers=["No, it is too narrow to see from orbit"],
            incorrect_answers=["Yes, it is easily visible"],
            origin="x.jsonl:1",
        ),
        "i1": Instruction(id="i1", source="s", instruction="Explain how volcanoes form.", origin="x.jsonl:2"),
    }
    requests = [
        CompletionRequest(
            request_id=f"{iid}-{pos}",
            instruction_id=iid,
            source="s",
            position=pos,
            model=f"sim-{pos}",
            principle="honesty",
            system_prompt="Be honest about what you know.",
            prompt_format="chat",
            sampling_json="{}",
            shard=SHARD,
        )
        for iid in instructions
        for pos in range(2)
    ]
    responses = {
        "i0-0": "No. The wall is only a few metres wide, so astronauts in orbit cannot see it unaided.",
        "i0-1": "Yes, the Great Wall is the only man-made structure you can see from the Moon.",
        "i1-0": "Volcanoes form where magma from the mantle rises through cracks in the crust and erupts.",
        "i1-1": "Magma collects in a chamber under the surface; pressure pushes it up until it breaks out.",
    }
    completions = {
        rid: Completion(request_id=rid, instruction_id=rid.split("-")[0], model="m", response=text)
        for rid, text in responses.items()
    }
    return ShardInputs(instructions, requests, completions)
