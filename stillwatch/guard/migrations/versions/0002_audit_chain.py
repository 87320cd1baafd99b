"""Tamper-evident audit log and client metadata: prev_hash / record_hash, client_addr, user_agent; the
detector's actions with their evidence.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)
_BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Records written before this revision have no hashes: `audit verify` reports them as unchained.
    with op.batch_alter_table("audit_records") as batch:
        batch.add_column(sa.Column("client_addr", sa.String(64), nullable=True))
        batch.add_column(sa.Column("user_agent", sa.String(200), nullable=True))
        batch.add_column(sa.Column("prev_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("record_hash", sa.String(64), nullable=True))
    op.create_index("ix_audit_record_hash", "audit_records", ["record_hash"])
    op.create_table(
        "account_actions",
        sa.Column("id", _BIGID, primary_key=True, autoincrement=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("requested", sa.String(32), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("risk", sa.Float(), nullable=True),
        sa.Column("policy_version", sa.String(100), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("evidence", sa.JSON(), nullable=False),
    )
    op.create_index("ix_account_actions_account", "account_actions", ["account_id", "created_at"])


def downgrade() -> None:
    op.drop_table("account_actions")
    op.drop_index("ix_audit_record_hash", "audit_records")
    with op.batch_alter_table("audit_records") as batch:
        for name in ("record_hash", "prev_hash", "user_agent", "client_addr"):
            batch.drop_column(name)
