"""fhir update counts: current resources per type and second of last_updated

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('fhir_update_counts',
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('bucket', sa.BigInteger(), nullable=False),
    sa.Column('live', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('resource_type', 'bucket', name=op.f('pk_fhir_update_counts'))
    )
    # The resources stored before this revision (integer division on both databases).
    op.execute(
        "INSERT INTO fhir_update_counts (resource_type, bucket, live) "
        "SELECT resource_type, last_updated / 1000000 * 1000000, COUNT(*) FROM fhir_resources "
        "WHERE NOT deleted GROUP BY resource_type, last_updated / 1000000 * 1000000"
    )


def downgrade() -> None:
    op.drop_table('fhir_update_counts')
