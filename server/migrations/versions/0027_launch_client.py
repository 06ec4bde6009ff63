"""EHR launch contexts bound to the app they were opened for

Revision ID: 0027
Revises: 0026

`POST /auth/launch` may name the client that alone may use the context
(`client_id`); contexts opened before, and those opened without one, name
none: any registered app may use them, once (a context is deleted by the
authorization that takes it, so no column records its use).
"""

import sqlalchemy as sa
from alembic import op

revision = '0027'
down_revision = '0026'
branch_labels = None
depends_on = None


# Not in batch mode (SQLite adds a nullable column in place).
def upgrade() -> None:
    op.add_column('launch_contexts', sa.Column('client_id', sa.String(length=64), nullable=True))


def downgrade() -> None:
    # Batch mode: SQLite drops a column by copying the table (nothing references it).
    with op.batch_alter_table('launch_contexts') as batch:
        batch.drop_column('client_id')
