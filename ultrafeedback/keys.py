"""Content keys: a unit of work's key changes exactly when something that shapes its output does."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

_SPACE = re.compile(r"\s+")
_KEY_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str)
"""What ``json.dumps(..., sort_keys=True, ensure_ascii=False, default=str)`` uses, made once: keys
are computed several times per call the build makes, and dumps builds an encoder each time."""


def content_key(kind: str, *parts: Any) -> str:
    """A stable 24-hex-digit key over ``kind`` and JSON-serialisable parts."""
    blob = _KEY_JSON.encode([kind, *parts])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def normalise_text(text: str) -> str:
    """NFC, unified newlines, trimmed lines and ends; inner spacing of a line is kept."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip()


def instruction_id(source: str, normalised: str) -> str:
    return content_key("instruction", source, normalised)


def request_id(
    instruction: str,
    model: str,
    served_model: str,
    principle: str,
    system_prompt: str,
    sampling_json: str,
    prompt_format_version: str,
) -> str:
    return content_key(
        "request",
        instruction,
        model,
        served_model,
        principle,
        system_prompt,
        sampling_json,
        prompt_format_version,
    )


def text_hash(text: str) -> str:
    """The hash of a response text that every key computed from the response carries (24 hex digits
    of SHA-256 over its UTF-8 bytes, as stored: a changed text, even by a space, gets new keys)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def annotation_key(
    completion_ids: list[str],
    response_hashes: list[str],
    aspect: str,
    judge_model: str,
    template_version: str,
    sampling_json: str,
) -> str:
    """One judge call over completions in the order shown, keyed by their ids *and* the hashes of
    the texts shown (``text_hash``): a rating can only be found again for the texts it rated."""
    if len(completion_ids) != len(response_hashes):
        raise ValueError(f"{len(completion_ids)} completion ids but {len(response_hashes)} response hashes")
    shown = [[cid, digest] for cid, digest in zip(completion_ids, response_hashes, strict=True)]
    return content_key("annotation/2", shown, aspect, judge_model, template_version, sampling_json)


def critique_key(
    completion_id: str, response_hash: str, judge_model: str, template_version: str, sampling_json: str
) -> str:
    """One critique of one completion, keyed by its id and the hash of the text critiqued."""
    return content_key("critique/2", completion_id, response_hash, judge_model, template_version, sampling_json)


def seeded_int(seed: int, *parts: Any) -> int:
    """A deterministic 64-bit integer from a seed and parts, for per-item RNGs."""
    return int(content_key("rng", seed, *parts)[:16], 16)
