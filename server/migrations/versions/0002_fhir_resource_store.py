"""fhir resource store

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('fhir_resources',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.BigInteger(), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('resource_json', sa.LargeBinary(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fhir_resources')),
    sa.UniqueConstraint('resource_type', 'resource_id', name=op.f('uq_fhir_resources_resource_type_resource_id'))
    )
    with op.batch_alter_table('fhir_resources', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_resources_type_updated', ['resource_type', 'deleted', 'last_updated', 'resource_id'], unique=False)

    op.create_table('fhir_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.BigInteger(), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('resource_json', sa.LargeBinary(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fhir_versions')),
    sa.UniqueConstraint('resource_type', 'resource_id', 'version_id', name=op.f('uq_fhir_versions_resource_type_resource_id_version_id'))
    )
    with op.batch_alter_table('fhir_versions', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_versions_type_updated', ['resource_type', 'last_updated'], unique=False)

    op.create_table('fhir_dates',
    sa.Column('resource_pk', sa.Integer(), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('low', sa.BigInteger(), nullable=False),
    sa.Column('high', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['resource_pk'], ['fhir_resources.id'], name=op.f('fk_fhir_dates_resource_pk_fhir_resources'), ondelete='CASCADE')
    )
    with op.batch_alter_table('fhir_dates', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_dates_lookup', ['param', 'low', 'high'], unique=False)
        batch_op.create_index(batch_op.f('ix_fhir_dates_resource_pk'), ['resource_pk'], unique=False)

    op.create_table('fhir_quantities',
    sa.Column('resource_pk', sa.Integer(), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('system', sa.String(length=256), nullable=True),
    sa.Column('code', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['resource_pk'], ['fhir_resources.id'], name=op.f('fk_fhir_quantities_resource_pk_fhir_resources'), ondelete='CASCADE')
    )
    with op.batch_alter_table('fhir_quantities', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_quantities_lookup', ['param', 'value'], unique=False)
        batch_op.create_index(batch_op.f('ix_fhir_quantities_resource_pk'), ['resource_pk'], unique=False)

    op.create_table('fhir_references',
    sa.Column('resource_pk', sa.Integer(), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('target_type', sa.String(length=64), nullable=False),
    sa.Column('target_id', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['resource_pk'], ['fhir_resources.id'], name=op.f('fk_fhir_references_resource_pk_fhir_resources'), ondelete='CASCADE')
    )
    with op.batch_alter_table('fhir_references', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_references_lookup', ['param', 'target_id', 'target_type'], unique=False)
        batch_op.create_index(batch_op.f('ix_fhir_references_resource_pk'), ['resource_pk'], unique=False)

    op.create_table('fhir_strings',
    sa.Column('resource_pk', sa.Integer(), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('normalised', sa.String(length=256), nullable=False),
    sa.Column('exact', sa.String(length=256), nullable=False),
    sa.ForeignKeyConstraint(['resource_pk'], ['fhir_resources.id'], name=op.f('fk_fhir_strings_resource_pk_fhir_resources'), ondelete='CASCADE')
    )
    with op.batch_alter_table('fhir_strings', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_strings_lookup', ['param', 'normalised'], unique=False)
        batch_op.create_index(batch_op.f('ix_fhir_strings_resource_pk'), ['resource_pk'], unique=False)

    op.create_table('fhir_tokens',
    sa.Column('resource_pk', sa.Integer(), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('system', sa.String(length=256), nullable=True),
    sa.Column('code', sa.String(length=256), nullable=False),
    sa.ForeignKeyConstraint(['resource_pk'], ['fhir_resources.id'], name=op.f('fk_fhir_tokens_resource_pk_fhir_resources'), ondelete='CASCADE')
    )
    with op.batch_alter_table('fhir_tokens', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_tokens_lookup', ['param', 'code'], unique=False)
        batch_op.create_index(batch_op.f('ix_fhir_tokens_resource_pk'), ['resource_pk'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('fhir_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_fhir_tokens_resource_pk'))
        batch_op.drop_index('ix_fhir_tokens_lookup')

    op.drop_table('fhir_tokens')
    with op.batch_alter_table('fhir_strings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_fhir_strings_resource_pk'))
        batch_op.drop_index('ix_fhir_strings_lookup')

    op.drop_table('fhir_strings')
    with op.batch_alter_table('fhir_references', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_fhir_references_resource_pk'))
        batch_op.drop_index('ix_fhir_references_lookup')

    op.drop_table('fhir_references')
    with op.batch_alter_table('fhir_quantities', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_fhir_quantities_resource_pk'))
        batch_op.drop_index('ix_fhir_quantities_lookup')

    op.drop_table('fhir_quantities')
    with op.batch_alter_table('fhir_dates', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_fhir_dates_resource_pk'))
        batch_op.drop_index('ix_fhir_dates_lookup')

    op.drop_table('fhir_dates')
    with op.batch_alter_table('fhir_versions', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_versions_type_updated')

    op.drop_table('fhir_versions')
    with op.batch_alter_table('fhir_resources', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_resources_type_updated')

    op.drop_table('fhir_resources')
