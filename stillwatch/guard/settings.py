"""Gateway settings: one explicit object, read from arguments or `STILLWATCH_*` environment variables.

This is the one place each gateway setting's default, help text and invariants live: `stillwatch serve` builds
its options from these fields (`cli/serve.py`), the gateway and the demo read them from here, and the
watermark's and antidistillation's defaults come from their own config objects (`forensics/config.py`), built
back from these settings with `WatermarkConfig.from_settings` and `AntidistillConfig.from_settings`.
`env_table()` renders every `STILLWATCH_*` variable for docs/settings.md.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from stillwatch.errors import ConfigError
from stillwatch.forensics.config import AntidistillConfig, WatermarkConfig, default_of

DEFAULT_DB_URL = "sqlite:///stillwatch.db"
ENV_PREFIX = "STILLWATCH_"


class GuardSettings(BaseSettings):
    """Everything `create_app(settings)` needs; no module-level state anywhere else."""

    # populate_by_name: GuardSettings(db_url=...) must work too, not only the STILLWATCH_DB alias.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", populate_by_name=True)

    # --- the backend: exactly one of a local model directory or an upstream (`backend_kind`) ---
    teacher: Path | None = Field(None, description="Serve this model directory in process.")
    upstream: str | None = Field(None, description="Or proxy this OpenAI-compatible base URL "
                                                   "(e.g. http://HOST:8001/v1); requests pass through as sent.")
    upstream_api_key: SecretStr | None = Field(None, description="The upstream's API key.")
    upstream_timeout_s: float = Field(600.0, gt=0, description="Seconds one upstream call may take.")
    upstream_connections: int = Field(256, ge=1, description="Pooled connections to the upstream.")
    served_model_name: str = Field("stillwatch", min_length=1, description="Model id clients use (--teacher).")

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind.")
    db_url: str = Field(DEFAULT_DB_URL, validation_alias="STILLWATCH_DB",
                        description="Database URL: a SQLite file, or postgresql://… shared by replicas.")
    sqlite_synchronous: str = Field(
        "NORMAL", description="NORMAL survives any kill of the process (the audit contract); FULL also "
                              "survives a power cut, at one fsync per batch.")
    admin_key: SecretStr | None = Field(None, description="The admin API's key (the admin API is off without one).")
    rate_limit_storage: str = Field("memory://", description="Quota counters: memory:// for one replica, "
                                                             "redis://HOST:6379 shared by replicas.")
    quotas_file: Path | None = Field(None, description="Quotas TOML file; it seeds the database's quotas at "
                                                       "start-up (stillwatch quotas set changes them at runtime).")
    quota_failure: Literal["closed", "open"] = Field(
        "closed", description="When the quota store is down: closed refuses requests (503), open serves them "
                              "uncounted.")
    unavailable_retry_after_s: int = Field(2, ge=1, description="Retry-After (s) on a 503 while a database or "
                                                                "the quota store is unavailable.")

    max_body_bytes: int = Field(1_000_000, ge=1, description="Largest request body (413 beyond).")
    body_timeout_s: float = Field(30.0, gt=0, description="A request body must arrive within this time (408 "
                                                          "after), before authentication: no slow-body holds.")
    max_upstream_bytes: int = Field(64_000_000, ge=1, description="Most bytes read from the upstream for one "
                                    "response (502 beyond); echo scoring with top-20 logprobs needs a few MB.")
    large_body_bytes: int = Field(256_000, ge=1, description=(
        "Bodies past this size cost milliseconds of CPU each (parse, validate, encode, audit): at most "
        "large_body_per_key of one key and large_body_total of everyone are served at once, the rest wait."))
    large_body_per_key: int = Field(2, ge=1, description="Large requests of one key served at once.")
    large_body_total: int = Field(8, ge=1, description="Large requests of all keys served at once.")
    max_n: int = Field(8, ge=1, description="Largest n (choices per request).")
    max_tokens_limit: int = Field(32_768, ge=1, description=(
        "Most completion tokens one request may ask for (max_tokens, max_completion_tokens, "
        "max_output_tokens; 400 beyond). The local backend is also bound by its context; a request "
        "without max_tokens gets the room its context leaves."))
    store_prompts: bool = Field(True, description="Keep prompt texts in the audit log (their hashes are kept "
                                                  "either way).")
    rejected_prompt_chars: int = Field(2000, ge=0, description="Characters of a refused request's prompt kept "
                                                               "in the audit log (with the SHA-256 of all of it).")
    refusals_audited_per_minute: int = Field(
        120, ge=0, description="Refused requests (403, 429) audited per key per minute and replica; the rest "
                               "are counted in /metrics only, so a key hammering after its block cannot fill "
                               "the disk.")
    prompt_retention_days: int = Field(30, ge=0, description="Days prompt texts are kept (0 = forever).")
    completion_retention_days: int = Field(0, ge=0, description="Days completion texts are kept (0 = forever): "
                                                                "they are the evidence prove reads.")
    audit_batch_max: int = Field(512, ge=1, description="Most audit records per group-commit transaction.")
    show_block_reason: bool = Field(True, description="Tell a blocked client the block's reason.")
    openapi_docs: bool = Field(False, description="Serve /openapi.json (it describes the admin API too).")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Addresses or networks (comma-separated) whose X-Forwarded-For is "
                                          "believed; from anyone else the header is ignored.")
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one structured line per request (request id, account, key id, route, "
                            "status, latency, decision; never a key).")
    log_prompts: bool = Field(False, description="With log_format json, add the first 200 characters of each "
                                                 "prompt to its line.")

    # --- online extraction detection, off the request path ---
    detection: bool = Field(True, description="Run the online detector and apply the policy's actions.")
    policy_file: Path | None = Field(None, description="Detection policy YAML (default: the built-in one).")
    detection_interval_s: float = Field(2.0, gt=0, description="Seconds between the detector's passes over "
                                                               "what the audit log gained.")
    detection_batch_max: int = Field(10_000, ge=1, description="Audit records one detector pass reads at most.")
    detection_full_assess_s: float = Field(
        10.0, gt=0, description="Seconds between assessments of every account with campaign linkage; in between, "
                                "a pass assesses only the accounts that sent traffic, each on its own.")
    detection_replay_records: int = Field(50_000, ge=0, description="Records re-read when a detector starts, to "
                                                                    "rebuild its state.")
    hide_reasoning: bool = Field(False, description="Serve every account final answers without their reasoning "
                                                    "traces (per account: accounts hide-reasoning).")

    # --- local backend batching ---
    max_batch: int = Field(64, ge=1, description="Most sequences per local model call.")
    batch_wait_ms: float = Field(5.0, ge=0, description="How long to gather a batch (local backend).")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads for the local backend "
                                      "(default: torch's); small models on a busy CPU serve faster with 1.")

    # --- forensics: defaults from forensics/config.py, served through WatermarkConfig.from_settings ---
    watermark_key: SecretStr | None = Field(None, description="Watermark every local completion with this "
                                                              "secret.")
    watermark_gamma: float = Field(default_of(WatermarkConfig, "gamma"), description="Green-list fraction γ.")
    watermark_delta: float = Field(default_of(WatermarkConfig, "delta"), description="Green-list logit bias δ.")
    watermark_context_width: int = Field(default_of(WatermarkConfig, "context_width"),
                                         description="Tokens of context that seed each green list.")
    antidistill_all: bool = Field(False, description="Antidistillation sampling for every account, not only "
                                                     "degraded ones.")
    antidistill_proxy: Path | None = Field(None, description="Proxy student (the teacher's tokenizer) for "
                                                             "antidistillation sampling.")
    antidistill_lambda: float = Field(default_of(AntidistillConfig, "lam"), description=(
        "Antidistillation strength λ (bench/forensics.py: with a competent proxy, 0.1 costs a student more "
        "than the teacher; calibrate per proxy)."))
    antidistill_epsilon: float = Field(default_of(AntidistillConfig, "epsilon"),
                                       description="Antidistillation finite-difference step ε.")

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

    @model_validator(mode="after")
    def _one_backend(self) -> "GuardSettings":
        """At most one backend, and a watermark only where the gateway generates (the rule's one home; a
        backend is required where one is built: `backend_kind`)."""
        if self.teacher is not None and self.upstream is not None:
            raise ValueError("give exactly one of --teacher DIR or --upstream URL, not both")
        if self.watermark_key is not None and self.upstream is not None:
            raise ValueError("a watermark key applies to --teacher; an upstream watermarks (or not) itself")
        return self

    @model_validator(mode="after")
    def _forensics(self) -> "GuardSettings":
        """The watermark's and antidistillation's own checks, on the values this gateway would serve."""
        try:
            WatermarkConfig.from_settings(self, key="check")
            AntidistillConfig.from_settings(self)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def backend_kind(self) -> Literal["teacher", "upstream"]:
        """Which backend these settings describe; ConfigError when they name none."""
        if (self.teacher is None) == (self.upstream is None):
            raise ConfigError("give exactly one of --teacher DIR or --upstream URL")
        return "teacher" if self.teacher is not None else "upstream"


def env_name(name: str) -> str:
    """The environment variable of one GuardSettings field."""
    field = GuardSettings.model_fields[name]
    return field.validation_alias if isinstance(field.validation_alias, str) else ENV_PREFIX + name.upper()


def default_text(name: str) -> str:
    """A field's default as the docs and the CLI show it."""
    field = GuardSettings.model_fields[name]
    if field.default_factory is not None:
        return "none"
    value = field.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def env_table() -> str:
    """Every STILLWATCH_* variable of the gateway as a Markdown table (docs/settings.md is this output)."""
    lines = ["| variable | default | what it does |", "|---|---|---|"]
    for name, field in GuardSettings.model_fields.items():
        text = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{env_name(name)}` | `{default_text(name)}` | {text} |")
    return "\n".join(lines) + "\n"


DOCS_HEAD = """# Gateway settings

Every `stillwatch serve` setting, with its environment variable and default. This table is generated from
`GuardSettings` (stillwatch/guard/settings.py), the one place each default and help text lives:
`python -m stillwatch.guard.settings > docs/settings.md` writes this file, and tests/test_settings.py fails
when the file and the settings disagree. `serve`'s options take the same help and defaults
(`stillwatch serve --help`); an option given on the command line wins over its variable.

"""

DOCS_TAIL = """
Outside the gateway:

| variable | default | what it does |
|---|---|---|
| `STILLWATCH_PROGRESS_INTERVAL` | `5.0` | Seconds between progress lines when output is not a terminal (harvest, distill, teach). |
| `STILLWATCH_TEST_CACHE` | `.cache/tests` | Tests only: where the session's tiny teacher is cached. |
| `STILLWATCH_TEST_PG` | `postgresql://postgres@127.0.0.1:5432/test` | Tests only: the PostgreSQL server the replica tests use. |
| `STILLWATCH_TEST_REDIS` | `redis://127.0.0.1:6379` | Tests only: the Redis the replica and quota tests use. |
"""


def settings_docs() -> str:
    """The whole of docs/settings.md."""
    return DOCS_HEAD + env_table() + DOCS_TAIL


if __name__ == "__main__":  # python -m stillwatch.guard.settings > docs/settings.md
    print(settings_docs(), end="")
