"""Record types shared by every layer.

Each stage writes rows of one of these models to Parquet (``model_dump()`` of the model, one
column per field). They are deliberately flat: lists of strings are allowed, nested structs are
not, so every Parquet part of a stage has the same Arrow schema.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ASPECTS: tuple[str, ...] = ("instruction_following", "honesty", "truthfulness", "helpfulness")
"""The four fine-grained aspects, in the order the original release lists them."""

TYPED_ASPECTS: frozenset[str] = frozenset({"truthfulness", "helpfulness"})
"""Aspects whose judge output carries a ``Type`` list and a second rationale."""

PRINCIPLES: tuple[str, ...] = (
    "helpfulness",
    "honesty",
    "truthfulness",
    "verbalized_calibration",
    "harmlessness",
)

JudgeKind = Literal["model", "heuristic"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Instruction(_Record):
    """One deduplicated, normalised instruction."""

    id: str = Field(description="hash(source, normalised text)")
    source: str
    instruction: str
    correct_answers: list[str] = Field(default_factory=lambda: ["None"])
    incorrect_answers: list[str] = Field(default_factory=lambda: ["None"])
    origin: str = Field(description="where it came from: file:line or hub id:split:row")


class Quarantined(_Record):
    """An input record we could not use, kept with the reason."""

    source: str
    origin: str
    reason: str
    detail: str
    raw: str = ""


class CompletionRequest(_Record):
    """One completion to generate: an instruction under one model and one principle."""

    request_id: str
    instruction_id: str
    source: str
    position: int = Field(ge=0, description="slot 0..k-1 of this completion for its instruction")
    model: str = Field(description="the pool entry id")
    principle: str
    system_prompt: str
    prompt_format: str = Field(description="the entry's prompt format, or `template` / `server` (its chat template)")
    prompt_template: str = Field(
        default="",
        description="what builds the prompt, as the request id has it: template:<file>@<hash> (the model's chat "
        "template), server (the server's), or <format>@<version> (tasks/generate/prompt_builder.py)",
    )
    sampling_json: str = Field(description="the effective sampling parameters, canonical JSON")
    shard: int = Field(ge=0)


class Completion(_Record):
    """A generated completion; its id is the request id."""

    request_id: str
    instruction_id: str
    model: str
    response: str
    response_hash: str = Field(
        default="", description="keys.text_hash(response), set from the response when not given; judge keys carry it"
    )
    finish_reason: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    backend: str = ""
    prompt_template: str = Field(
        default="", description="the template that produced the prompt (its request's `prompt_template`)"
    )

    @model_validator(mode="after")
    def _hash_of_response(self) -> Completion:
        from ultrafeedback.keys import text_hash

        digest = text_hash(self.response)
        if self.response_hash and self.response_hash != digest:
            raise ValueError(f"response_hash {self.response_hash} is not the hash of the response ({digest})")
        object.__setattr__(self, "response_hash", digest)
        return self


class AspectAnnotation(_Record):
    """One judge call: one aspect over the k completions of one instruction (shuffled)."""

    annotation_key: str
    instruction_id: str
    aspect: str
    completion_ids: list[str] = Field(description="the completions in the order shown to the judge")
    raw: str = Field(description="the judge's text, stored before parsing")
    judge_model: str
    judge_kind: JudgeKind
    input_tokens: int = 0
    output_tokens: int = 0
    parsed: str | None = Field(
        default=None,
        description="the ratings parsed from `raw` when it was stored, as JSON (tasks/annotate/parse.py: "
        "items_json); the score join uses them while `parser_version` is the current parser's, else parses `raw`",
    )
    parser_version: str | None = Field(default=None, description="the aspect parser that produced `parsed`")


class AspectRating(_Record):
    """One parsed rating of one completion on one aspect."""

    annotation_key: str
    completion_id: str
    aspect: str
    rating: str = Field(description='"1".."5", or "N/A" (honesty only)')
    rationale: str
    type: list[str] | None = None
    type_rationale: str | None = None
    judge_model: str
    judge_kind: JudgeKind


class Critique(_Record):
    """Teacher feedback and the overall score (1-10) for one completion."""

    critique_key: str
    completion_id: str
    instruction_id: str
    raw: str
    critique: str
    overall_score: float = Field(ge=1.0, le=10.0)
    judge_model: str
    judge_kind: JudgeKind
    input_tokens: int = 0
    output_tokens: int = 0


class Pair(_Record):
    """One non-tied preference pair between two completions of one instruction."""

    pair_id: str
    instruction_id: str
    source: str
    prompt: str
    chosen_id: str
    rejected_id: str
    chosen_model: str
    rejected_model: str
    chosen: str
    rejected: str
    score_chosen: float
    score_rejected: float
    margin: float


class Failure(_Record):
    """A unit of work that failed after its retries; listed by ``status`` and retried by a rerun."""

    stage: str
    key: str
    shard: int
    reason: str = Field(description="a short category: http_429, http_500, timeout, parse, ...")
    error: str
    attempts: int
    at: float = Field(description="unix time")


class ScoredCompletion(_Record):
    """One completion with its instruction, annotations, critique and scores: one row per completion.

    This flat table is what aggregate, pairs, the gates and publish read. Aspect columns are named
    ``{aspect}_rating`` etc.; they are null when that aspect was not rated (not requested, or its
    judge call failed).
    """

    completion_id: str
    instruction_id: str
    source: str
    instruction: str
    correct_answers: list[str]
    incorrect_answers: list[str]
    models: list[str] = Field(description="the k models assigned to this instruction, in slot order")
    position: int
    model: str
    principle: str
    system_prompt: str
    response: str
    finish_reason: str = ""
    prompt_template: str = Field(default="", description="the template that produced the prompt (Completion's)")
    instruction_following_rating: str | None = None
    instruction_following_rationale: str | None = None
    honesty_rating: str | None = None
    honesty_rationale: str | None = None
    truthfulness_rating: str | None = None
    truthfulness_rationale: str | None = None
    truthfulness_type: list[str] | None = None
    truthfulness_type_rationale: str | None = None
    helpfulness_rating: str | None = None
    helpfulness_rationale: str | None = None
    helpfulness_type: list[str] | None = None
    helpfulness_type_rationale: str | None = None
    critique: str | None = None
    overall_score: float | None = None
    fine_grained_score: float | None = None
    judge_model: str
    judge_kind: JudgeKind
