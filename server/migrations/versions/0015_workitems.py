"""every inference job is a UPS workitem: its UID, schedule and priority,
and the data set its requester sent

Revision ID: 0015
Revises: 0014

Jobs ordered before UPS-RS existed get the workitem UID derived from their
Task id, their creation as their scheduled start, and MEDIUM priority, as
jobs ordered through FHIR get them from now on.
"""

import sqlalchemy as sa
from alembic import op

from dicom.workitems import derived_workitem_uid, matching_datetime
from fhir_mappings.date_ranges import from_micros

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    workitems = op.create_table(
        'workitems',
        sa.Column('workitem_uid', sa.String(64), primary_key=True),
        sa.Column('task_id', sa.String(64), sa.ForeignKey('inference_jobs.task_id'), nullable=False, unique=True),
        sa.Column('scheduled_start', sa.String(21), nullable=False),
        sa.Column('priority', sa.String(8), nullable=False),
        sa.Column('dataset_json', sa.LargeBinary()),
    )
    op.create_index('ix_workitems_scheduled_start', 'workitems', ['scheduled_start'])
    jobs = op.get_bind().execute(sa.text("SELECT task_id, created_at FROM inference_jobs")).all()
    if jobs:
        op.bulk_insert(workitems, [
            {"workitem_uid": derived_workitem_uid(task_id), "task_id": task_id, "priority": "MEDIUM",
             "scheduled_start": matching_datetime(from_micros(created_at))}
            for task_id, created_at in jobs
        ])


def downgrade() -> None:
    op.drop_index('ix_workitems_scheduled_start', 'workitems')
    op.drop_table('workitems')
