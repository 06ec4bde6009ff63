"""SMART App Launch (authorization code with PKCE): clients' redirect URIs
and whether they are public; pending authorizations, authorization codes
and refresh tokens, each kept by the SHA-256 of its secret

Revision ID: 0021
Revises: 0020
"""

import sqlalchemy as sa
from alembic import op

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('redirect_uris', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('public', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        'authorization_requests',
        sa.Column('key_hash', sa.String(length=64), nullable=False),
        sa.Column('client_id', sa.String(length=64), nullable=False),
        sa.Column('redirect_uri', sa.Text(), nullable=False),
        sa.Column('scope', sa.Text(), nullable=False),
        sa.Column('state', sa.Text(), nullable=True),
        sa.Column('code_challenge', sa.String(length=128), nullable=False),
        sa.Column('expires_at', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('key_hash', name=op.f('pk_authorization_requests')),
    )
    op.create_index('ix_authorization_requests_expires_at', 'authorization_requests', ['expires_at'])
    op.create_table(
        'authorization_codes',
        sa.Column('code_hash', sa.String(length=64), nullable=False),
        sa.Column('client_id', sa.String(length=64), nullable=False),
        sa.Column('redirect_uri', sa.Text(), nullable=False),
        sa.Column('code_challenge', sa.String(length=128), nullable=False),
        sa.Column('user_name', sa.String(length=64), nullable=False),
        sa.Column('scope', sa.Text(), nullable=False),
        sa.Column('expires_at', sa.BigInteger(), nullable=False),
        sa.Column('used', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('code_hash', name=op.f('pk_authorization_codes')),
    )
    op.create_index('ix_authorization_codes_expires_at', 'authorization_codes', ['expires_at'])
    op.create_table(
        'refresh_tokens',
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('family', sa.String(length=64), nullable=False),
        sa.Column('client_id', sa.String(length=64), nullable=False),
        sa.Column('user_name', sa.String(length=64), nullable=False),
        sa.Column('scope', sa.Text(), nullable=False),
        sa.Column('expires_at', sa.BigInteger(), nullable=False),
        sa.Column('used', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_refresh_tokens')),
    )
    op.create_index('ix_refresh_tokens_family', 'refresh_tokens', ['family'])
    op.create_index('ix_refresh_tokens_expires_at', 'refresh_tokens', ['expires_at'])


def downgrade() -> None:
    for table, columns in (('refresh_tokens', ('expires_at', 'family')), ('authorization_codes', ('expires_at',)),
                           ('authorization_requests', ('expires_at',))):
        for column in columns:
            op.drop_index(f'ix_{table}_{column}', table_name=table)
        op.drop_table(table)
    # A public client has neither a secret nor keys: the older server could not tell it from a broken row.
    op.execute("DELETE FROM clients WHERE public")
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.drop_column('public')
        batch_op.drop_column('redirect_uris')
