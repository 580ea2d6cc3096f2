"""The binarized gate: chat-format chosen/rejected for the prompt, scores ordered per the rule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from ultrafeedback.expectations.checks import (
    DERIVED_PREFIX,
    Suite,
    columns_match,
    gx_expectations,
    meta,
    non_empty,
    not_null,
    row_count,
)
from ultrafeedback.expectations.models import GateContext

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

CHAT_ROLES: frozenset[str] = frozenset({"system", "user", "assistant"})

CHAT_OK = "ok"

BINARIZED_COLUMNS: tuple[str, ...] = (
    "prompt",
    "prompt_id",
    "chosen",
    "rejected",
    "score_chosen",
    "score_rejected",
)
"""Columns every binarized split has (H4 and Argilla rules); others (messages, source) may exist."""


def build_binarized(ctx: GateContext) -> list[Expectation]:
    """Binarized rows: chat-format chosen/rejected for the prompt, scores ordered per the rule."""
    gxe = gx_expectations()
    relation = ">=" if ctx.allow_ties else ">"
    return [
        columns_match("binarized", BINARIZED_COLUMNS, exact=False),
        not_null("prompt_id"),
        not_null("prompt"),
        non_empty("prompt"),
        gxe.ExpectColumnValuesToBeInSet(
            column=_chat_column("chosen"),
            value_set=[CHAT_OK],
            **meta("chosen is a chat", "rows have a malformed chosen conversation"),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column=_chat_column("rejected"),
            value_set=[CHAT_OK],
            **meta("rejected is a chat", "rows have a malformed rejected conversation"),
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="score_chosen",
            column_B="score_rejected",
            or_equal=ctx.allow_ties,
            ignore_row_if="neither",
            **meta(f"score_chosen {relation} score_rejected", "rows break the score order"),
        ),
        row_count(1, None, "not empty"),
    ]


def _chat_column(column: str) -> str:
    return f"{DERIVED_PREFIX}{column}_chat"


def chat_problem(messages: Any, prompt: Any) -> str:
    """Why ``messages`` is not a usable [user prompt ..., assistant reply] chat, or ``"ok"``.

    Accepts lists, tuples and numpy arrays (what Parquet gives back for a list column).
    """
    if isinstance(messages, str | bytes | Mapping) or not hasattr(messages, "__len__"):
        return "not a list of messages"
    messages = list(messages)
    if len(messages) < 2:
        return "fewer than 2 messages"
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            return f"message {index} is not a mapping"
        if message.get("role") not in CHAT_ROLES:
            return f"message {index} has role {message.get('role')!r}"
        if not isinstance(message.get("content"), str):
            return f"message {index} has no text content"
    if messages[-1]["role"] != "assistant":
        return "last message is not from the assistant"
    # A null prompt is the prompt checks' failure; do not report it a second time here.
    if isinstance(prompt, str) and not any(m["role"] == "user" and m["content"] == prompt for m in messages[:-1]):
        return "no user message equals the prompt"
    return CHAT_OK


def _prepare(df: pd.DataFrame, ctx: GateContext) -> pd.DataFrame:
    if "prompt" not in df.columns:
        return df
    derived = {}
    for column in ("chosen", "rejected"):
        if column in df.columns:
            derived[_chat_column(column)] = [
                chat_problem(messages, prompt) for messages, prompt in zip(df[column], df["prompt"], strict=True)
            ]
    return df.assign(**derived)


SUITE = Suite("binarized", build_binarized, prepare=_prepare)
