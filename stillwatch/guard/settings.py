"""Gateway settings: one explicit object, read from arguments or `STILLWATCH_*` environment variables."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DB_URL = "sqlite:///stillwatch.db"


class GuardSettings(BaseSettings):
    """Everything `create_app(settings)` needs; no module-level state anywhere else."""

    # populate_by_name: GuardSettings(db_url=...) must work too, not only the STILLWATCH_DB alias.
    model_config = SettingsConfigDict(env_prefix="STILLWATCH_", extra="ignore", populate_by_name=True)

    # Backend: exactly one of a local model directory or an upstream OpenAI-compatible URL.
    teacher: Path | None = None
    upstream: str | None = None
    upstream_api_key: SecretStr | None = None
    upstream_timeout_s: float = 600.0
    upstream_connections: int = 256
    served_model_name: str = "stillwatch"

    host: str = "127.0.0.1"
    port: int = 8000
    db_url: str = Field(DEFAULT_DB_URL, validation_alias="STILLWATCH_DB")
    # NORMAL survives any kill of the process (the audit contract); FULL also survives a power cut.
    sqlite_synchronous: str = "NORMAL"
    admin_key: SecretStr | None = None
    # "memory://" for one replica; "redis://127.0.0.1:6379" to share limits across replicas.
    rate_limit_storage: str = "memory://"
    quotas_file: Path | None = None
    # When the quota store (Redis) is down: "closed" refuses requests with 503, "open" serves them uncounted.
    quota_failure: Literal["closed", "open"] = "closed"
    # Retry-After (seconds) on a 503 while a database or the quota store is unavailable.
    unavailable_retry_after_s: int = Field(2, ge=1)

    max_body_bytes: int = 1_000_000
    # A request body must arrive within this time (408 after), before authentication: no slow-body holds.
    body_timeout_s: float = Field(30.0, gt=0)
    # The most bytes read from the upstream for one response (502 beyond): a broken or hostile upstream
    # cannot make the gateway buffer without limit. Echo scoring with top-20 logprobs needs a few MB.
    max_upstream_bytes: int = Field(64_000_000, ge=1)
    max_n: int = 8
    # The most completion tokens one request may ask for (max_tokens, max_completion_tokens,
    # max_output_tokens; 400 beyond). Real models answer in thousands of tokens; the local backend is also
    # bound by its context, and a request without max_tokens gets the room its context leaves.
    max_tokens_limit: int = Field(32_768, ge=1)
    store_prompts: bool = True
    # A refused request keeps this many characters of its prompt, and the SHA-256 of all of it.
    rejected_prompt_chars: int = Field(2000, ge=0)
    prompt_retention_days: int = 30
    # Completions are the evidence `prove` reads, so they are kept until this many days (0 = forever).
    completion_retention_days: int = 0
    # Audit group commit: at most this many records per transaction.
    audit_batch_max: int = 512
    show_block_reason: bool = True
    # Serve /openapi.json (it describes the admin API as well, so it is off by default).
    openapi_docs: bool = False
    # Addresses or networks (comma-separated in STILLWATCH_TRUSTED_PROXIES) whose X-Forwarded-For is believed;
    # from anyone else the header is ignored, since a client can write any address into it.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Online extraction detection: the detector follows the audit log off the request path (one replica at a
    # time on PostgreSQL), and the policy's action is applied to accounts whose risk calls for it.
    detection: bool = True
    # The policy YAML (None: the built-in one shipped with stillwatch.detect).
    policy_file: Path | None = None
    # Seconds between the detector's passes over what the audit log gained since the last one.
    detection_interval_s: float = Field(2.0, gt=0)
    # Audit records one pass reads at most; the rest wait for the next pass (the request never waits).
    detection_batch_max: int = Field(10_000, ge=1)
    # Records re-read when a detector starts (a restart, or another replica taking over), to rebuild its state.
    detection_replay_records: int = Field(50_000, ge=0)
    # Serve every account final answers without their reasoning traces (per account: `accounts hide-reasoning`).
    hide_reasoning: bool = False

    # Local backend batching.
    max_batch: int = 64
    batch_wait_ms: float = 5.0
    # torch intra-op threads for the local backend (None: torch's default). Small models on a busy CPU serve
    # faster with 1: batching, not intra-op parallelism, is what scales them.
    torch_threads: int | None = None

    # Forensics hooks: watermark every local completion when a key is set.
    watermark_key: SecretStr | None = None
    watermark_gamma: float = 0.25
    watermark_delta: float = 2.0
    watermark_context_width: int = 1
    antidistill_all: bool = False
    # Antidistillation sampling needs a small proxy student with the teacher's tokenizer.
    antidistill_proxy: Path | None = None
    # bench/forensics.py: with a competent proxy, 0.1 costs a student more than the teacher; calibrate per proxy
    antidistill_lambda: float = 0.1
    antidistill_epsilon: float = 1e-2

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: Any) -> list[str]:
        items = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value or [])
        out = []
        for item in filter(None, items):
            try:
                out.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                raise ValueError(f"trusted_proxies: {item!r} is not an IP address or network") from None
        return out
