"""Settings of the OpenAI-compatible simulator (kept apart so they load without aiohttp)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SimulatorConfig(BaseModel):
    """Where the simulator listens, how slow it is, and which faults it injects.

    Fault rates are per-request probabilities. ``rate_429``, ``rate_500``, ``rate_timeout`` and
    ``rate_malformed`` are exclusive outcomes of one draw (their sum is at most 1);
    ``rate_unparseable`` is drawn separately and applies to judge and critique calls only.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    latency_ms: float = Field(default=0.0, ge=0)
    jitter_ms: float = Field(default=0.0, ge=0, description="latency is uniform in latency ± jitter")
    seed: int = 0
    rate_429: float = Field(default=0.0, ge=0, le=1)
    rate_500: float = Field(default=0.0, ge=0, le=1)
    rate_timeout: float = Field(default=0.0, ge=0, le=1)
    rate_malformed: float = Field(default=0.0, ge=0, le=1)
    rate_unparseable: float = Field(default=0.0, ge=0, le=1)
    retry_after_s: float = Field(default=1.0, ge=0, description="Retry-After of a 429")
    timeout_sleep_s: float = Field(default=30.0, ge=0, description="how long a timeout fault hangs")
    max_faults_per_body: int | None = Field(
        default=None,
        ge=0,
        description="a body seen more than this many times is answered without faults "
        "(makes 'fails once, then succeeds' deterministic in tests); None = no cap",
    )
    api_key: str | None = Field(
        default=None, description="when set, requests must carry 'Authorization: Bearer <api_key>'"
    )
    record_bodies: bool = Field(
        default=False,
        description="keep, per request body (SHA-256), when each request came and when and how it was "
        "answered (GET /stats/bodies): shows whether an answer already given was asked for again",
    )

    usage_tokenizer: str = Field(
        default="words",
        description="how usage is counted: 'words' (whitespace words) or a tokenizer of infra.llm.tokens "
        "(o200k_base, cl100k_base, approx), message overhead included as OpenAI bills it",
    )
    batch_delay_s: float = Field(default=1.0, ge=0, description="Batch API: seconds from creation to completion")
    batch_max_requests: int = Field(default=50_000, ge=1, description="Batch API: requests per batch")
    batch_max_file_bytes: int = Field(default=200 * 1024**2, ge=1, description="Batch API: bytes per input file")
    batch_line_error_rate: float = Field(default=0.0, ge=0, le=1, description="Batch API: lines that fail (500)")
    batch_expire_first: int = Field(default=0, ge=0, description="Batch API: the first N batches created expire")
    batch_expire_fraction: float = Field(
        default=0.5, ge=0, le=1, description="Batch API: the share of an expiring batch's lines answered first"
    )
    batch_fail_first: int = Field(default=0, ge=0, description="Batch API: the first N batches fail validation")

    @model_validator(mode="after")
    def _check_rates(self) -> SimulatorConfig:
        from ultrafeedback.infra.llm.tokens import TOKENIZERS

        if self.usage_tokenizer not in TOKENIZERS:
            raise ValueError(f"usage_tokenizer {self.usage_tokenizer!r}: known: {', '.join(TOKENIZERS)}")
        total = self.rate_429 + self.rate_500 + self.rate_timeout + self.rate_malformed
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"rate_429 + rate_500 + rate_timeout + rate_malformed = {total:g}; must be at most 1"
            )
        return self
