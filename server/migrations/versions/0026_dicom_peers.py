"""DIMSE peers: the remote AEs that may associate, and with which role

Revision ID: 0026
Revises: 0025
"""

import sqlalchemy as sa
from alembic import op

revision = '0026'
down_revision = '0025'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'dicom_peers',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('ae_title', sa.String(length=16), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('role', sa.String(length=32), nullable=False),
        sa.Column('created_at', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_dicom_peers')),
        sa.UniqueConstraint('ae_title', name=op.f('uq_dicom_peers_ae_title')),
    )


def downgrade() -> None:
    op.drop_table('dicom_peers')
