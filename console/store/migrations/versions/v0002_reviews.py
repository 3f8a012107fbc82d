"""reviews: a person's verdict on a unit's call, with the snapshot reviewed and the feedback sent to the unit

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("frame_id", sa.String(length=128), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("truth", sa.String(length=16), nullable=True),
        sa.Column("predicted", sa.String(length=40), nullable=True),
        sa.Column("p_defect", sa.Float(), nullable=True),
        sa.Column("model", sa.String(length=100), nullable=True),
        sa.Column("model_sha256", sa.String(length=64), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("user", sa.String(length=64), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("feedback_request_id", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("device_id", "frame_id"),
    )
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reviews_ts"), ["ts"], unique=False)
