"""retrained models: a job's front member retrained (from scratch) or fine-tuned, with its test BLEU

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 23:05:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'retrained_models',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=False),
        sa.Column('candidate_id', sa.Integer(), nullable=False),
        sa.Column('path', sa.String(1024), nullable=False),
        sa.Column('weights', sa.String(16), nullable=False),
        sa.Column('steps', sa.Integer(), nullable=False),
        sa.Column('averaged', sa.Integer(), nullable=False),
        sa.Column('test_bleu', sa.Float(), nullable=True),
        sa.Column('test_loss', sa.Float(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['search_jobs.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['candidate_id'], ['search_candidates.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_retrained_models_job_id', 'retrained_models', ['job_id'])


def downgrade() -> None:
    op.drop_index('ix_retrained_models_job_id', table_name='retrained_models')
    op.drop_table('retrained_models')
