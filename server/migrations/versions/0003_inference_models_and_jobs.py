"""inference models and jobs

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ai_models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('version', sa.String(length=32), nullable=False),
    sa.Column('bundle_path', sa.String(length=1024), nullable=False),
    sa.Column('weights_sha256', sa.String(length=64), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('validation_json', sa.LargeBinary(), nullable=True),
    sa.Column('registered_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ai_models')),
    sa.UniqueConstraint('name', 'version', name=op.f('uq_ai_models_name_version'))
    )
    op.create_table('study_activity',
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('changed_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('study_instance_uid', name=op.f('pk_study_activity'))
    )
    op.create_table('inference_jobs',
    sa.Column('task_id', sa.String(length=64), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.Column('automatic', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('not_before', sa.BigInteger(), nullable=False),
    sa.Column('lease_owner', sa.String(length=64), nullable=True),
    sa.Column('lease_expires', sa.BigInteger(), nullable=True),
    sa.Column('dispatched_at', sa.BigInteger(), nullable=True),
    sa.Column('business_status', sa.String(length=256), nullable=True),
    sa.Column('reason', sa.String(length=1024), nullable=True),
    sa.Column('results_withdrawn', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('started_at', sa.BigInteger(), nullable=True),
    sa.Column('ended_at', sa.BigInteger(), nullable=True),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['ai_models.id'], name=op.f('fk_inference_jobs_model_id_ai_models')),
    sa.PrimaryKeyConstraint('task_id', name=op.f('pk_inference_jobs'))
    )
    with op.batch_alter_table('inference_jobs', schema=None) as batch_op:
        batch_op.create_index('ix_inference_jobs_automatic', ['model_id', 'series_instance_uid'], unique=True, sqlite_where=sa.text('automatic'), postgresql_where=sa.text('automatic'))
        batch_op.create_index('ix_inference_jobs_queue', ['status', 'not_before'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('inference_jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_inference_jobs_queue')
        batch_op.drop_index('ix_inference_jobs_automatic')

    op.drop_table('inference_jobs')
    op.drop_table('study_activity')
    op.drop_table('ai_models')
