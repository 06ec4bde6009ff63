"""`$export`: the SMART patient context its starter had

Revision ID: 0028
Revises: 0027

An export started under a patient context holds that patient alone (its
`patients`), but its `_typeFilter` chains look into other resources, which
a search by the same token sees only within the patient's compartment: the
worker needs the context to apply that rule. Rows written before: none.
"""

import sqlalchemy as sa
from alembic import op

revision = '0028'
down_revision = '0027'
branch_labels = None
depends_on = None


# Not in batch mode (SQLite adds a nullable column in place).
def upgrade() -> None:
    op.add_column('fhir_exports', sa.Column('patient_context', sa.String(length=64), nullable=True))


def downgrade() -> None:
    # Batch mode: SQLite drops a column by copying the table (nothing references it).
    with op.batch_alter_table('fhir_exports') as batch:
        batch.drop_column('patient_context')
