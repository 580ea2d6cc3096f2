"""The backend contract: a batch of requests in, one result per request out, as they finish.

A backend never raises for one request's failure: the result carries ``error`` and a short
``reason`` (``http_429``, ``http_500``, ``timeout``, ``malformed_response``, ...) and the caller
records it as data. Results are delivered through ``on_result`` as soon as each one finishes, so
the caller can checkpoint while the rest are in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class LLMRequest:
    """One call. ``messages`` for chat formats; ``prompt`` for raw-text prompt formats."""

    key: str
    model: str
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    """temperature, top_p, max_tokens, stop, presence_penalty, frequency_penalty, seed (unset keys absent)"""


@dataclass
class LLMResult:
    key: str
    text: str | None
    finish_reason: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 1
    error: str | None = None
    reason: str | None = None
    replayed: bool = False
    """an answer this process already handed over once (a Batch API answer taken again by a later
    pass over the shard, ``infra.llm.batch``): its tokens were counted then, not again"""

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


ResultCallback = Callable[[LLMResult], None]


class Backend(Protocol):
    """What generate and annotate call."""

    name: str

    def run(self, requests: list[LLMRequest], on_result: ResultCallback) -> None:
        """Run every request; call ``on_result`` once per request (in any order)."""
        ...

    def close(self) -> None: ...
