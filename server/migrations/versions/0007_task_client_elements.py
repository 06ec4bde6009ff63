"""inference jobs keep what the client's Task said beyond the job

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('inference_jobs') as batch_op:
        batch_op.add_column(sa.Column('client_elements_json', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('inference_jobs') as batch_op:
        batch_op.drop_column('client_elements_json')
