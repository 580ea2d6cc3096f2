"""How one pool entry's prompts are built, and the identity of that recipe in the request key.

A model's prompt comes from one of three places (``ModelEntry``):

* ``chat_template: <file>``: the model's own chat template (``chat_templates``) renders the
  principle and the instruction into one prompt, sent as raw text (``/v1/completions``, vLLM's
  ``generate``). Its identity is ``template:<file name>@<hash>``: the hash covers the template,
  its special tokens, its stops and where the principle goes, so editing any of them regenerates
  exactly that model's completions.
* ``chat_template: server``: chat messages, and the server applies the model's template
  (``vllm serve``'s chat endpoint, vLLM's ``LLM.chat``, the embedded model's own template).
  Identity ``server``.
* otherwise ``prompt_format``: ``chat`` (messages; the API models) or one of the raw formats of
  ``prompt_formats``, kept for servers without a template. Identity ``<format>@<version>``, as
  before templates existed, so existing request ids stay valid.

Where the principle goes (``ModelEntry.principle_placement``, joined by ``principle_joiner``):

* ``system`` sends it as the system message, in place of the template's default system text;
* ``default_system`` appends it to the template's default system text (``ChatTemplate.default_system``),
  joined by a space: what the original did with FastChat's templates (reference §2: Vicuna,
  WizardLM-13B/30B, Alpaca, MPT, Falcon; UltraLM's second ``User:`` line is this placement with the
  joiner ``</s>User: ``);
* ``instruction`` puts it before the instruction in the user turn, joined by a blank line
  (LLaMA-2 in the original: the default system block kept, the principle opening the user turn with
  no joiner);
* ``none`` leaves it out (the original's wizardlm-7b; the principle is still recorded).

``auto`` is ``system`` when the template shows a system message and ``instruction`` when it has no
system role (drops it, or raises as Mistral's and Gemma's do); chat messages (``server``, ``chat``)
take ``system``. ``default_system`` needs a template file: the server's default text is not known
here.

The identity is stored with each request (``CompletionRequest.prompt_template``) and each
completion (``Completion.prompt_template``): which template produced the prompt.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ultrafeedback.spec import SpecError
from ultrafeedback.tasks.generate.chat_templates import ChatTemplate, ChatTemplateError, read_template
from ultrafeedback.tasks.generate.prompt_formats import FORMATS, BuiltPrompt, build_prompt

if TYPE_CHECKING:
    from ultrafeedback.spec import ModelEntry, Spec

SERVER = "server"
"""``chat_template`` value: send chat messages and let the server apply the model's own template."""

PRINCIPLE_SEPARATOR = "\n\n"
"""Between the principle and the instruction when the principle goes into the user turn."""

JOINERS = {"default_system": " ", "instruction": PRINCIPLE_SEPARATOR}
"""The default ``principle_joiner`` per placement (the placements that join the principle to something)."""

_PROBE = ("Name three primary colours.", "Answer briefly and truthfully.")
"""A sample instruction and principle that ``validate`` renders every template with."""


@dataclass(frozen=True)
class PromptBuilder:
    """One pool entry's prompt recipe."""

    identity: str
    """the request key's prompt part and the completions' ``prompt_template``"""
    kind: str
    """``template``, ``server``, or the raw/chat format's name"""
    placement: str
    """where the principle goes: ``system``, ``default_system``, ``instruction`` or ``none`` (raw
    formats: their own)"""
    template: ChatTemplate | None = None
    joiner: str = PRINCIPLE_SEPARATOR
    """between the principle and what it joins (``default_system``, ``instruction``)"""
    default_system: str = ""
    """the template's default system text (``default_system`` placement)"""

    def build(self, instruction: str, system_prompt: str) -> BuiltPrompt:
        """The prompt (or messages) for one request; raises ChatTemplateError when the template does."""
        principle = system_prompt.strip() if system_prompt else ""
        if self.kind not in ("template", SERVER, "chat"):
            return build_prompt(self.kind, instruction, system_prompt)
        messages = _messages(instruction, principle, self.placement, self.joiner, self.default_system)
        uses = self.placement != "none"
        if self.template is None:
            return BuiltPrompt(self.kind, messages=messages, uses_system_prompt=uses)
        prompt = self.template.render(messages, add_generation_prompt=True)
        return BuiltPrompt("template", prompt=prompt, stop=list(self.template.stop), uses_system_prompt=uses)


def _messages(
    instruction: str, principle: str, placement: str, joiner: str, default_system: str
) -> list[dict[str, str]]:
    if principle and placement in ("system", "default_system"):
        system = principle if placement == "system" else f"{default_system}{joiner}{principle}"
        return [{"role": "system", "content": system}, {"role": "user", "content": instruction}]
    if principle and placement == "instruction":
        return [{"role": "user", "content": f"{principle}{joiner}{instruction}"}]
    return [{"role": "user", "content": instruction}]


_REGISTRY: dict[str, PromptBuilder] = {}
_LOCK = threading.Lock()


def registered(identity: str) -> PromptBuilder | None:
    """The recipe with this identity that ``builder_for`` made in this process (assign makes every
    pool entry's, also when it finds its requests up to date), or None."""
    with _LOCK:
        return _REGISTRY.get(identity)


def builder_for(spec: Spec, entry: ModelEntry) -> PromptBuilder:
    """The recipe of one pool entry; raises SpecError naming the entry's key when its template file
    or format cannot be used."""
    builder = _make(spec, entry)
    with _LOCK:
        _REGISTRY[builder.identity] = builder
    return builder


def _make(spec: Spec, entry: ModelEntry) -> PromptBuilder:
    index = next(i for i, e in enumerate(spec.models) if e.id == entry.id)
    where = f"models[{index}] ({entry.id})"
    chosen = entry.principle_placement
    if entry.chat_template is None or entry.chat_template == SERVER:
        kind = SERVER if entry.chat_template == SERVER else entry.prompt_format
        if kind != SERVER and kind not in FORMATS:
            raise SpecError(
                f"{where}.prompt_format: unknown format {entry.prompt_format!r}; known: {', '.join(FORMATS)}"
            )
        if kind not in (SERVER, "chat"):  # a raw format places the principle itself
            return PromptBuilder(identity=f"{kind}@{FORMATS[kind].version}", kind=kind, placement="format")
        placement = "system" if chosen == "auto" else chosen  # default_system here: refused by spec_checks
        joiner = _joiner(entry, placement)
        identity = SERVER if kind == SERVER else f"chat@{FORMATS['chat'].version}"
        if placement != "system":
            identity += f"+principle={placement}"
        if joiner != PRINCIPLE_SEPARATOR:
            identity += f"+joiner={json.dumps(joiner)}"
        return PromptBuilder(identity=identity, kind=kind, placement=placement, joiner=joiner)
    path = spec.resolve_path(entry.chat_template)
    placement = chosen
    try:
        template = read_template(path, entry.special_tokens)
        placement = chosen if chosen != "auto" else ("system" if template.has_system_role() else "instruction")
        joiner = _joiner(entry, placement)
        builder = PromptBuilder(
            identity=f"template:{template.name}@{_digest(template, placement, joiner)}",
            kind="template",
            placement=placement,
            template=template,
            joiner=joiner,
            default_system=template.default_system() if placement == "default_system" else "",
        )
        builder.build(*_PROBE)  # a template that cannot render the simplest request fails here, not mid-run
    except ChatTemplateError as exc:
        field = "principle_placement=default_system" if placement == "default_system" else "chat_template"
        raise SpecError(f"{where}.{field}: {exc}") from None
    return builder


def _joiner(entry: ModelEntry, placement: str) -> str:
    """The entry's ``principle_joiner``, else its placement's default (the blank line for the
    placements that join nothing, which keeps their request ids as they were before joiners)."""
    if entry.principle_joiner is not None:
        return entry.principle_joiner
    return JOINERS.get(placement, PRINCIPLE_SEPARATOR)


def _digest(template: ChatTemplate, placement: str, joiner: str) -> str:
    from ultrafeedback.keys import content_key

    return content_key("prompt-template", template.digest, placement, joiner)[:12]


def builders(spec: Spec) -> dict[str, PromptBuilder]:
    """Model id -> its prompt recipe, for every pool entry; raises SpecError for the first unusable."""
    return {entry.id: builder_for(spec, entry) for entry in spec.models}
