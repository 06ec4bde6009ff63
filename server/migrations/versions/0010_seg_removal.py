"""the SEG of a job whose results were withdrawn (its series deleted, or a
later run of its model on the series) is taken out of the study

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('inference_jobs') as batch_op:
        batch_op.add_column(sa.Column('seg_removal_due', sa.Boolean(), server_default=sa.false(), nullable=False))
    # Results withdrawn before this kept their SEG in the study: it goes now (a SEG gone with its study is skipped).
    op.execute(sa.text(
        "UPDATE inference_jobs SET seg_removal_due = true WHERE status = 'completed' AND results_withdrawn"
    ))


def downgrade() -> None:
    with op.batch_alter_table('inference_jobs') as batch_op:
        batch_op.drop_column('seg_removal_due')
