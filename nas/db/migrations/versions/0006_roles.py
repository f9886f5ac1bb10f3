"""roles and ownership: users' role (operator or user), devices' owner (NULL: shared, the operators'), tokens'
expiry and session flag

Existing users stay users and existing devices stay shared; existing tokens never expire (their holders got
them before expiry existed); an operator is made with `hwnas users create NAME --operator` or
`hwnas users role NAME operator`.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 20:05:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users') as batch:
        batch.add_column(sa.Column('role', sa.String(16), nullable=False, server_default='user'))
    with op.batch_alter_table('api_tokens') as batch:
        batch.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('session', sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table('devices') as batch:
        batch.add_column(sa.Column('owner_id', sa.Integer(), nullable=True))
        batch.create_foreign_key('fk_devices_owner', 'users', ['owner_id'], ['id'], ondelete='CASCADE')
        batch.create_index('ix_devices_owner_id', ['owner_id'])


def downgrade() -> None:
    with op.batch_alter_table('devices') as batch:
        batch.drop_index('ix_devices_owner_id')
        batch.drop_constraint('fk_devices_owner', type_='foreignkey')
        batch.drop_column('owner_id')
    with op.batch_alter_table('api_tokens') as batch:
        batch.drop_column('session')
        batch.drop_column('expires_at')
    with op.batch_alter_table('users') as batch:
        batch.drop_column('role')
