"""the reference lookup index ends with the resource's pk: the resources
pointing at one target come in the order they were written, so that a page
of a patient's compartment ($everything) is read from where the last page
ended, and a reference search reads only the index

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_fhir_references_lookup', table_name='fhir_references')
    op.create_index(
        'ix_fhir_references_lookup', 'fhir_references', ['param', 'target_id', 'target_type', 'resource_pk'],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index('ix_fhir_references_lookup', table_name='fhir_references')
    op.create_index(
        'ix_fhir_references_lookup', 'fhir_references', ['param', 'target_id', 'target_type'], unique=False,
    )
