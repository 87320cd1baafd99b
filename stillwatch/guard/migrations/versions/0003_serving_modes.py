"""Per-account serving modes the policy can apply (hide reasoning, throttle) and each request's elicitation score.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("hide_reasoning", sa.Boolean(), nullable=False, server_default=sa.false()))
        # Requests per minute while throttled; NULL when the account is not throttled.
        batch.add_column(sa.Column("throttle_rpm", sa.Integer(), nullable=True))
    with op.batch_alter_table("audit_records") as batch:
        # The elicitation classifier's scores for the prompt, kept for evidence and offline re-scoring.
        batch.add_column(sa.Column("elicit", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_records") as batch:
        batch.drop_column("elicit")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("throttle_rpm")
        batch.drop_column("hide_reasoning")
