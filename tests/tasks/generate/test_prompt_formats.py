"""Per-model prompt formats (reference §2): where the instruction and the principle land."""

from __future__ import annotations

import re

import pytest

from ultrafeedback.tasks.generate.prompt_formats import (
    ALPACA_SYSTEM,
    FORMATS,
    LLAMA2_SYSTEM,
    MPT_SYSTEM,
    PROMPT_FORMAT_VERSION,
    REFERENCE_MODEL_FORMATS,
    ULTRALM_SYSTEM,
    VICUNA_SYSTEM,
    build_prompt,
)

INSTRUCTION = "List three primes.\nKeep it short."
PRINCIPLE = "Be honest about uncertainty."

EXPECTED = {
    "ultralm": (
        f"User: {ULTRALM_SYSTEM}</s>\nUser: {PRINCIPLE}</s>\nUser: {INSTRUCTION}</s>\nAssistant: ",
        ["</s>"],
    ),
    "starchat": (f"<|system|>{PRINCIPLE}<|end|>\n<|user|>{INSTRUCTION}<|end|>\n<|assistant|>", ["<|end|>"]),
    "wizardlm-7b": (f"{INSTRUCTION}\n\n### Response:", ["</s>"]),
    "llama-2": (f"[INST] <<SYS>>\n{LLAMA2_SYSTEM}\n<</SYS>>\n\n{PRINCIPLE} {INSTRUCTION} [/INST]", ["</s>"]),
    "vicuna_v1.1": (f"{VICUNA_SYSTEM} {PRINCIPLE} USER: {INSTRUCTION} ASSISTANT:", ["</s>"]),
    "chatml": (
        f"<|im_start|>system\n{PRINCIPLE}<|im_end|>\n<|im_start|>user\n{INSTRUCTION}<|im_end|>\n"
        "<|im_start|>assistant\n",
        ["<|im_end|>"],
    ),
    "mpt": (
        f"<|im_start|>system\n{MPT_SYSTEM} {PRINCIPLE}<|im_end|>\n<|im_start|>user\n{INSTRUCTION}<|im_end|>\n"
        "<|im_start|>assistant\n",
        ["<|im_end|>", "<|endoftext|>"],
    ),
    "falcon": (f"{PRINCIPLE}\n\nUser: {INSTRUCTION}\n\nAssistant:", ["\nUser"]),
    "alpaca": (f"{ALPACA_SYSTEM} {PRINCIPLE}\n\n### Instruction: {INSTRUCTION}\n\n### Response:", ["</s>"]),
    "oasst_pythia": (
        f"<|prompter|>{PRINCIPLE}\n\n{INSTRUCTION}<|endoftext|><|assistant|>",
        ["<|endoftext|>"],
    ),
}


def test_every_format_is_covered_here() -> None:
    assert set(FORMATS) == {"chat", *EXPECTED}


def test_chat_format_uses_messages() -> None:
    built = build_prompt("chat", INSTRUCTION, PRINCIPLE)
    assert built.prompt is None and built.stop == []
    assert built.messages == [
        {"role": "system", "content": PRINCIPLE},
        {"role": "user", "content": INSTRUCTION},
    ]
    assert build_prompt("chat", INSTRUCTION, "  ").messages == [{"role": "user", "content": INSTRUCTION}]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_raw_formats(name: str) -> None:
    built = build_prompt(name, INSTRUCTION, f"  {PRINCIPLE}\n")
    prompt, stop = EXPECTED[name]
    assert built.messages is None and built.format == name
    assert built.prompt == prompt
    assert built.stop == stop


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_principle_is_placed_unless_the_format_drops_it(name: str) -> None:
    built = build_prompt(name, INSTRUCTION, PRINCIPLE)
    text = built.prompt if built.prompt is not None else "\n".join(m["content"] for m in built.messages or [])
    assert INSTRUCTION in text
    assert (PRINCIPLE in text) == built.uses_system_prompt
    assert built.uses_system_prompt == (name != "wizardlm-7b")
    without = build_prompt(name, INSTRUCTION, "")
    rendered = without.prompt if without.prompt is not None else str(without.messages)
    assert PRINCIPLE not in rendered and "  " not in rendered.replace(LLAMA2_SYSTEM, "")


def test_unknown_format_names_itself_and_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'gemma'.*known: chat, ultralm, .*alpaca"):
        build_prompt("gemma", INSTRUCTION, PRINCIPLE)


def test_reference_pool_formats_are_known() -> None:
    assert len(REFERENCE_MODEL_FORMATS) == 17
    assert set(REFERENCE_MODEL_FORMATS.values()) <= set(FORMATS)
    assert REFERENCE_MODEL_FORMATS["wizardlm-13b"] == "vicuna_v1.1"


def test_versions_are_short_hashes_and_differ_per_format() -> None:
    assert re.fullmatch(r"[0-9a-f]{12}", PROMPT_FORMAT_VERSION)
    versions = [f.version for f in FORMATS.values()]
    assert all(re.fullmatch(r"[0-9a-f]{12}", v) for v in versions)
    assert len(set(versions)) == len(versions)
