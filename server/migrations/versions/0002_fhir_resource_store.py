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
        batch_op.create_index('ix_fhir_strings_lookup', ['param', 'normalised'], unique=False, postgresql_ops={'normalised': 'varchar_pattern_ops'})
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
    if op.get_bind().dialect.name == "sqlite":
        _plan_statistics()


# SQLite has no statistics until ANALYZE runs, and then plans a search by
# scanning every resource of the type instead of starting from the few index
# rows that match. Fixed figures of the shape of a large store (SQLite's
# documented way to steer its planner, lang_analyze.html section 2) make it
# start from the selective index whatever the store's size.
_STATISTICS = (
    ("fhir_resources", "sqlite_autoindex_fhir_resources_1", "1000000 100000 1"),
    ("fhir_resources", "ix_fhir_resources_type_updated", "1000000 100000 100000 1 1"),
    ("fhir_versions", "sqlite_autoindex_fhir_versions_1", "1000000 100000 2 1"),
    ("fhir_versions", "ix_fhir_versions_type_updated", "1000000 100000 1"),
    ("fhir_tokens", "ix_fhir_tokens_lookup", "10000000 500000 20"),
    ("fhir_tokens", "ix_fhir_tokens_resource_pk", "10000000 10"),
    ("fhir_strings", "ix_fhir_strings_lookup", "1000000 100000 10"),
    ("fhir_strings", "ix_fhir_strings_resource_pk", "1000000 2"),
    ("fhir_dates", "ix_fhir_dates_lookup", "1000000 100000 10 10"),
    ("fhir_dates", "ix_fhir_dates_resource_pk", "1000000 2"),
    ("fhir_references", "ix_fhir_references_lookup", "1000000 100000 10 10"),
    ("fhir_references", "ix_fhir_references_resource_pk", "1000000 3"),
    ("fhir_quantities", "ix_fhir_quantities_lookup", "1000000 100000 10"),
    ("fhir_quantities", "ix_fhir_quantities_resource_pk", "1000000 2"),
)


def _plan_statistics() -> None:
    op.execute("ANALYZE fhir_resources")  # creates sqlite_stat1 (the table is empty: nothing to read)
    for table, index, stat in _STATISTICS:
        op.execute(sa.text("DELETE FROM sqlite_stat1 WHERE tbl = :table AND idx = :index").bindparams(table=table, index=index))
        op.execute(
            sa.text("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (:table, :index, :stat)").bindparams(
                table=table, index=index, stat=stat
            )
        )
    op.execute("ANALYZE sqlite_schema")  # makes this connection load the figures, as new ones will


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
