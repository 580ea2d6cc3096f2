"""Per-model prompt formats (reference §2): how an instruction and its principle reach a model.

A format turns (instruction, principle system prompt) into either chat ``messages`` (API models and
chat-templated servers) or one raw ``prompt`` string plus ``stop`` strings (completion endpoints and
offline vLLM for the open models of the original pool). The placement of the principle follows the
original generation code; the default system texts are our own wording in the spirit of the
FastChat templates the original used.

``PROMPT_FORMAT_VERSION`` hashes what every format renders, and it is part of every request id, so
changing a format regenerates the completions made with it. ``FORMATS[name].version`` is the same
hash for one format, for callers that want to re-run only that format's models.

Known departures from the original, all deliberate:

* whitespace inside the FastChat templates (e.g. falcon's RWKV-style rewrite of blank lines inside
  the message) is not reproduced; the instruction is passed through unchanged;
* ``oasst_pythia`` (for pythia-12b) is ours: the original had no prompt path for that model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

ULTRALM_SYSTEM = (
    "A single-turn conversation between an inquisitive user and an artificial intelligence assistant. "
    "The assistant replies to the user's questions politely, helpfully and in great detail."
)
VICUNA_SYSTEM = (
    "A conversation between a curious user and an artificial intelligence assistant. "
    "The assistant answers the user's questions helpfully, in detail and politely."
)
LLAMA2_SYSTEM = (
    "You are an assistant that is helpful, respectful and honest. Answer as helpfully as possible "
    "while keeping the user safe. Never include content that is harmful, unethical, racist, sexist, "
    "toxic, dangerous or illegal, and make sure your replies are free of social bias and positive "
    "in tone.\n\n"
    "When a question does not make sense or is not factually coherent, explain what is wrong with it "
    "rather than giving an incorrect answer. When you do not know the answer to a question, say so "
    "instead of sharing false information."
)
MPT_SYSTEM = (
    "A conversation between a user and an AI assistant built on a large language model. "
    "The assistant gives helpful and honest answers."
)
ALPACA_SYSTEM = "Below is an instruction describing a task. Write a response that fulfils the request appropriately."


@dataclass(frozen=True)
class BuiltPrompt:
    """What a backend sends: ``messages`` (chat) or ``prompt`` (raw text), never both."""

    format: str
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    stop: list[str] = field(default_factory=list)
    """Stop strings the format needs (raw-text formats); merge them into the sampling ``stop``."""
    uses_system_prompt: bool = True
    """False where the format drops the principle (wizardlm-7b); the principle is still recorded."""


@dataclass(frozen=True)
class PromptFormat:
    name: str
    description: str
    render: Callable[[str, str], BuiltPrompt]
    version: str = ""


def _with_principle(default: str, principle: str) -> str:
    """The original appends the principle to the template's default system text with a space."""
    return f"{default} {principle}" if principle else default


def _chat(instruction: str, principle: str) -> BuiltPrompt:
    messages = [{"role": "system", "content": principle}] if principle else []
    messages.append({"role": "user", "content": instruction})
    return BuiltPrompt("chat", messages=messages)


def _ultralm(instruction: str, principle: str) -> BuiltPrompt:
    lines = [f"User: {ULTRALM_SYSTEM}</s>"]
    if principle:
        lines.append(f"User: {principle}</s>")
    lines += [f"User: {instruction}</s>", "Assistant: "]
    return BuiltPrompt("ultralm", prompt="\n".join(lines), stop=["</s>"])


def _starchat(instruction: str, principle: str) -> BuiltPrompt:
    prompt = "\n".join([f"<|system|>{principle}<|end|>", f"<|user|>{instruction}<|end|>", "<|assistant|>"])
    return BuiltPrompt("starchat", prompt=prompt, stop=["<|end|>"])


def _wizardlm_7b(instruction: str, principle: str) -> BuiltPrompt:
    return BuiltPrompt("wizardlm-7b", prompt=f"{instruction}\n\n### Response:", stop=["</s>"], uses_system_prompt=False)


def _llama2(instruction: str, principle: str) -> BuiltPrompt:
    # The default safety text stays the system block; the principle opens the user turn (§2).
    user = f"{principle} {instruction}" if principle else instruction
    prompt = f"[INST] <<SYS>>\n{LLAMA2_SYSTEM}\n<</SYS>>\n\n{user} [/INST]"
    return BuiltPrompt("llama-2", prompt=prompt, stop=["</s>"])


def _vicuna(instruction: str, principle: str) -> BuiltPrompt:
    prompt = f"{_with_principle(VICUNA_SYSTEM, principle)} USER: {instruction} ASSISTANT:"
    return BuiltPrompt("vicuna_v1.1", prompt=prompt, stop=["</s>"])


def _chatml_text(system: str, instruction: str) -> str:
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return f"{head}<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"


def _chatml(instruction: str, principle: str) -> BuiltPrompt:
    return BuiltPrompt("chatml", prompt=_chatml_text(principle, instruction), stop=["<|im_end|>"])


def _mpt(instruction: str, principle: str) -> BuiltPrompt:
    prompt = _chatml_text(_with_principle(MPT_SYSTEM, principle), instruction)
    return BuiltPrompt("mpt", prompt=prompt, stop=["<|im_end|>", "<|endoftext|>"])


def _falcon(instruction: str, principle: str) -> BuiltPrompt:
    head = f"{principle}\n\n" if principle else ""
    return BuiltPrompt("falcon", prompt=f"{head}User: {instruction}\n\nAssistant:", stop=["\nUser"])


def _alpaca(instruction: str, principle: str) -> BuiltPrompt:
    prompt = f"{_with_principle(ALPACA_SYSTEM, principle)}\n\n### Instruction: {instruction}\n\n### Response:"
    return BuiltPrompt("alpaca", prompt=prompt, stop=["</s>"])


def _oasst_pythia(instruction: str, principle: str) -> BuiltPrompt:
    user = f"{principle}\n\n{instruction}" if principle else instruction
    prompt = f"<|prompter|>{user}<|endoftext|><|assistant|>"
    return BuiltPrompt("oasst_pythia", prompt=prompt, stop=["<|endoftext|>"])


_RENDERERS: list[tuple[str, str, Callable[[str, str], BuiltPrompt]]] = [
    ("chat", "chat messages: system = principle prompt, user = instruction (API models)", _chat),
    (
        "ultralm",
        "User:/Assistant: lines with a fixed system turn and the principle as a second turn",
        _ultralm,
    ),
    ("starchat", "<|system|>/<|user|>/<|assistant|> with <|end|>", _starchat),
    (
        "wizardlm-7b",
        "'{instruction}\\n\\n### Response:'; no system prompt, the principle is dropped",
        _wizardlm_7b,
    ),
    ("llama-2", "[INST] <<SYS>> default safety text <</SYS>>; the principle opens the user turn", _llama2),
    (
        "vicuna_v1.1",
        "default system text + principle, then 'USER: ... ASSISTANT:' (also wizardlm-13b/30b)",
        _vicuna,
    ),
    ("chatml", "ChatML with the principle as the system message", _chatml),
    ("mpt", "ChatML with MPT's default system text + principle", _mpt),
    ("falcon", "principle, then 'User: ...\\n\\nAssistant:', stop at '\\nUser'", _falcon),
    ("alpaca", "Alpaca's default system text + principle, '### Instruction:' / '### Response:'", _alpaca),
    ("oasst_pythia", "<|prompter|>...<|endoftext|><|assistant|> (our choice for pythia-12b)", _oasst_pythia),
]

_PROBE = ("\x00instruction\x00", "\x00principle\x00")


def _fingerprint(name: str, render: Callable[[str, str], BuiltPrompt]) -> str:
    """Everything a format produces, for a probe with and without a principle."""
    parts = [name]
    for principle in (_PROBE[1], ""):
        built = render(_PROBE[0], principle)
        parts.append(repr((built.messages, built.prompt, built.stop, built.uses_system_prompt)))
    return "\x01".join(parts)


FORMATS: dict[str, PromptFormat] = {
    name: PromptFormat(
        name=name,
        description=description,
        render=render,
        version=hashlib.sha256(_fingerprint(name, render).encode("utf-8")).hexdigest()[:12],
    )
    for name, description, render in _RENDERERS
}
"""Format name -> format. ``ModelEntry.prompt_format`` names one of these."""

PROMPT_FORMAT_VERSION: str = hashlib.sha256(
    "\x02".join(f"{f.name}={f.version}" for f in FORMATS.values()).encode("utf-8")
).hexdigest()[:12]

REFERENCE_MODEL_FORMATS: dict[str, str] = {
    "gpt-4": "chat",
    "gpt-3.5-turbo": "chat",
    "bard": "chat",
    "ultralm-65b": "ultralm",
    "ultralm-13b": "ultralm",
    "wizardlm-30b": "vicuna_v1.1",
    "wizardlm-13b": "vicuna_v1.1",
    "wizardlm-7b": "wizardlm-7b",
    "vicuna-33b": "vicuna_v1.1",
    "llama-2-70b-chat": "llama-2",
    "llama-2-13b-chat": "llama-2",
    "llama-2-7b-chat": "llama-2",
    "alpaca-7b": "alpaca",
    "falcon-40b-instruct": "falcon",
    "starchat": "starchat",
    "mpt-30b-chat": "mpt",
    "pythia-12b": "oasst_pythia",
}
"""The original pool's 17 model ids -> their format (reference §2), for the paper spec."""


def build_prompt(format: str, instruction: str, system_prompt: str) -> BuiltPrompt:
    """Render one completion request in the named format; a blank system prompt means none.

    Raises ValueError naming the format and the known ones when it is unknown (a spec error that
    validation should catch before any model is loaded).
    """
    entry = FORMATS.get(format)
    if entry is None:
        raise ValueError(f"unknown prompt format {format!r}; known: {', '.join(FORMATS)}")
    principle = system_prompt.strip() if system_prompt else ""
    return entry.render(instruction, principle)
