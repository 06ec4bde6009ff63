"""index values too long for their columns become equality keys, not cut text

Revision ID: 0008
Revises: 0007

A token, system or exact string longer than its index column used to be cut
to the column's width, so an equality search for the whole value missed it.
Such values are now stored as `server.tables.equality_key` makes them; the
resources whose rows may hold a cut value are indexed again from their JSON.
"""

from alembic import op

from server.fhir.store import reindex_overlong_values

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    reindex_overlong_values(op.get_bind())


def downgrade() -> None:
    pass  # equality keys are as valid an index as cut values were; nothing to undo
