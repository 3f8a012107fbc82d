"""parts: the line's verdicts, one per part, and their counts per unit and model by minute and by quarter hour

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "parts",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("part_id", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("p_defect", sa.Float(), nullable=True),
        sa.Column("frame_id", sa.String(length=128), nullable=True),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("model_sha256", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "part_id"),
    )
    with op.batch_alter_table("parts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_parts_ts"), ["ts"], unique=False)
    for table, period in (("part_minutes", "minute"), ("part_quarters", "quarter")):
        op.create_table(
            table,
            sa.Column("device_id", sa.String(length=64), nullable=False),
            sa.Column(period, sa.BigInteger(), nullable=False),
            sa.Column("model_sha256", sa.String(length=64), nullable=False),
            sa.Column("model", sa.String(length=100), nullable=False),
            sa.Column("parts", sa.Integer(), nullable=False),
            sa.Column("ok", sa.Integer(), nullable=False),
            sa.Column("ng", sa.Integer(), nullable=False),
            sa.Column("unsure", sa.Integer(), nullable=False),
            sa.Column("missed", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("device_id", period, "model_sha256"),
        )
