"""each component group of a study's person names is indexed on its own

Revision ID: 0022
Revises: 0021

QIDO matches a person name without `=` against each of its component groups
(alphabetic, ideographic, phonetic), and one with `=` group by group
(`dicom.matching.PersonNameMatch`); the groups get columns of their own so
that an exact match on one is an index look-up. The studies written before
are indexed again from their stored attributes.
"""

import sqlalchemy as sa
from alembic import op

from server.index import index_name_groups

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None

_COLUMNS = tuple(
    f"{name}_{group}"
    for name in ("patient_name", "referring_physician_name")
    for group in ("alphabetic", "ideographic", "phonetic")
)


# Not in batch mode: on SQLite a batch would copy the table, and dropping the
# old one deletes the rows that reference it (foreign keys are on).
def upgrade() -> None:
    for column in _COLUMNS:
        op.add_column('studies', sa.Column(column, sa.String(length=324), nullable=True))
        op.create_index(f'ix_studies_{column}', 'studies', [column], unique=False)
    index_name_groups(op.get_bind())


def downgrade() -> None:
    for column in _COLUMNS:
        op.drop_index(f'ix_studies_{column}', table_name='studies')
        op.drop_column('studies', column)
