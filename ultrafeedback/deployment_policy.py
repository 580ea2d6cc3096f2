"""What a run started from a Prefect deployment may change, read and write.

Anyone who can press "Run" in the Prefect UI sets a deployment run's parameters, so those are not
trusted the way the command line is: the worker's environment decides (``DeploymentPolicy``).

- **Keys.** A run may change only the spec keys the worker allows (``ULTRAFEEDBACK_ALLOWED_OVERRIDES``;
  by default sizes, quotas and seeds). ``overrides`` and ``spec_data`` are judged alike: every key
  whose value differs from the spec file's must be allowed, else the run is refused before any work,
  naming the key.
- **API keys.** Each endpoint's key goes only to the origin the spec file names for it and comes
  only from the source the file names (``Spec.pin_endpoints``; the backend factory enforces it too).
- **Paths.** The spec file, sources, decontamination lists and chat templates must lie under
  ``ULTRAFEEDBACK_INPUT_ROOTS``; the store and publish folders under ``ULTRAFEEDBACK_OUTPUT_ROOTS``.
  Local paths are compared after ``..`` and symlinks are resolved (``/proc/self/environ`` is under
  no root unless a root contains it); URLs by prefix (``s3://bucket/prefix``).
"""

from __future__ import annotations

import copy
import glob
import os
import posixpath
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, ValidationError

from ultrafeedback.spec import Endpoint, Spec, SpecError, apply_override, parse_override, read_spec_file, validate_dict

ALLOWED_OVERRIDES_ENV = "ULTRAFEEDBACK_ALLOWED_OVERRIDES"
INPUT_ROOTS_ENV = "ULTRAFEEDBACK_INPUT_ROOTS"
OUTPUT_ROOTS_ENV = "ULTRAFEEDBACK_OUTPUT_ROOTS"

DEFAULT_ALLOWED_OVERRIDES: tuple[str, ...] = (
    "seed",
    "completions_per_instruction",
    "sources.*.quota",
    "sampling.seed",
    "binarize.seed",
    "binarize.test_size",
    "execution.shard_size",
    "execution.checkpoint_every",
    "execution.parallel_shards",
    "execution.stop_grace_s",
    "execution.worker_processes",
    "execution.dask_workers",
    "publish.max_shard_rows",
)
"""Sizes, quotas and seeds: what a deployment run may change when the worker says nothing."""

DEFAULT_INPUT_ROOTS: tuple[str, ...] = ("deployments",)
DEFAULT_OUTPUT_ROOTS: tuple[str, ...] = (".ultrafeedback",)
"""Relative roots resolve against the flow run's working directory (the checkout)."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class DeploymentRefused(SpecError):
    """A deployment run asked for something the worker's policy does not allow."""


class _Step(NamedTuple):
    """One step of a key path: a mapping key, or a list item (its index, id and name)."""

    label: str
    aliases: tuple[str, ...]


def _item_step(index: int, item: Any) -> _Step:
    names = tuple(str(item[k]) for k in ("id", "name") if isinstance(item, dict) and item.get(k) is not None)
    return _Step(names[0] if names else str(index), (str(index), *names))


def _render(path: tuple[_Step, ...]) -> str:
    return ".".join(step.label for step in path) or "(the whole spec)"


def changed_keys(old: Any, new: Any, path: tuple[_Step, ...] = ()) -> Iterator[tuple[_Step, ...]]:
    """The key paths whose values differ between two spec mappings, as deep as both go."""
    if isinstance(new, dict) and (isinstance(old, dict) or (old is None and new)):
        old = old or {}
        for key in sorted(old.keys() | new.keys(), key=str):
            step = _Step(str(key), (str(key),))
            yield from changed_keys(old.get(key), new.get(key), (*path, step))
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for index, (before, after) in enumerate(zip(old, new, strict=True)):
            yield from changed_keys(before, after, (*path, _item_step(index, after)))
    elif old != new or type(old) is not type(new):
        yield path


def _matches(pattern: list[str], path: tuple[_Step, ...]) -> bool:
    """Whether a dotted pattern names ``path``: ``*`` is one step, ``**`` one or more; a list item
    matches its index, id or name (an id may itself contain dots)."""
    if not pattern:
        return not path
    if not path:
        return False
    head, step = pattern[0], path[0]
    if head == "**":
        return any(_matches(pattern[1:], path[n:]) for n in range(1, len(path) + 1))
    if head == "*" or head in step.aliases:
        if _matches(pattern[1:], path[1:]):
            return True
    for used in range(2, len(pattern) + 1):  # a dotted id: models.smollm2-135m-t0.7.sampling
        if ".".join(pattern[:used]) in step.aliases and _matches(pattern[used:], path[1:]):
            return True
    return False


class _Roots:
    """Local folders (resolved) and URL prefixes; ``contains`` answers for a resolved location."""

    def __init__(self, roots: tuple[str, ...], cwd: Path) -> None:
        self.shown = ", ".join(roots) or "none"
        self.local: list[str] = []
        self.urls: list[str] = []
        for root in roots:
            if "://" in root and not root.startswith("file://"):
                self.urls.append(_normal_url(root) or "")
            else:
                self.local.append(os.path.realpath(cwd / root.removeprefix("file://")))

    def contains(self, location: str) -> bool:
        if "://" in location:
            url = _normal_url(location)
            return url is not None and any(url == r or url.startswith(r.rstrip("/") + "/") for r in self.urls if r)
        return any(location == r or location.startswith(r.rstrip("/") + "/") for r in self.local)


def _normal_url(url: str) -> str | None:
    """``scheme://netloc/path`` without ``.`` steps; None for a URL with ``..`` (also encoded), a
    query or a chain."""
    scheme, sep, rest = url.partition("://")
    if not sep or "::" in url or "?" in rest or "#" in rest or "%2e" in rest.lower() or ".." in rest.split("/"):
        return None
    netloc, _, path = rest.partition("/")
    path = posixpath.normpath("/" + path) if path else ""
    return f"{scheme.lower()}://{netloc.lower()}{'' if path == '/' else path}"


class DeploymentPolicy(BaseModel):
    """The worker's rules for deployment runs (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    allowed_overrides: tuple[str, ...] = DEFAULT_ALLOWED_OVERRIDES
    input_roots: tuple[str, ...] = DEFAULT_INPUT_ROOTS
    output_roots: tuple[str, ...] = DEFAULT_OUTPUT_ROOTS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DeploymentPolicy:
        """The policy from the worker's environment: comma-separated lists; an unset variable keeps
        its default, an empty one allows nothing."""
        environ = os.environ if environ is None else environ

        def listed(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
            if name not in environ:
                return default
            return tuple(item.strip() for item in environ[name].split(",") if item.strip())

        return cls(
            allowed_overrides=listed(ALLOWED_OVERRIDES_ENV, DEFAULT_ALLOWED_OVERRIDES),
            input_roots=listed(INPUT_ROOTS_ENV, DEFAULT_INPUT_ROOTS),
            output_roots=listed(OUTPUT_ROOTS_ENV, DEFAULT_OUTPUT_ROOTS),
        )

    def allows(self, path: tuple[_Step, ...]) -> bool:
        return any(_matches(pattern.split("."), path) for pattern in self.allowed_overrides)

    def resolve(
        self,
        spec_path: str,
        overrides: list[str] | None = None,
        spec_data: dict[str, Any] | None = None,
        cwd: Path | None = None,
    ) -> Spec:
        """The spec of a deployment run, or ``DeploymentRefused`` naming what it may not do."""
        cwd = Path.cwd() if cwd is None else cwd
        inputs = _Roots(self.input_roots, cwd)
        path = Path(os.path.realpath(cwd / spec_path))
        self._check(inputs, str(path), "spec_path", INPUT_ROOTS_ENV)
        file_data = read_spec_file(path)
        if not isinstance(file_data, dict):
            raise SpecError(f"{path}: the spec must be a mapping, got {type(file_data).__name__}")
        data = copy.deepcopy(file_data)
        if spec_data is not None:
            self._check_changes(file_data, spec_data, "spec_data")
            data = copy.deepcopy(spec_data)
        for index, text in enumerate(overrides or []):
            key, value = parse_override(text)
            before = copy.deepcopy(data)
            apply_override(data, key, value)
            self._check_changes(before, data, f"overrides[{index}] ({key})")
        origin = "spec_data" if spec_data is not None else str(path)
        spec = validate_dict(data, origin=origin, base_dir=str(path.parent))
        spec.pin_endpoints(_file_endpoints(file_data, path))
        for name in spec.endpoints:
            refusal = spec.key_refusal(name)
            if refusal is not None:
                raise DeploymentRefused(f"deployment run refused: {refusal}")
        self._check_paths(spec, inputs, _Roots(self.output_roots, cwd), cwd)
        return spec

    def check_store(self, uri: str, cwd: Path | None = None) -> None:
        """Refuse a store outside the worker's output roots (a GPU job's ``store`` parameter)."""
        where = cwd or Path.cwd()
        self._check(_Roots(self.output_roots, where), _output_location(uri, where), "store", OUTPUT_ROOTS_ENV)

    def _check_changes(self, before: Any, after: Any, where: str) -> None:
        refused = [_render(p) for p in changed_keys(before, after) if not self.allows(p)]
        if refused:
            raise DeploymentRefused(
                f"deployment run refused: {where} changes {', '.join(refused)}, which this worker does not let "
                f"a deployment run change (allowed: {', '.join(self.allowed_overrides) or 'nothing'}; "
                f"set {ALLOWED_OVERRIDES_ENV} on the worker to change that)"
            )

    def _check(self, roots: _Roots, location: str, key: str, env: str, written: str | None = None) -> None:
        if not roots.contains(location):
            shown = location if written in (None, location) else f"{written} (that is {location})"
            raise DeploymentRefused(
                f"deployment run refused: {key}: {shown} is not under the worker's roots ({roots.shown}; "
                f"set {env} on the worker to change them)"
            )

    def _check_paths(self, spec: Spec, inputs: _Roots, outputs: _Roots, cwd: Path) -> None:
        for index, source in enumerate(spec.sources):
            key = f"sources[{index}] ({source.name}).path"
            if source.loader == "hf" and _is_hub_id(source.path, spec, cwd):
                continue
            self._check_input(inputs, spec.resolve_path(source.path), key, cwd)
        for index, entry in enumerate(spec.ingest.decontaminate):
            self._check_input(inputs, spec.resolve_path(entry), f"ingest.decontaminate[{index}]", cwd)
        for index, model in enumerate(spec.models):  # a template file's text goes into every prompt sent
            if model.chat_template is not None and model.chat_template != "server":
                key = f"models[{index}] ({model.id}).chat_template"
                self._check_input(inputs, spec.resolve_path(model.chat_template), key, cwd)
        self._check(outputs, _output_location(spec.store, cwd), "store", OUTPUT_ROOTS_ENV)
        for index, target in enumerate(spec.publish.targets):
            if target.kind in ("local", "s3") and target.uri:
                where = _output_location(target.uri, cwd)
                self._check(outputs, where, f"publish.targets[{index}].uri", OUTPUT_ROOTS_ENV)

    def _check_input(self, roots: _Roots, location: str, key: str, cwd: Path) -> None:
        """A source: its path, and when it is a local folder or a glob, every file and folder it
        reaches resolved (a symlink inside a root may point outside it)."""
        if "://" in location and not location.startswith("file://"):
            self._check(roots, location, key, INPUT_ROOTS_ENV)
            return
        pattern = os.path.join(cwd, location.removeprefix("file://"))
        self._check(roots, os.path.realpath(pattern), key, INPUT_ROOTS_ENV, written=location)
        reached = glob.glob(pattern, recursive=True) if glob.has_magic(pattern) else [pattern]
        for location in _reachable(reached):
            self._check(roots, location, key, INPUT_ROOTS_ENV)


def _reachable(starts: list[str]) -> Iterator[str]:
    """Every file and folder under ``starts``, resolved, following symlinks (each folder once)."""
    seen: set[str] = set()
    stack = [os.path.realpath(start) for start in starts]
    while stack:
        real = stack.pop()
        if real in seen:
            continue
        seen.add(real)
        yield real
        if os.path.isdir(real):
            try:
                names = os.listdir(real)
            except OSError:
                continue
            stack.extend(os.path.realpath(os.path.join(real, name)) for name in names)


def _is_hub_id(path: str, spec: Spec, cwd: Path) -> bool:
    """A Hugging Face hub id that no local path shadows (``datasets`` would load that instead)."""
    if not _HUB_ID.match(path) or ".." in path.split("/"):
        return False
    return not (os.path.exists(spec.resolve_path(path)) or os.path.exists(cwd / path))


def _output_location(uri: str, cwd: Path) -> str:
    """Where a store or publish URI writes: a resolved local path, or the URL."""
    if "://" in uri and not uri.startswith("file://"):
        return uri
    return os.path.realpath(cwd / uri.removeprefix("file://"))


def _file_endpoints(file_data: dict[str, Any], path: Path) -> dict[str, Endpoint]:
    try:
        return {str(name): Endpoint(**(value or {})) for name, value in (file_data.get("endpoints") or {}).items()}
    except (ValidationError, TypeError) as exc:
        raise SpecError(f"{path}: invalid endpoints: {exc}") from None
