"""alerts and parts by (device_id, frame_id): the review queue and the escape rate find a frame's alert and part
by these, which scanned a unit's every alert and part per snapshot without them

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_index("alerts_frame", "alerts", ["device_id", "frame_id"])
    op.create_index("parts_frame", "parts", ["device_id", "frame_id"])

