"""measurements: the reference subnet's latency in the same session (MeasureConfig.reference)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 16:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('measurements') as batch:  # batch: SQLite alters tables by copying them
        batch.add_column(sa.Column('reference_ms', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('measurements') as batch:
        batch.drop_column('reference_ms')
