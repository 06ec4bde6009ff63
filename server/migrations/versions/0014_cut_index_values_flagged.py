"""study and series rows record whether a text column holds only the start
of its value

Revision ID: 0014
Revises: 0013

QIDO matched a wildcard on the stored attributes of every row whose column
was at its full width, since its value might go on; a 64-character hashed
PatientID is a whole LO value, and made every such row a candidate of every
`PatientID=*x*` search. The rows whose values an older index did cut are
found again from their stored attributes.
"""

import sqlalchemy as sa
from alembic import op

from server.index import flag_cut_rows

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


# Not in batch mode: on SQLite a batch would copy the table, and dropping the
# old one deletes the rows that reference it (foreign keys are on).
def upgrade() -> None:
    for table in ('studies', 'series'):
        op.add_column(table, sa.Column('index_cut', sa.Boolean(), server_default=sa.false(), nullable=False))
    flag_cut_rows(op.get_bind())


def downgrade() -> None:
    for table in ('studies', 'series'):
        op.drop_column(table, 'index_cut')
