"""an index of every resource version by time, for the whole-system history

Revision ID: 0023
Revises: 0022
"""

from alembic import op

revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_fhir_versions_updated", "fhir_versions", ["last_updated", "id"])


def downgrade() -> None:
    op.drop_index("ix_fhir_versions_updated", table_name="fhir_versions")
