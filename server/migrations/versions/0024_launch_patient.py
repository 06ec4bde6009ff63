"""SMART App Launch with a patient context: the patient a user picks, or an EHR launch names

Revision ID: 0024
Revises: 0023

An authorization waits between the login and the pick with the user who
logged in (`user_name`), or knows its patient from the start (`patient`, an
EHR launch, whose contexts are `launch_contexts`); its code, and the refresh
tokens of its family, keep the Patient (`patient`), so that every access
token issued from them names the same one. Rows written before have none:
their tokens have no patient context, as before.
"""

import sqlalchemy as sa
from alembic import op

revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None


# Not in batch mode (SQLite adds a nullable column in place).
def upgrade() -> None:
    op.add_column('authorization_requests', sa.Column('user_name', sa.String(length=64), nullable=True))
    op.add_column('authorization_requests', sa.Column('patient', sa.String(length=64), nullable=True))
    op.create_table(
        'launch_contexts',
        sa.Column('launch_hash', sa.String(length=64), nullable=False),
        sa.Column('patient', sa.String(length=64), nullable=False),
        sa.Column('created_by', sa.String(length=64), nullable=False),
        sa.Column('expires_at', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('launch_hash'),
    )
    op.create_index('ix_launch_contexts_expires_at', 'launch_contexts', ['expires_at'], unique=False)
    op.add_column('authorization_codes', sa.Column('patient', sa.String(length=64), nullable=True))
    op.add_column('refresh_tokens', sa.Column('patient', sa.String(length=64), nullable=True))


def downgrade() -> None:
    # Batch mode: SQLite drops a column by copying the table (nothing references these tables).
    op.drop_index('ix_launch_contexts_expires_at', table_name='launch_contexts')
    op.drop_table('launch_contexts')
    for table, column in (('refresh_tokens', 'patient'), ('authorization_codes', 'patient'),
                          ('authorization_requests', 'patient'), ('authorization_requests', 'user_name')):
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
