"""clients: public keys for SMART Backend Services (private_key_jwt), a
secret no longer required of a client that has them, and the assertion ids
seen, so that none is used twice

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('jwks_json', sa.Text(), nullable=True))
        batch_op.alter_column('secret_hash', existing_type=sa.String(length=256), nullable=True)
    op.create_table(
        'client_assertions',
        sa.Column('client_id', sa.String(length=64), nullable=False),
        sa.Column('jti', sa.String(length=256), nullable=False),
        sa.Column('expires_at', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('client_id', 'jti', name=op.f('pk_client_assertions')),
    )
    op.create_index('ix_client_assertions_expires_at', 'client_assertions', ['expires_at'])


def downgrade() -> None:
    op.drop_index('ix_client_assertions_expires_at', table_name='client_assertions')
    op.drop_table('client_assertions')
    # A client with keys and no secret cannot be kept as the older schema has them.
    op.execute("DELETE FROM clients WHERE secret_hash IS NULL")
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.alter_column('secret_hash', existing_type=sa.String(length=256), nullable=False)
        batch_op.drop_column('jwks_json')
