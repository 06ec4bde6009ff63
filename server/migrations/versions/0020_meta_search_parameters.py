"""resources' meta security labels, tags and profiles are indexed for
`_security`, `_tag` and `_profile`

Revision ID: 0020
Revises: 0019

Those written before were never indexed: they are indexed again from their JSON.
"""

from alembic import op

from server.fhir.store import reindex_labelled

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    reindex_labelled(op.get_bind())


def downgrade() -> None:
    pass  # index rows of parameters an older server does not know are never read by it
