"""Quotas in the database, so that they change at runtime on every replica: one row per scope (the default,
an account, a key), each limit in the `limits` notation or NULL to inherit.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quotas",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("scope", sa.String(16), nullable=False),  # "default", "account" or "key"
        sa.Column("subject", sa.String(200), nullable=False),  # "" for the default, an account name, a key id
        sa.Column("requests", sa.String(200), nullable=True),
        sa.Column("tokens", sa.String(200), nullable=True),
        sa.Column("key_requests", sa.String(200), nullable=True),
        sa.Column("key_tokens", sa.String(200), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("scope", "subject", name="uq_quotas_scope_subject"),
    )


def downgrade() -> None:
    op.drop_table("quotas")
