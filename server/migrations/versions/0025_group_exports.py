"""Group-level `$export`: the Group an export was asked of

Revision ID: 0025
Revises: 0024

Its members, as they were at the kick-off, are in `patients`; `group_id`
names the Group, whose version at the export's transactionTime is written
with them. Rows written before are system- or Patient-level: none.
"""

import sqlalchemy as sa
from alembic import op

revision = '0025'
down_revision = '0024'
branch_labels = None
depends_on = None


# Not in batch mode (SQLite adds a nullable column in place).
def upgrade() -> None:
    op.add_column('fhir_exports', sa.Column('group_id', sa.String(length=64), nullable=True))


def downgrade() -> None:
    # Batch mode: SQLite drops a column by copying the table (nothing references it).
    with op.batch_alter_table('fhir_exports') as batch:
        batch.drop_column('group_id')
