"""The Alembic migrations build exactly the schema that server/tables.py declares."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from server.migrate import upgrade
from server.tables import metadata


def test_migrated_schema_matches_the_declared_tables(services):
    with services.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []


def test_upgrade_twice_is_harmless(services):
    upgrade(services.engine)
    upgrade(services.engine)


def test_downgrading_below_series_contents_keeps_one_automatic_job_per_series(services):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import insert, select

    from server.migrate import _ALEMBIC_INI
    from server.tables import ai_models, inference_jobs

    with services.engine.begin() as connection:
        model_id = connection.execute(insert(ai_models).values(
            name="m", version="1", bundle_path="/x", weights_sha256="0" * 64, device_id="d", active=True, registered_at=0,
        )).inserted_primary_key[0]
        for number, content in enumerate(("first", "second")):
            connection.execute(insert(inference_jobs).values(
                task_id=f"t{number}", model_id=model_id, study_instance_uid="1.2", series_instance_uid="1.2.3",
                automatic=True, status="completed", attempts=1, not_before=0, created_at=number, updated_at=number,
                series_content=content,
            ))
    config = Config(str(_ALEMBIC_INI))
    with services.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0008")
    with services.engine.connect() as connection:
        rows = connection.execute(select(inference_jobs.c.task_id, inference_jobs.c.automatic)).all()
    assert sorted(rows) == [("t0", False), ("t1", True)]
    upgrade(services.engine)


def test_upgrading_takes_out_the_segs_of_results_withdrawn_before(services):
    """Before 0010 a withdrawn job's SEG stayed in its study; after it, the sweep takes it out."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import insert, select

    from server.migrate import _ALEMBIC_INI
    from server.tables import ai_models, inference_jobs

    config = Config(str(_ALEMBIC_INI))
    with services.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0009")
    with services.engine.begin() as connection:
        model_id = connection.execute(insert(ai_models).values(
            name="m", version="1", bundle_path="/x", weights_sha256="0" * 64, device_id="d", active=True, registered_at=0,
        )).inserted_primary_key[0]
        for task_id, status, withdrawn in (("kept", "completed", False), ("withdrawn", "completed", True),
                                           ("failed", "failed", True)):
            connection.execute(insert(inference_jobs).values(
                task_id=task_id, model_id=model_id, study_instance_uid="1.2", series_instance_uid="1.2.3",
                automatic=False, status=status, attempts=1, not_before=0, created_at=0, updated_at=0,
                results_withdrawn=withdrawn,
            ))
    upgrade(services.engine)
    with services.engine.connect() as connection:
        due = connection.execute(select(inference_jobs.c.task_id).where(inference_jobs.c.seg_removal_due)).scalars()
        assert list(due) == ["withdrawn"]
