"""The dataset spec: one YAML file, validated on load.

Errors name the key path (``models[2].endpoint``) and the file. Any key can be overridden with a
dotted path, ``--set endpoints.openai.base_url=http://...``; list items are addressed by index
(``models.0.sampling.temperature``) or by their ``id``/``name`` (``models.gpt-4.sampling.temperature``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ultrafeedback.records import ASPECTS, PRINCIPLES


class SpecError(ValueError):
    """The spec (or an override) is invalid; the message names the file and key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sampling(_Strict):
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    cut_at: str | None = Field(
        default=None,
        description="cut each generated response at the first occurrence of this string, after stripping it (the "
        'original cut at four newlines: "\\n\\n\\n\\n"); applied to the returned text, never sent to the model',
    )

    def merged(self, override: Sampling | None) -> Sampling:
        """These parameters with every field the override sets replaced."""
        if override is None:
            return self
        data = self.model_dump()
        data.update({k: v for k, v in override.model_dump().items() if v is not None})
        return Sampling(**data)

    def canonical_json(self) -> str:
        return json.dumps({k: v for k, v in self.model_dump().items() if v is not None}, sort_keys=True)


class FieldMap(_Strict):
    """Which input column holds each field."""

    instruction: str = "instruction"
    correct_answers: str | None = None
    incorrect_answers: str | None = None
    id: str | None = None


class Source(_Strict):
    name: str = Field(description="the value of the `source` field in the release")
    loader: Literal["jsonl", "parquet", "csv", "hf"]
    path: str = Field(description="a file (relative to the spec file), an fsspec URL, or a hub id")
    hf_config: str | None = None
    hf_split: str = "train"
    hf_revision: str | None = None
    fields: FieldMap = Field(default_factory=FieldMap)
    quota: int | None = Field(default=None, ge=1)
    principles: dict[str, float] = Field(default_factory=lambda: {"helpfulness": 1.0})
    world_knowledge: Literal["none", "answers", "false_premise", "target"] = "none"

    @field_validator("principles")
    @classmethod
    def _check_principles(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("needs at least one principle")
        for name, weight in value.items():
            if name not in PRINCIPLES:
                raise ValueError(f"unknown principle {name!r}; known: {', '.join(PRINCIPLES)}")
            if weight < 0:
                raise ValueError(f"weight of {name!r} is negative")
        if sum(value.values()) <= 0:
            raise ValueError("weights sum to zero")
        return value


class Endpoint(_Strict):
    base_url: str | None = Field(default=None, description="the endpoint's URL, with its version prefix (/v1)")
    base_urls: list[str] | None = Field(
        default=None,
        min_length=1,
        description="several replicas of one endpoint (e.g. `vllm serve` replicas of one model) instead of "
        "`base_url`: requests go to the replica with the fewest in flight; one that keeps failing is set aside "
        "and probed again later, and its requests are retried on another (infra/llm/replicas.py)",
    )
    api_key_env: str | None = Field(default=None, description="environment variable with the key")
    api_key_block: str | None = Field(default=None, description="Prefect Secret block name")
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    max_in_flight: int = Field(
        default=32,
        ge=1,
        description="requests on the wire to this endpoint at once: its budget, shared by all shards in the process",
    )
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=6, ge=0)
    backoff_base_s: float = Field(default=1.0, ge=0)
    backoff_max_s: float = Field(default=60.0, ge=0)
    batch_api: bool = Field(
        default=False,
        description="send this endpoint's calls through the provider's Batch API (/v1/files, /v1/batches): "
        "about half the price, answers within the completion window (infra/llm/batch.py)",
    )
    batch_max_requests: int = Field(default=50_000, ge=1, description="requests per batch (the provider's limit)")
    batch_max_bytes: int = Field(
        default=200 * 1024**2, ge=1024, description="bytes per batch input file (the provider's limit)"
    )
    batch_discount: float = Field(
        default=0.5, ge=0, le=1, description="the Batch API's price cut (0.5: half price), for estimates and costs"
    )

    replica_max_failures: int = Field(
        default=3, ge=1, description="consecutive failures (connection, 5xx, timeout) that set a replica aside"
    )
    replica_backoff_s: float = Field(
        default=5.0, gt=0, description="a set-aside replica is probed after this long, doubled after each failed probe"
    )

    @model_validator(mode="after")
    def _one_kind_of_url(self) -> Endpoint:
        if (self.base_url is None) == (self.base_urls is None):
            raise ValueError("give `base_url` (one URL) or `base_urls` (replicas), exactly one of them")
        if self.base_urls is not None and self.batch_api:
            raise ValueError("batch_api goes to one provider: give `base_url`, not `base_urls`")
        return self

    @property
    def urls(self) -> list[str]:
        """Every URL requests may go to: the replicas, or the one ``base_url``."""
        return list(self.base_urls) if self.base_urls is not None else [self.base_url or ""]

    @property
    def has_key(self) -> bool:
        return bool(self.api_key_env or self.api_key_block)


def url_origin(url: str) -> str:
    """``scheme://host:port`` of a URL (the default port made explicit): where a request goes."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return f"<invalid URL {url!r}>"
    scheme = parts.scheme.lower()
    port = port or {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{parts.hostname or ''}:{port}"


class Price(_Strict):
    input_per_mtok: float = Field(default=0.0, ge=0)
    output_per_mtok: float = Field(default=0.0, ge=0)


class EngineOptions(_Strict):
    """``vllm.LLM`` options of a ``backend: vllm`` model (how it runs, not what it answers: not in the spec hash)."""

    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs one engine spans")
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1, description="vLLM's default when None")
    max_model_len: int | None = Field(default=None, ge=1, description="context length; the model's when None")
    dtype: str | None = Field(default=None, description="auto, half, bfloat16, ...; vLLM's default when None")

    def llm_kwargs(self) -> dict[str, Any]:
        """The options as ``vllm.LLM`` keyword arguments (unset ones left to vLLM)."""
        return self.model_dump(exclude_none=True)


class ModelEntry(_Strict):
    id: str = Field(description="the model id recorded in the release")
    backend: Literal["openai", "embedded", "vllm"]
    endpoint: str | None = Field(default=None, description="endpoint name (backend openai)")
    model: str | None = Field(default=None, description="model name at the endpoint / in vLLM")
    path: str | None = Field(default=None, description="local weights (embedded, vllm)")
    prompt_format: str = Field(
        default="chat",
        description="without chat_template: `chat` (messages) or a raw format of tasks/generate/prompt_formats.py, "
        "for servers without a template",
    )
    chat_template: str | None = Field(
        default=None,
        description="the model's own chat template: a tokenizer_config.json, a folder holding one, or a Jinja file "
        "(relative to the spec file), rendered here; or `server`: send chat messages and let the server apply its "
        "template (tasks/generate/prompt_builder.py)",
    )
    principle_placement: Literal["auto", "system", "default_system", "instruction", "none"] = Field(
        default="auto",
        description="where the principle goes: the system message (replacing the template's default), appended to "
        "the template's default system text (default_system, as the original did for FastChat's templates), "
        "before the instruction in the user turn, or nowhere; auto: the system message when the template has a "
        "system role, else before the instruction",
    )
    principle_joiner: str | None = Field(
        default=None,
        description="the text between the principle and what it joins: the default system text (default_system; "
        "default a space) or the instruction (instruction; default a blank line)",
    )
    special_tokens: dict[str, str] = Field(
        default_factory=dict, description="bos_token, eos_token, ... for the template, over the tokenizer config's"
    )
    sampling: Sampling | None = None
    price: Price = Field(default_factory=Price)
    engine: EngineOptions = Field(
        default_factory=EngineOptions, description="vllm.LLM options (backend vllm): tensor_parallel_size, ..."
    )

    @model_validator(mode="after")
    def _check_backend(self) -> ModelEntry:
        if self.backend == "openai" and not self.endpoint:
            raise ValueError("backend 'openai' needs an `endpoint`")
        if self.backend == "vllm" and not (self.path or self.model):
            raise ValueError("backend 'vllm' needs a `path` or `model`")
        return self

    @property
    def served_name(self) -> str:
        return self.model or self.id


class Judge(_Strict):
    backend: Literal["openai", "heuristic"] = "heuristic"
    endpoint: str | None = None
    model: str | None = Field(default=None, description="the judge model at the endpoint (backend openai)")
    aspects: list[str] = Field(default_factory=lambda: list(ASPECTS))
    critique: bool = True
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.0, top_p=0.6, max_tokens=500))
    critique_sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.0, top_p=0.6, max_tokens=1024))
    parse_retries: int = Field(default=3, ge=0, description="re-queries after unparseable output")
    shuffle: bool = True
    price: Price = Field(default_factory=Price)

    @field_validator("aspects")
    @classmethod
    def _check_aspects(cls, value: list[str]) -> list[str]:
        for aspect in value:
            if aspect not in ASPECTS:
                raise ValueError(f"unknown aspect {aspect!r}; known: {', '.join(ASPECTS)}")
        if len(set(value)) != len(value):
            raise ValueError("aspects repeat")
        return value

    @model_validator(mode="after")
    def _check_backend(self) -> Judge:
        if self.backend == "openai" and not self.endpoint:
            raise ValueError("judge backend 'openai' needs an `endpoint`")
        if self.backend == "openai" and not self.model:
            raise ValueError("judge backend 'openai' needs a `model`")
        return self


class Ingest(_Strict):
    dedup: Literal["none", "exact", "near"] = "near"
    max_chars: int = Field(default=20_000, ge=1)
    decontaminate: list[str] = Field(
        default_factory=list, description="files of benchmark questions; exact matches are removed"
    )


class Pairs(_Strict):
    score: Literal["fine_grained", "overall"] = "fine_grained"


class Binarize(_Strict):
    rule: Literal["h4", "argilla"] = "h4"
    test_size: int | float = Field(
        default=0.1, gt=0, description="below 1: the test fraction; 1 or more: the test row count"
    )
    seed: int = 42
    exclude_sources: list[str] = Field(default_factory=list)
    decontaminate_sources: list[str] = Field(
        default_factory=list,
        description="sources (by name) whose questions, every record read, are dropped by exact match of the "
        "normalised text from the other sources' binarized rows (H4 drops TruthfulQA's)",
    )


class Gates(_Strict):
    max_quarantined: int = Field(default=0, ge=0, description="quarantined input records allowed")
    min_instructions: int = Field(default=1, ge=0)
    min_generation_success: float = Field(default=1.0, ge=0, le=1)
    min_annotation_success: float = Field(default=1.0, ge=0, le=1)
    min_rating_rate: float = Field(default=1.0, ge=0, le=1, description="share of completions with every aspect rated")
    min_pairs: int = Field(default=1, ge=0)
    max_parse_failure_rate: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="the circuit breaker: the annotate stage stops when more than this share of the judge's last "
        "`parse_failure_window` answers could not be parsed (a judge or template that fails systematically)",
    )
    parse_failure_window: int = Field(default=200, ge=1, description="answers the parse failure rate is taken over")
    data_docs: bool = Field(
        default=True,
        description="write each gate's Great Expectations Data Docs page to `{store}/{name}/data_docs/` and link it "
        "in the Prefect UI (seconds of rendering per gate); false skips the pages, the gates' checks are still "
        "stored and shown as table artifacts",
    )


class PublishTarget(_Strict):
    kind: Literal["store", "local", "s3", "hub"] = "store"
    uri: str | None = Field(default=None, description="folder/bucket URL, or the hub repo id (`org/name`)")
    private: bool = Field(default=True, description="hub: a repo that does not exist yet is created private")
    token_env: str | None = Field(
        default=None, description="hub: the environment variable with the Hub token (default HF_TOKEN)"
    )
    token_block: str | None = Field(
        default=None, description="hub: a Prefect Secret block with the token, used when the variable is empty"
    )


class Publish(_Strict):
    targets: list[PublishTarget] = Field(default_factory=lambda: [PublishTarget()])
    max_shard_rows: int = Field(default=50_000, ge=1)
    license: str | None = Field(
        default=None,
        description="the dataset card's license, as the Hub names it (mit, apache-2.0, cc-by-4.0); default other",
    )
    description: str | None = Field(default=None, description="the dataset card's opening paragraph (Markdown)")


class Pools(_Strict):
    """Prefect work pools that jobs of the build are sent to (none: everything runs in the build's process)."""

    gpu: str | None = Field(
        default=None,
        description="the work pool of the GPU workers: the `backend: vllm` models' requests go there as jobs "
        "(runs of `execution.gpu_deployment`), one model per job, across all shards",
    )


class Execution(_Strict):
    shard_size: int = Field(default=500, ge=1, description="instructions per shard")
    checkpoint_every: int = Field(default=64, ge=1, description="results per checkpoint write")
    parallel_shards: int = Field(default=4, ge=1, le=64, description="shard tasks running at once")
    stop_grace_s: float = Field(
        default=5.0,
        ge=0,
        le=600,
        description="on Ctrl-C, SIGTERM or a cancel from the Prefect UI: no new request starts, and the requests "
        "on the wire get this many seconds to answer (their answers are kept) before they are abandoned",
    )
    worker_processes: int | None = Field(
        default=None,
        ge=0,
        le=16,
        description="worker processes for the CPU-heavy shard work (Great Expectations validations, the "
        "score join), off the process whose event loop drives the API calls; 0 runs it in that process; "
        "unset: one once the build has at least 2,000 instructions (shards x shard_size), none below "
        "(a worker's start, seconds of imports, costs a small build more than it saves)",
    )
    reparse_failed: bool = Field(
        default=False,
        description="send again the judge calls whose answers stayed unparseable after `judge.parse_retries` "
        "re-asks (by default a rerun does not pay for them again; `retry-failed --reparse` sets this)",
    )
    budget_dir: str | None = Field(
        default=None,
        description="a local folder where the endpoints' budgets (requests and tokens per minute, in flight) are "
        "kept for every process on this machine that names it (infra/llm/shared_budget.py), or `prefect`: on the "
        "Prefect server, for every process on every machine using that API (infra/llm/prefect_budget.py); None: "
        "$ULTRAFEEDBACK_BUDGET_DIR, else each process keeps its own",
    )
    max_cost_usd: float | None = Field(
        default=None,
        gt=0,
        description="stop issuing calls before this run's spent plus in-flight estimate would pass this many "
        "dollars (infra/budget.py); what was done is kept and a rerun continues",
    )
    batch_poll_s: float = Field(default=60.0, gt=0, description="seconds between looks at submitted Batch API batches")
    pools: Pools = Field(default_factory=Pools)
    gpu_deployment: str = Field(
        default="gpu-job/gpu-job",
        description="the deployment (flow/deployment) that runs one GPU job (deployments/prefect-gpu.yaml)",
    )
    gpu_job_size: int = Field(default=2000, ge=1, description="requests per GPU job (one model, one engine load)")
    gpu_batch_size: int = Field(
        default=256, ge=1, description="requests per engine call in a GPU job; a checkpoint after each"
    )
    gpu_job_attempts: int = Field(
        default=3, ge=1, le=20, description="runs of a GPU job (the first included) before its missing requests fail"
    )
    gpu_job_stale_s: float = Field(
        default=120.0,
        gt=0,
        description="a running GPU job whose heartbeat is older than this is taken as dead and sent again",
    )
    gpu_job_start_s: float = Field(
        default=300.0,
        gt=0,
        description="a GPU job run that is pending or running without its first heartbeat after this long (its "
        "worker died while starting it) is taken as dead and sent again",
    )
    gpu_poll_s: float = Field(default=2.0, gt=0, description="seconds between looks at the GPU jobs' flow runs")
    dask_address: str | None = None
    dask_workers: int = Field(default=1, ge=1)
    storage_options: dict[str, Any] = Field(default_factory=dict)


class Spec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = 0
    store: str = "file://./.ultrafeedback"
    sources: list[Source] = Field(min_length=1)
    endpoints: dict[str, Endpoint] = Field(default_factory=dict)
    models: list[ModelEntry] = Field(min_length=1)
    completions_per_instruction: int = Field(default=4, ge=1)
    completion_order: Literal["slot", "model"] = Field(
        default="slot",
        description="order of a record's completions (and of the pair and binarize candidates): the assigned "
        "slot, or the model id as the released openbmb/UltraFeedback rows have it",
    )
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=1.0, top_p=1.0, max_tokens=1024))
    principles: dict[str, list[str]] | None = Field(
        default=None, description="principle -> system prompts; default: the packaged set"
    )
    ingest: Ingest = Field(default_factory=Ingest)
    judge: Judge = Field(default_factory=Judge)
    pairs: Pairs = Field(default_factory=Pairs)
    binarize: Binarize = Field(default_factory=Binarize)
    gates: Gates = Field(default_factory=Gates)
    publish: Publish = Field(default_factory=Publish)
    execution: Execution = Field(default_factory=Execution)

    # where the spec came from; relative source paths resolve against it
    base_dir: str = Field(default=".", exclude=True)
    # a deployment run's endpoints as its spec file names them: a key goes only where the file sends it
    _trusted_endpoints: dict[str, Endpoint] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _cross_checks(self) -> Spec:
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"sources: names repeat: {names}")
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError(f"models: ids repeat: {ids}")
        for i, model in enumerate(self.models):
            if model.endpoint is not None and model.endpoint not in self.endpoints:
                raise ValueError(
                    f"models[{i}].endpoint: {model.endpoint!r} is not in endpoints "
                    f"({', '.join(self.endpoints) or 'none defined'})"
                )
        if self.judge.endpoint is not None and self.judge.endpoint not in self.endpoints:
            raise ValueError(f"judge.endpoint: {self.judge.endpoint!r} is not in endpoints")
        if self.principles is not None:
            for source in self.sources:
                for principle in source.principles:
                    if not self.principles.get(principle):
                        raise ValueError(
                            f"sources.{source.name}.principles: {principle!r} has no prompts in `principles`"
                        )
        return self

    @model_validator(mode="after")
    def _check_binarize_sources(self) -> Spec:
        names = {s.name for s in self.sources}
        unknown = [n for n in self.binarize.decontaminate_sources if n not in names]
        if unknown:
            raise ValueError(f"binarize.decontaminate_sources: {unknown} are not sources of this spec")
        return self

    def model_entry(self, model_id: str) -> ModelEntry:
        for entry in self.models:
            if entry.id == model_id:
                return entry
        raise KeyError(model_id)

    def pin_endpoints(self, trusted: dict[str, Endpoint]) -> None:
        """Send each endpoint's key only to the origin, and read it only from the source, that
        ``trusted`` (the spec file's endpoints) names. Set for deployment runs; a spec without pins
        (the command line) is trusted as it is. The pins travel with this object (also pickled),
        not with its dump: a spec rebuilt from ``model_dump`` is unpinned."""
        self._trusted_endpoints = dict(trusted)

    def key_refusal(self, name: str) -> str | None:
        """Why endpoint ``name`` may not be given its key here, or None when it may."""
        if self._trusted_endpoints is None:
            return None
        endpoint = self.endpoints[name]
        if not endpoint.has_key:
            return None
        pinned = self._trusted_endpoints.get(name)
        if pinned is None or not pinned.has_key:
            return f"endpoint {name!r} has no key in the spec file, so a deployment run cannot give it one"
        if (endpoint.api_key_env, endpoint.api_key_block) != (pinned.api_key_env, pinned.api_key_block):
            return f"endpoint {name!r}: a deployment run cannot change where its key comes from"
        allowed = sorted({url_origin(url) for url in pinned.urls})
        for url in endpoint.urls:  # every replica passes the same check
            if url_origin(url) not in allowed:
                return (
                    f"endpoint {name!r}: its key goes only to {', '.join(allowed)} (the spec file's "
                    f"base_url{'s' if len(allowed) > 1 else ''}), not to {url_origin(url)}"
                )
        return None

    def resolve_path(self, path: str) -> str:
        """A source path as given, or resolved against the spec file's folder when relative."""
        if "://" in path or Path(path).is_absolute():
            return path
        return str((Path(self.base_dir) / path).resolve())

    def data_dump(self) -> dict[str, Any]:
        """The spec without what only says how or where it runs (store, endpoints and their limits,
        prices, retries, gates, publish targets, execution): what shapes the data itself."""
        return self.model_dump(
            mode="json",
            exclude={
                "store": True,
                "publish": True,
                "execution": True,
                "gates": True,
                "endpoints": True,
                "models": {"__all__": {"price", "endpoint", "engine"}},
                "judge": {"price", "endpoint", "parse_retries"},
            },
        )

    def spec_hash(self) -> str:
        """A hash of everything that determines the data (``data_dump``)."""
        blob = json.dumps(self.data_dump(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------- loading


def _format_loc(loc: tuple[Any, ...], data: Any) -> str:
    """pydantic's location tuple as ``models[2].endpoint`` (list items by their id when known)."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and 0 <= item < len(node) and isinstance(node[item], dict):
                ident = node[item].get("id") or node[item].get("name")
                if ident:
                    label = f"[{item}] ({ident})"
            parts.append(label)
            node = node[item] if isinstance(node, list) and 0 <= item < len(node) else None
        else:
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def validate_dict(data: Any, origin: str = "<spec>", base_dir: str = ".") -> Spec:
    """Validate a spec given as a mapping; raise SpecError naming each bad key path, or
    ``spec_checks.SpecContradiction`` listing the settings that contradict each other."""
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: the spec must be a mapping, got {type(data).__name__}")
    from ultrafeedback.spec_checks import check

    try:
        spec = Spec(**data, base_dir=base_dir)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = _format_loc(tuple(err["loc"]), data)
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            lines.append(f"  {where}: {message}")
        raise SpecError(f"{origin}: invalid spec\n" + "\n".join(lines)) from None
    return check(spec)  # settings that are each valid but contradict each other: one line each


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` as (path, YAML-parsed value)."""
    if "=" not in text:
        raise SpecError(f"--set {text!r}: expected dotted.key=value")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key:
        raise SpecError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise SpecError(f"--set {key}: value is not valid YAML: {exc}") from None
    return key, value


def apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` (a dotted path) in ``data`` in place, creating mappings as needed.

    A list item is addressed by its index or by its ``id``/``name``; an id that itself contains
    dots (``smollm2-135m-t0.7``) is matched as a whole.
    """
    parts = key.split(".")
    node: Any = data
    depth = 0
    while depth < len(parts):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            index, used = _list_index(node, parts, depth, key, where)
            depth += used
            if depth == len(parts):
                node[index] = value
                return
            node = node[index]
            continue
        if not isinstance(node, dict):
            raise SpecError(f"--set {key}: {'.'.join(parts[:depth])} is not a mapping or list")
        part = parts[depth]
        depth += 1
        if depth == len(parts):
            node[part] = value
            return
        if node.get(part) is None:
            node[part] = {}
        node = node[part]


def _list_index(node: list[Any], parts: list[str], depth: int, key: str, where: str) -> tuple[int, int]:
    """(index, number of path parts it used) of the list item ``parts[depth:]`` starts with."""
    part = parts[depth]
    if part.lstrip("-").isdigit():
        index = int(part)
        if not -len(node) <= index < len(node):
            raise SpecError(f"--set {key}: {where}: index out of range (list has {len(node)})")
        return index, 1
    for used in range(len(parts) - depth, 0, -1):  # the longest dotted name first
        name = ".".join(parts[depth : depth + used])
        for index, item in enumerate(node):
            if isinstance(item, dict) and name in (item.get("id"), item.get("name")):
                return index, used
    raise SpecError(f"--set {key}: {where}: no list item with id or name {part!r}")


def read_spec_file(path: Path) -> Any:
    """A spec file's YAML as it is written (not validated)."""
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        raise SpecError(f"{path}: the spec file is empty")
    return data


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    """Read, override and validate a spec file."""
    path = Path(path)
    data = read_spec_file(path)
    for text in overrides or []:
        key, value = parse_override(text)
        if not isinstance(data, dict):
            break
        apply_override(data, key, value)
    return validate_dict(data, origin=str(path), base_dir=str(path.resolve().parent))
