import pytest

from ultrafeedback.keys import (
    annotation_key,
    content_key,
    critique_key,
    instruction_id,
    normalise_text,
    request_id,
    seeded_int,
    text_hash,
)


def test_normalise_text_trims_and_unifies_newlines():
    assert normalise_text("  Hello\r\nworld  \r\n\n") == "Hello\nworld"
    assert normalise_text("Cafe\u0301") == "Café"


def test_keys_change_with_every_part():
    base = ["i", "m", "served", "helpfulness", "sys", '{"t": 1}', "chat@1"]
    key = request_id(*base)
    assert key == request_id(*base)
    for index in range(len(base)):
        changed = list(base)
        changed[index] = changed[index] + "x"
        assert request_id(*changed) != key


def test_instruction_id_depends_on_source():
    assert instruction_id("a", "text") != instruction_id("b", "text")
    assert len(content_key("k", 1)) == 24


def test_seeded_int_is_stable():
    assert seeded_int(1, "a") == seeded_int(1, "a") != seeded_int(2, "a")


def test_judge_keys_carry_the_hash_of_every_text_shown():
    ids, hashes = ["a", "b"], [text_hash("first"), text_hash("second")]
    key = annotation_key(ids, hashes, "honesty", "judge", "v1", "{}")
    assert annotation_key(ids, [text_hash("first"), text_hash("second ")], "honesty", "judge", "v1", "{}") != key
    assert annotation_key(ids, list(reversed(hashes)), "honesty", "judge", "v1", "{}") != key  # texts swapped
    critiqued = critique_key("a", text_hash("x"), "judge", "v1", "{}")
    assert critique_key("a", text_hash("y"), "judge", "v1", "{}") != critiqued
    assert text_hash("x") == text_hash("x") and len(text_hash("x")) == 24


def test_an_annotation_key_needs_a_hash_per_completion():
    with pytest.raises(ValueError, match="2 completion ids but 1 response hashes"):
        annotation_key(["a", "b"], [text_hash("x")], "honesty", "judge", "v1", "{}")


def test_a_content_key_is_the_sha256_of_the_parts_as_json_dumps_writes_them():
    """Keys in stores written before must be found again: the JSON behind a key is exactly
    ``json.dumps(..., sort_keys=True, ensure_ascii=False, default=str)``."""
    import hashlib
    import json
    from pathlib import Path

    cases = [
        ("rng", 42, "shuffle", "abc", "honesty", 3),
        ("annotation/2", [["id", "hash"]], "honesty", "gpt-4", "v1", '{"temperature": 0}'),
        ("x", {"b": 1, "a": [1.5, None, True]}, "é ünïcödé ✓", Path("/tmp/p")),
    ]
    for kind, *parts in cases:
        blob = json.dumps([kind, *parts], sort_keys=True, ensure_ascii=False, default=str)
        assert content_key(kind, *parts) == hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]
