"""FHIR Bulk Data export jobs (`$export`): one row per kick-off

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'fhir_exports',
        sa.Column('export_id', sa.String(36), primary_key=True),
        sa.Column('owner', sa.String(64), nullable=False),
        sa.Column('owner_is_client', sa.Boolean(), nullable=False),
        sa.Column('owner_role', sa.String(16)),
        sa.Column('scopes', sa.String(2048), nullable=False),
        sa.Column('level', sa.String(16), nullable=False),
        sa.Column('types', sa.String(2048), nullable=False),
        sa.Column('since', sa.BigInteger()),
        sa.Column('patients', sa.LargeBinary()),
        sa.Column('type_filters', sa.LargeBinary()),
        sa.Column('request_url', sa.Text(), nullable=False),
        sa.Column('transaction_time', sa.BigInteger(), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('progress', sa.String(256)),
        sa.Column('heartbeat', sa.BigInteger()),
        sa.Column('outputs', sa.LargeBinary()),
        sa.Column('failure', sa.String(1024)),
        sa.Column('created_at', sa.BigInteger(), nullable=False),
        sa.Column('expires_at', sa.BigInteger(), nullable=False),
    )
    op.create_index('ix_fhir_exports_owner', 'fhir_exports', ['owner', 'owner_is_client', 'status'])
    op.create_index('ix_fhir_exports_status', 'fhir_exports', ['status'])
    op.create_index('ix_fhir_exports_expires_at', 'fhir_exports', ['expires_at'])


def downgrade() -> None:
    op.drop_table('fhir_exports')
