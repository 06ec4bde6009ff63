"""person names are indexed without trailing empty components, and their
search keys keep wildcards inside words

Revision ID: 0013
Revises: 0012

PS3.5 6.2.1.1 makes trailing empty components insignificant, so Roe^Jane^^^
is Roe^Jane; the index kept them as written, and an exact search for one
spelling missed the other. Fuzzy search keys no longer split words at `*`
and `?`. The studies whose name columns may have been written otherwise are
indexed again from their stored attributes.
"""

from alembic import op

from server.index import reindex_person_names

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    reindex_person_names(op.get_bind())


def downgrade() -> None:
    pass  # the names as now written are names an older server matches as written; nothing to undo
