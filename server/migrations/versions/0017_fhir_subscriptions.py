"""FHIR Subscriptions: what the server keeps of each beside the resource, and
the outbox of notifications waiting to be sent

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'fhir_subscriptions',
        sa.Column('subscription_id', sa.String(64), primary_key=True),
        sa.Column('criteria_type', sa.String(64), nullable=False),
        sa.Column('active', sa.Boolean(), nullable=False),
        sa.Column('end_at', sa.BigInteger()),
        sa.Column('owner', sa.String(64), nullable=False),
        sa.Column('owner_is_client', sa.Boolean(), nullable=False),
        sa.Column('scopes', sa.String(2048), nullable=False),
    )
    op.create_index('ix_fhir_subscriptions_criteria_type', 'fhir_subscriptions', ['criteria_type', 'active'])
    op.create_table(
        'fhir_subscription_notifications',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), primary_key=True, autoincrement=True),
        sa.Column('subscription_id', sa.String(64), sa.ForeignKey('fhir_subscriptions.subscription_id'),
                  nullable=False),
        sa.Column('resource_type', sa.String(64), nullable=False),
        sa.Column('resource_id', sa.String(64), nullable=False),
        sa.Column('version_id', sa.Integer(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('not_before', sa.BigInteger(), nullable=False),
        sa.Column('created_at', sa.BigInteger(), nullable=False),
    )
    op.create_index('ix_fhir_subscription_notifications_subscription_id', 'fhir_subscription_notifications',
                    ['subscription_id'])
    op.create_index('ix_fhir_subscription_notifications_not_before', 'fhir_subscription_notifications',
                    ['not_before'])


def downgrade() -> None:
    op.drop_table('fhir_subscription_notifications')
    op.drop_table('fhir_subscriptions')
