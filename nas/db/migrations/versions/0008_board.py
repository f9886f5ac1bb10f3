"""measurements name the board of a remote device that timed them (board farms)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 02:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('measurements') as batch:
        batch.add_column(sa.Column('board', sa.String(300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('measurements') as batch:
        batch.drop_column('board')
