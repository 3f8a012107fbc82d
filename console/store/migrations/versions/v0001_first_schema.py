"""the first schema: units, results, minutes, alerts, images, events, commands, users, audit, counters

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None


def upgrade() -> None:
    op.create_table('alerts',
    sa.Column('dedup_key', sa.String(length=200), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('frame_id', sa.String(length=128), nullable=True),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('p_defect', sa.Float(), nullable=True),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('dedup_key')
    )
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alerts_device_id'), ['device_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_alerts_ts'), ['ts'], unique=False)

    op.create_table('audit',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('user', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=40), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_ts'), ['ts'], unique=False)

    op.create_table('commands',
    sa.Column('request_id', sa.String(length=128), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('user', sa.String(length=64), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('command', sa.String(length=40), nullable=False),
    sa.Column('args', sa.Text(), nullable=False),
    sa.Column('reply_ok', sa.Boolean(), nullable=True),
    sa.Column('reply', sa.Text(), nullable=True),
    sa.Column('replied_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('request_id')
    )
    with op.batch_alter_table('commands', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_commands_ts'), ['ts'], unique=False)

    op.create_table('counters',
    sa.Column('instance', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('instance', 'name')
    )
    op.create_table('events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('received', sa.Float(), nullable=False),
    sa.Column('request_id', sa.String(length=128), nullable=True),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_events_device_id'), ['device_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_events_request_id'), ['request_id'], unique=False)

    op.create_table('frame_images',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('frame_id', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('received', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('device_id', 'frame_id', 'kind')
    )
    with op.batch_alter_table('frame_images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_frame_images_sha256'), ['sha256'], unique=False)

    op.create_table('images',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('bytes', sa.Integer(), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('reviewed', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('sha256')
    )
    op.create_table('minutes',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('minute', sa.BigInteger(), nullable=False),
    sa.Column('model_sha256', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=100), nullable=False),
    sa.Column('frames', sa.Integer(), nullable=False),
    sa.Column('defective', sa.Integer(), nullable=False),
    sa.Column('low_confidence', sa.Integer(), nullable=False),
    sa.Column('latency_sum_ms', sa.Float(), nullable=False),
    sa.Column('p0', sa.Integer(), nullable=False),
    sa.Column('p1', sa.Integer(), nullable=False),
    sa.Column('p2', sa.Integer(), nullable=False),
    sa.Column('p3', sa.Integer(), nullable=False),
    sa.Column('p4', sa.Integer(), nullable=False),
    sa.Column('p5', sa.Integer(), nullable=False),
    sa.Column('p6', sa.Integer(), nullable=False),
    sa.Column('p7', sa.Integer(), nullable=False),
    sa.Column('p8', sa.Integer(), nullable=False),
    sa.Column('p9', sa.Integer(), nullable=False),
    sa.Column('l0', sa.Integer(), nullable=False),
    sa.Column('l1', sa.Integer(), nullable=False),
    sa.Column('l2', sa.Integer(), nullable=False),
    sa.Column('l3', sa.Integer(), nullable=False),
    sa.Column('l4', sa.Integer(), nullable=False),
    sa.Column('l5', sa.Integer(), nullable=False),
    sa.Column('l6', sa.Integer(), nullable=False),
    sa.Column('l7', sa.Integer(), nullable=False),
    sa.Column('l8', sa.Integer(), nullable=False),
    sa.Column('l9', sa.Integer(), nullable=False),
    sa.Column('l10', sa.Integer(), nullable=False),
    sa.Column('l11', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('device_id', 'minute', 'model_sha256')
    )
    op.create_table('results',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('frame_id', sa.String(length=128), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('label', sa.String(length=40), nullable=False),
    sa.Column('p_defect', sa.Float(), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=False),
    sa.Column('low_confidence', sa.Boolean(), nullable=False),
    sa.Column('model', sa.String(length=100), nullable=False),
    sa.Column('model_sha256', sa.String(length=64), nullable=False),
    sa.Column('latency_ms', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_id', 'frame_id', name='results_frame')
    )
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_results_ts'), ['ts'], unique=False)

    op.create_table('units',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('first_seen', sa.Float(), nullable=False),
    sa.Column('last_seen', sa.Float(), nullable=False),
    sa.Column('online', sa.Boolean(), nullable=True),
    sa.Column('available_at', sa.Float(), nullable=True),
    sa.Column('status', sa.Text(), nullable=True),
    sa.Column('status_at', sa.Float(), nullable=True),
    sa.Column('metrics', sa.Text(), nullable=True),
    sa.Column('metrics_at', sa.Float(), nullable=True),
    sa.Column('last_alert_at', sa.Float(), nullable=True),
    sa.Column('last_alert_kind', sa.String(length=32), nullable=True),
    sa.PrimaryKeyConstraint('device_id')
    )
    op.create_table('users',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('disabled', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
