"""A model's own chat template, rendered as transformers' ``apply_chat_template`` renders it.

A template comes from a file the spec names (``ModelEntry.chat_template``, relative to the spec
file): a ``tokenizer_config.json`` (its ``chat_template``, the special tokens, ``add_bos_token``),
a model folder holding one (and maybe ``chat_template.jinja``, as newer transformers save it), or
a bare Jinja file (special tokens then come from ``ModelEntry.special_tokens``). The paper pool's
families ship as small tokenizer configs under ``deployments/chat_templates/``.

Rendering follows transformers (``transformers.utils.chat_template_utils``): a sandboxed Jinja
environment with ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension, a
``tojson`` filter that does not escape HTML, the ``raise_exception`` and ``strftime_now`` helpers,
and the tokenizer's special tokens (``bos_token``, ``eos_token``, ...) as variables next to
``messages`` and ``add_generation_prompt``. transformers itself is not needed (it is the ``local``
extra); the tests compare this renderer with transformers' own on every shipped template.

Two things happen after rendering, both part of the template's hash:

* when the tokenizer adds the BOS token itself (``add_bos_token: true``, as Llama's does), a
  leading ``bos_token`` is removed from the text: the server tokenizes a plain prompt with its
  special tokens, so the model would otherwise see BOS twice (transformers' own advice for
  ``apply_chat_template(tokenize=False)`` output);
* the stop strings are the ``eos_token`` and the config's optional ``stop`` list (a key of ours,
  e.g. ChatML's ``<|im_end|>`` where the EOS token is another one).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

TOKEN_KEYS: tuple[str, ...] = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
"""The special tokens transformers passes to a template (its ``special_tokens_map``)."""

CONFIG_NAME = "tokenizer_config.json"
TEMPLATE_NAME = "chat_template.jinja"

SYSTEM_PROBE = "\x00system-probe\x00"
"""A system message no template writes by itself: whether a rendering shows it tells whether the
template has a system role."""


class ChatTemplateError(ValueError):
    """A template file that cannot be read or rendered; the message names the file."""


@dataclass(frozen=True)
class ChatTemplate:
    """One chat template with the special tokens it is rendered with."""

    name: str
    """the file it came from (its name only: the hash, not the folder, identifies it)"""
    source: str
    tokens: dict[str, Any] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    strip_bos: bool = False

    @property
    def digest(self) -> str:
        """12 hex digits of sha256 over the template text, its tokens, stops and BOS handling."""
        blob = json.dumps(
            [self.source, self.tokens, list(self.stop), self.strip_bos], sort_keys=True, ensure_ascii=False
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` (BOS handling applied); raises ChatTemplateError."""
        import jinja2

        try:
            text = _compiled(self.source).render(
                messages=messages, add_generation_prompt=add_generation_prompt, **self.tokens
            )
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"{self.name}: {exc}") from None
        bos = self.tokens.get("bos_token")
        if self.strip_bos and isinstance(bos, str) and bos and text.startswith(bos):
            text = text[len(bos) :]
        return text

    def default_system(self) -> str:
        """The system text the template writes when it is given no system message (``''`` when it
        writes an empty one), found by rendering with and without a probe system message; raises
        ChatTemplateError when the template has no system role, or writes a system block only when
        given a system message (no default to append to)."""
        user = {"role": "user", "content": "?"}
        try:
            given = self.render([{"role": "system", "content": SYSTEM_PROBE}, user])
        except ChatTemplateError as exc:
            raise ChatTemplateError(f"{exc}: the template has no system role") from None
        if SYSTEM_PROBE not in given:
            raise ChatTemplateError(f"{self.name}: the template has no system role (it drops a system message)")
        before, _, after = given.partition(SYSTEM_PROBE)
        plain = self.render([user])
        if len(plain) < len(before) + len(after) or not (plain.startswith(before) and plain.endswith(after)):
            raise ChatTemplateError(
                f"{self.name}: the template writes no default system text (its system block appears only when a "
                "system message is given)"
            )
        return plain[len(before) : len(plain) - len(after)]

    def has_system_role(self) -> bool:
        """Whether the template shows a system message (templates without one drop it or raise)."""
        try:
            text = self.render([{"role": "system", "content": SYSTEM_PROBE}, {"role": "user", "content": "?"}])
        except ChatTemplateError:
            return False
        return SYSTEM_PROBE in text


_LOCK = threading.Lock()
_COMPILED: dict[str, Any] = {}
_LOADED: dict[tuple[str, str, str], ChatTemplate] = {}


def _compiled(source: str) -> Any:
    with _LOCK:
        template = _COMPILED.get(source)
    if template is None:
        template = _environment().from_string(source)
        with _LOCK:
            _COMPILED[source] = template
    return template


def _environment() -> Any:
    """The Jinja environment transformers renders chat templates in."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def _token(value: Any) -> Any:
    """A special token as a config writes it: a string, or an AddedToken dict with its content."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _from_config(config: dict[str, Any], where: str) -> tuple[str | None, dict[str, Any], list[str], bool]:
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one, else the first
        named = {item.get("name"): item.get("template") for item in template if isinstance(item, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if template is not None and not isinstance(template, str):
        raise ChatTemplateError(f"{where}: chat_template is not a string")
    tokens = {key: _token(config[key]) for key in TOKEN_KEYS if _token(config.get(key)) is not None}
    extra = config.get("additional_special_tokens")
    if isinstance(extra, list):
        tokens["additional_special_tokens"] = [_token(item) for item in extra]
    stop = config.get("stop") or []
    if not isinstance(stop, list) or not all(isinstance(item, str) and item for item in stop):
        raise ChatTemplateError(f"{where}: stop must be a list of non-empty strings")
    return template, tokens, stop, bool(config.get("add_bos_token", False))


def read_template(path: str | Path, special_tokens: dict[str, str] | None = None) -> ChatTemplate:
    """The template at ``path`` (a tokenizer config, a folder with one, or a Jinja file), with
    ``special_tokens`` over the config's. Cached per file content; raises ChatTemplateError."""
    path = Path(path)
    config_path, template_path = path, None
    if path.is_dir():
        config_path = path / CONFIG_NAME
        template_path = path / TEMPLATE_NAME if (path / TEMPLATE_NAME).is_file() else None
        if not config_path.is_file() and template_path is None:
            raise ChatTemplateError(f"{path}: neither {CONFIG_NAME} nor {TEMPLATE_NAME} in this folder")
    elif not path.is_file():
        raise ChatTemplateError(f"{path}: file not found")
    try:
        raw = config_path.read_bytes() if config_path.is_file() else b""
        jinja = template_path.read_text(encoding="utf-8") if template_path else None
    except OSError as exc:
        raise ChatTemplateError(f"{path}: cannot read: {exc.strerror or exc}") from None
    overrides = dict(special_tokens or {})
    key = (str(path.resolve()), hashlib.sha256(raw + (jinja or "").encode()).hexdigest(), json.dumps(overrides))
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
    template = _parse(path, config_path, raw, jinja, overrides)
    with _LOCK:
        _LOADED[key] = template
    return template


def _parse(path: Path, config_path: Path, raw: bytes, jinja: str | None, overrides: dict[str, str]) -> ChatTemplate:
    import jinja2

    tokens: dict[str, Any] = {}
    stop: list[str] = []
    strip_bos = False
    source = jinja
    if config_path.is_file() and (config_path.suffix == ".json" or path.is_dir()):
        try:
            config = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ChatTemplateError(f"{config_path}: not a JSON tokenizer config: {exc}") from None
        if not isinstance(config, dict):
            raise ChatTemplateError(f"{config_path}: not a JSON object")
        from_config, tokens, stop, strip_bos = _from_config(config, str(config_path))
        source = source or from_config
    elif config_path.is_file():  # a bare Jinja file
        try:
            source = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ChatTemplateError(f"{config_path}: not UTF-8 text") from None
    if not source:
        raise ChatTemplateError(f"{path}: no chat_template in it")
    tokens.update(overrides)
    eos = tokens.get("eos_token")
    stops = tuple(dict.fromkeys([*([eos] if isinstance(eos, str) and eos else []), *stop]))
    try:
        _compiled(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"{path}: line {exc.lineno}: {exc.message}") from None
    return ChatTemplate(name=path.name, source=source, tokens=tokens, stop=stops, strip_bos=strip_bos)
