"""a study's instances in ImagingStudy order from one covering index, which
also serves what the index on study_pk alone did

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instances') as batch_op:
        batch_op.create_index(
            'ix_instances_study_contents',
            ['study_pk', 'instance_number', 'sop_instance_uid', 'series_pk', 'sop_class_uid'],
            unique=False,
        )
        batch_op.drop_index('ix_instances_study_pk')


def downgrade() -> None:
    with op.batch_alter_table('instances') as batch_op:
        batch_op.create_index('ix_instances_study_pk', ['study_pk'], unique=False)
        batch_op.drop_index('ix_instances_study_contents')
