"""automatic jobs run again when their series changes; jobs found by study;
a SEG follows its study's patient

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('inference_jobs') as batch_op:
        batch_op.add_column(sa.Column('series_content', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('seg_patient_stale', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.drop_index('ix_inference_jobs_automatic', table_name='inference_jobs')
    op.create_index(
        'ix_inference_jobs_automatic', 'inference_jobs', ['model_id', 'series_instance_uid', 'series_content'],
        unique=True, sqlite_where=sa.text('automatic'), postgresql_where=sa.text('automatic'),
    )
    op.create_index('ix_inference_jobs_study', 'inference_jobs', ['study_instance_uid'])


def downgrade() -> None:
    op.drop_index('ix_inference_jobs_study', table_name='inference_jobs')
    op.drop_index('ix_inference_jobs_automatic', table_name='inference_jobs')
    # Before 0009 a series ran once per model: of its automatic jobs, the newest stays one.
    op.execute(sa.text(
        "UPDATE inference_jobs SET automatic = false WHERE automatic AND EXISTS ("
        " SELECT 1 FROM inference_jobs AS newer WHERE newer.automatic AND newer.model_id = inference_jobs.model_id"
        " AND newer.series_instance_uid = inference_jobs.series_instance_uid"
        " AND (newer.created_at, newer.task_id) > (inference_jobs.created_at, inference_jobs.task_id))"
    ))
    op.create_index(
        'ix_inference_jobs_automatic', 'inference_jobs', ['model_id', 'series_instance_uid'],
        unique=True, sqlite_where=sa.text('automatic'), postgresql_where=sa.text('automatic'),
    )
    with op.batch_alter_table('inference_jobs') as batch_op:
        batch_op.drop_column('seg_patient_stale')
        batch_op.drop_column('series_content')
