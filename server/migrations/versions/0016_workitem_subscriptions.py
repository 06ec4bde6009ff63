"""UPS Watch: subscriptions to workitems and to the worklist, and the event
reports waiting for their subscribers

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'workitem_subscriptions',
        sa.Column('owner', sa.String(64), primary_key=True),
        sa.Column('ae_title', sa.String(16), primary_key=True),
        sa.Column('task_id', sa.String(64), sa.ForeignKey('workitems.task_id'), primary_key=True),
    )
    op.create_index('ix_workitem_subscriptions_task_id', 'workitem_subscriptions', ['task_id'])
    op.create_table(
        'worklist_subscriptions',
        sa.Column('owner', sa.String(64), primary_key=True),
        sa.Column('ae_title', sa.String(16), primary_key=True),
    )
    op.create_table(
        'workitem_events',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), primary_key=True, autoincrement=True),
        sa.Column('owner', sa.String(64), nullable=False),
        sa.Column('ae_title', sa.String(16), nullable=False),
        sa.Column('task_id', sa.String(64), sa.ForeignKey('workitems.task_id'), nullable=False),
        sa.Column('created_at', sa.BigInteger(), nullable=False),
        sa.Column('report_json', sa.LargeBinary(), nullable=False),
    )
    op.create_index('ix_workitem_events_created_at', 'workitem_events', ['created_at'])
    op.create_index('ix_workitem_events_subscriber_id', 'workitem_events', ['owner', 'ae_title', 'id'])


def downgrade() -> None:
    op.drop_table('workitem_events')
    op.drop_table('worklist_subscriptions')
    op.drop_table('workitem_subscriptions')
