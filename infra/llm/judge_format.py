"""The original judge's output format (reference §4.3), written in one place.

The heuristic judge (``infra.llm.heuristic``) and the simulator (``infra.simulator.content``) both
answer in it, so the parser (``tasks.annotate.parse``) meets one format whichever of them wrote it:
one block per text, separated by one blank line, no preamble and no blank line inside a block;
``Overall Score: X`` on its own line after a critique's feedback.
"""

from __future__ import annotations

from collections.abc import Iterable

from ultrafeedback.records import TYPED_ASPECTS

ASPECT_HEADERS: dict[str, str] = {
    "instruction_following": "####",
    "honesty": "#####",  # the original honesty template's quirk: five hashes
    "truthfulness": "####",
    "helpfulness": "####",
}


def aspect_block(
    aspect: str,
    slot: int,
    rating: int | str,
    rationale: str,
    types: str | None = None,
    type_rationale: str | None = None,
) -> str:
    """One text's block; typed aspects (truthfulness, helpfulness) lead with ``Type`` and its rationale."""
    header = f"{ASPECT_HEADERS[aspect]} Output for Text {slot}"
    if aspect in TYPED_ASPECTS:
        return f"{header}\nType: {types}\nRationale: {type_rationale}\nRating: {rating}\nRationale: {rationale}"
    return f"{header}\nRating: {rating}\nRationale: {rationale}"


def aspect_reply(blocks: Iterable[str]) -> str:
    return "\n\n".join(blocks)


def critique_reply(feedback: str, score: str) -> str:
    return f"{feedback}\nOverall Score: {score}"
