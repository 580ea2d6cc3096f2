"""The one registry of stage outputs: each output's folder in the store, record schema and key.

Tasks, the flow, ``status`` and the gates all name outputs through this module, so adding an
output (or moving one) is one entry here. Stages themselves (what each reads, how it shards, what
one shard does, which gate checks it) are in ``tasks.stages``.

Layouts:

* ``sharded``: one file per shard, ``{folder}/shard-NNNNN.parquet``, rewritten whole when the
  shard is recomputed (instructions, requests, scored, pairs). Each file carries the fingerprint of
  the inputs it was computed from in its Parquet metadata, so an unchanged shard is skipped.
* ``log``: an append-only result log of immutable checkpoint parts
  (``{folder}/{time}-s{shard}-{uuid}.parquet``), keyed by a content key (LLM results, failures).
* ``table``: one small table replaced by each run (quarantine, dropped).

``binarized`` is sharded per split: ``binarized/{split}/shard-NNNNN.parquet``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from ultrafeedback.records import (
    AspectAnnotation,
    Completion,
    CompletionRequest,
    Critique,
    Failure,
    Instruction,
    Pair,
    Quarantined,
    ScoredCompletion,
)

Layout = Literal["sharded", "log", "table"]


@dataclass(frozen=True)
class Output:
    """One stage output: where it lives, what a row is and which column is its key."""

    name: str
    folder: str
    record: type[BaseModel] | None
    key: str | None
    layout: Layout
    stage: str
    """the stage that writes it"""

    def shard_path(self, shard: int) -> str:
        """The file of one shard (``sharded`` outputs)."""
        return f"{self.folder}/shard-{shard:05d}.parquet"


def _outputs(*items: Output) -> dict[str, Output]:
    return {item.name: item for item in items}


OUTPUTS: dict[str, Output] = _outputs(
    Output("instructions", "instructions", Instruction, "id", "sharded", "ingest"),
    Output("quarantine", "quarantine", Quarantined, None, "table", "ingest"),
    Output("dropped", "dropped", Quarantined, None, "table", "ingest"),
    Output("requests", "requests", CompletionRequest, "request_id", "sharded", "assign"),
    Output("completions", "completions", Completion, "request_id", "log", "generate"),
    Output("annotations", "annotations", AspectAnnotation, "annotation_key", "log", "annotate"),
    Output("critiques", "critiques", Critique, "critique_key", "log", "annotate"),
    Output("scored", "scored", ScoredCompletion, "completion_id", "sharded", "score"),
    Output("pairs", "pairs", Pair, "pair_id", "sharded", "pairs"),
    Output("binarized", "binarized", None, "prompt_id", "sharded", "pairs"),
)
"""Every record output, in pipeline order."""

FAILED_OUTPUTS: tuple[str, ...] = ("completions", "annotations", "critiques")
"""The outputs whose units call a model and so can fail; their failures are ``failures/{name}``."""


def output(name: str) -> Output:
    """The output called ``name`` (KeyError names the known ones)."""
    try:
        return OUTPUTS[name]
    except KeyError:
        raise KeyError(f"unknown stage output {name!r}; known: {', '.join(OUTPUTS)}") from None


def failures_output(name: str) -> Output:
    """The failure log of an output whose units call a model."""
    if name not in FAILED_OUTPUTS:
        raise KeyError(f"output {name!r} records no failures; those that do: {', '.join(FAILED_OUTPUTS)}")
    return Output(f"failures/{name}", f"failures/{name}", Failure, "key", "log", OUTPUTS[name].stage)
