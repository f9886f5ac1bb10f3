"""device revisions; measurements and predictors keyed by revision and model, predictors by protocol and tuning;
search jobs' note (how verification ended)

Rows older than revisions belong to each device's revision 1, marked 'legacy': they were taken before
hwnas recorded which hardware and which model they came from, so no lookup of today's matches them
(they stay listed by `hwnas devices show`).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 14:10:00
"""

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

LEGACY_KEY = 'legacy'


def upgrade() -> None:
    op.create_table(
        'device_revisions',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('device_id', sa.Integer(), sa.ForeignKey('devices.id', ondelete='CASCADE'), nullable=False),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.Column('fingerprint', sa.JSON(), nullable=False),
        sa.Column('fingerprint_key', sa.String(16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint('device_id', 'number', name='uq_revision_number'),
        sa.UniqueConstraint('device_id', 'fingerprint_key', name='uq_revision_fingerprint'),
    )
    op.create_index('ix_device_revisions_device_id', 'device_revisions', ['device_id'])
    with op.batch_alter_table('search_jobs') as batch:
        batch.add_column(sa.Column('note', sa.Text(), nullable=True))
    with op.batch_alter_table('measurements') as batch:  # batch: SQLite alters tables by copying them
        batch.add_column(sa.Column('revision_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('model_key', sa.String(64), nullable=False, server_default=''))
        batch.create_foreign_key('fk_measurements_revision', 'device_revisions', ['revision_id'], ['id'],
                                 ondelete='CASCADE')
        batch.create_index('ix_measurements_revision_id', ['revision_id'])
        batch.drop_constraint('uq_measurement_identity', type_='unique')
        batch.create_unique_constraint('uq_measurement_identity', ['device_id', 'revision_id', 'space', 'model_key',
                                                                   'subnet_key', 'protocol_key', 'tuning_key'])
    with op.batch_alter_table('predictors') as batch:
        batch.add_column(sa.Column('revision_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('model_key', sa.String(64), nullable=False, server_default=''))
        batch.add_column(sa.Column('protocol_key', sa.String(16), nullable=False, server_default=''))
        batch.add_column(sa.Column('tuning_key', sa.String(64), nullable=False, server_default=''))
        batch.create_foreign_key('fk_predictors_revision', 'device_revisions', ['revision_id'], ['id'],
                                 ondelete='CASCADE')
        batch.create_index('ix_predictors_revision_id', ['revision_id'])
    conn = op.get_bind()
    devices = sa.table('devices', sa.column('id', sa.Integer()), sa.column('fingerprint', sa.JSON()))
    revisions = sa.table('device_revisions', sa.column('id', sa.Integer()), sa.column('device_id', sa.Integer()),
                         sa.column('number', sa.Integer()), sa.column('fingerprint', sa.JSON()),
                         sa.column('fingerprint_key', sa.String()), sa.column('created_at', sa.DateTime()))
    now = dt.datetime.now(dt.UTC)
    for device_id, fingerprint in conn.execute(sa.select(devices.c.id, devices.c.fingerprint)).all():
        rev_id = conn.execute(revisions.insert().values(device_id=device_id, number=1, fingerprint=fingerprint or {},
                                                        fingerprint_key=LEGACY_KEY, created_at=now)
                              .returning(revisions.c.id)).scalar_one()
        for name in ('measurements', 'predictors'):
            t = sa.table(name, sa.column('device_id', sa.Integer()), sa.column('revision_id', sa.Integer()))
            conn.execute(t.update().where(t.c.device_id == device_id).values(revision_id=rev_id))
    # every row has its revision now, and the defaults only filled the rows there were: new rows name their keys
    for name, cols in (('measurements', ('model_key',)), ('predictors', ('model_key', 'protocol_key', 'tuning_key'))):
        with op.batch_alter_table(name) as batch:
            batch.alter_column('revision_id', existing_type=sa.Integer(), nullable=False)
            for col in cols:
                batch.alter_column(col, existing_type=sa.String(), server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('predictors') as batch:
        batch.drop_index('ix_predictors_revision_id')
        batch.drop_constraint('fk_predictors_revision', type_='foreignkey')
        for col in ('tuning_key', 'protocol_key', 'model_key', 'revision_id'):
            batch.drop_column(col)
    with op.batch_alter_table('measurements') as batch:
        batch.drop_constraint('uq_measurement_identity', type_='unique')
        batch.drop_index('ix_measurements_revision_id')
        batch.drop_constraint('fk_measurements_revision', type_='foreignkey')
        batch.drop_column('model_key')
        batch.drop_column('revision_id')
        batch.create_unique_constraint('uq_measurement_identity', ['device_id', 'space', 'subnet_key',
                                                                   'protocol_key', 'tuning_key'])
    with op.batch_alter_table('search_jobs') as batch:
        batch.drop_column('note')
    op.drop_index('ix_device_revisions_device_id', 'device_revisions')
    op.drop_table('device_revisions')
