"""ORM tables of the guard's database (the API schemas live apart, in schemas.py)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (every stored time is UTC)."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A UTC datetime that comes back timezone-aware on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: store timezone-aware UTC times only")
        if value is None:
            return None
        value = value.astimezone(timezone.utc)
        # SQLite stores text without a zone: keep it naive UTC there so comparisons sort right.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit column.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base of the guard's tables."""


class Account(Base):
    """A customer: owns keys; blocking it blocks every key at once."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    blocked: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())
    block_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    blocked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The per-account antidistillation switch: serve poisoned traces instead of blocking.
    degraded: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())
    # Serve the final answer without its reasoning trace (counted as hidden tokens in usage).
    hide_reasoning: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())
    # Requests per minute while throttled; None when the account is not throttled.
    throttle_rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    __table_args__ = (UniqueConstraint("name", name="uq_accounts_name"),)

    keys: Mapped[list[ApiKey]] = relationship(back_populates="account")


class ApiKey(Base):
    """An API key: only its SHA-256 is stored; `id` is the public part of the key used for lookup."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False, index=True
    )
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    account: Mapped[Account] = relationship(back_populates="keys")


class AuditRecord(Base):
    """One request through the gateway: who, when, what was asked and served, and what the guard decided."""

    __tablename__ = "audit_records"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    request_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # No foreign keys here on purpose: an audit trail outlives the rows it mentions.
    account_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    endpoint: Mapped[str] = mapped_column(String(100), nullable=False)
    params: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    prompt_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    completion: Mapped[str | None] = mapped_column(Text, nullable=True)
    completion_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    latency_ms: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    status: Mapped[int] = mapped_column(Integer, nullable=False)
    decision: Mapped[str] = mapped_column(String(32), nullable=False, default="allow")
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Set when retention blanked the texts (the hashes and counts stay).
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The client as the gateway saw it (X-Forwarded-For only from a trusted proxy) and its User-Agent.
    client_addr: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The hash chain (audit.py): this record's hash covers its canonical fields and the previous record's hash.
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    record_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The elicitation classifier's scores for the prompt (evidence, and re-scored offline when the model improves).
    elicit: Mapped[dict | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (
        Index("ix_audit_account_time", "account_id", "created_at"),
        Index("ix_audit_time", "created_at"),
        Index("ix_audit_prompt_sha256", "prompt_sha256"),
        Index("ix_audit_record_hash", "record_hash"),
    )


class AccountAction(Base):
    """An action taken on an account, automatic or by a person, with the evidence it rests on."""

    __tablename__ = "account_actions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    account_id: Mapped[int] = mapped_column(Integer, nullable=False)
    action: Mapped[str] = mapped_column(String(32), nullable=False)  # what was applied
    requested: Mapped[str] = mapped_column(String(32), nullable=False)  # what the policy asked for
    source: Mapped[str] = mapped_column(String(32), nullable=False)  # "detector" or "operator"
    risk: Mapped[float | None] = mapped_column(Float, nullable=True)
    policy_version: Mapped[str | None] = mapped_column(String(100), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    evidence: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)

    __table_args__ = (Index("ix_account_actions_account", "account_id", "created_at"),)


class Quota(Base):
    """Limits of one scope: the default (subject ""), an account (its name) or a key (its id). Each limit is in
    the `limits` notation ("600/minute", "unlimited"); NULL inherits from the scope above."""

    __tablename__ = "quotas"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(16), nullable=False)
    subject: Mapped[str] = mapped_column(String(200), nullable=False)
    requests: Mapped[str | None] = mapped_column(String(200), nullable=True)
    tokens: Mapped[str | None] = mapped_column(String(200), nullable=True)
    key_requests: Mapped[str | None] = mapped_column(String(200), nullable=True)
    key_tokens: Mapped[str | None] = mapped_column(String(200), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    __table_args__ = (UniqueConstraint("scope", "subject", name="uq_quotas_scope_subject"),)
