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
    from sqlalchemy import insert, select

    from server.migrate import migrating
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
    with migrating(services.engine) as config:
        command.downgrade(config, "0008")
    with services.engine.connect() as connection:
        rows = connection.execute(select(inference_jobs.c.task_id, inference_jobs.c.automatic)).all()
    assert sorted(rows) == [("t0", False), ("t1", True)]
    upgrade(services.engine)


def test_upgrading_takes_out_the_segs_of_results_withdrawn_before(services):
    """Before 0010 a withdrawn job's SEG stayed in its study; after it, the sweep takes it out."""
    from alembic import command
    from sqlalchemy import insert, select

    from server.migrate import migrating
    from server.tables import ai_models, inference_jobs

    with migrating(services.engine) as config:
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


def test_upgrading_indexes_person_names_again_without_trailing_empty_components(client, services):
    """Before 0013 the index kept Roe^Jane^^^ as written, and fuzzy search keys
    split words at wildcards; upgrading derives the name columns again."""
    from alembic import command
    from pydicom.uid import generate_uid
    from sqlalchemy import select, update

    from server.migrate import migrating
    from server.tables import studies
    from tests.dicom_files import make_ct, multipart_body

    study = generate_uid()
    body, content_type = multipart_body([make_ct(study, PatientName="Roe^Jane^^^", ReferringPhysicianName="Sm?th^^")])
    assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    with migrating(services.engine) as config:
        command.downgrade(config, "0012")
        config.attributes["connection"].execute(update(studies).values(
            patient_name="Roe^Jane^^^", referring_physician_name="Sm?th^^", referring_physician_name_search=" SM TH ",
        ))
    upgrade(services.engine)
    with services.engine.connect() as connection:
        row = connection.execute(select(studies).where(studies.c.study_instance_uid == study)).one()
    assert (row.patient_name, row.patient_name_search) == ("Roe^Jane", " ROE JANE ")
    assert (row.referring_physician_name, row.referring_physician_name_search) == ("Sm?th", " SM?TH ")
    found = client.get("/dicom-web/studies", params={"PatientName": "Roe^Jane"}).json()
    assert [result["0020000D"]["Value"][0] for result in found] == [study]


def test_upgrading_flags_the_rows_whose_values_an_older_index_cut(client, services):
    """Before 0014 the index did not record which values it cut to their
    columns; upgrading finds them from the stored attributes, and leaves a
    value that only fills its column (a 64-character PatientID) unflagged."""
    from alembic import command
    from pydicom.uid import generate_uid
    from sqlalchemy import select

    from server.migrate import migrating
    from server.tables import series, studies
    from tests.dicom_files import make_ct, multipart_body

    hashed, long_id, description = "a1" * 32, "X" * 70 + "END", "AXIAL " * 12 + "LATE"
    cut_study, whole_study, cut_series = generate_uid(), generate_uid(), generate_uid()
    body, content_type = multipart_body([
        make_ct(cut_study, PatientID=long_id),
        make_ct(whole_study, cut_series, PatientID=hashed, SeriesDescription=description),
    ])
    assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200

    def flags() -> dict[str, bool]:
        with services.engine.connect() as connection:
            rows = connection.execute(select(studies.c.study_instance_uid, studies.c.index_cut)).all()
            return dict(rows + connection.execute(select(series.c.series_instance_uid, series.c.index_cut)).all())

    written = flags()
    with migrating(services.engine) as config:
        command.downgrade(config, "0013")
    upgrade(services.engine)
    assert flags() == written
    assert (written[cut_study], written[whole_study], written[cut_series]) == (True, False, True)
    assert sum(written.values()) == 2
    found = client.get("/dicom-web/studies", params={"PatientID": "*END"}).json()
    assert [result["0020000D"]["Value"][0] for result in found] == [cut_study]


def test_upgrading_indexes_the_component_groups_of_names_stored_before(client, services):
    """Before 0022 the groups of a name had no columns; upgrading fills them
    from the stored attributes, and a search by one group finds the study."""
    from alembic import command
    from pydicom.uid import generate_uid
    from sqlalchemy import select

    from server.migrate import migrating
    from server.tables import studies
    from tests.dicom_files import make_ct, multipart_body

    grouped, plain, nameless = generate_uid(), generate_uid(), generate_uid()
    body, content_type = multipart_body([
        make_ct(grouped, PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう", ReferringPhysicianName="=佐藤^一郎",
                SpecificCharacterSet="ISO_IR 192"),
        make_ct(plain, PatientName="Doe^John^^"),
        make_ct(nameless, PatientName=None),
    ])
    assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    group_columns = [
        column for column in studies.c if column.name.endswith(("_alphabetic", "_ideographic", "_phonetic"))
    ]

    def groups() -> dict[str, tuple]:
        with services.engine.connect() as connection:
            rows = connection.execute(select(studies.c.study_instance_uid, *group_columns)).all()
        return {row[0]: tuple(row[1:]) for row in rows}

    written = groups()
    with migrating(services.engine) as config:
        command.downgrade(config, "0021")
    upgrade(services.engine)
    assert groups() == written
    assert written[grouped] == ("Yamada^Tarou", "山田^太郎", "やまだ^たろう", None, "佐藤^一郎", None)
    assert written[plain] == ("Doe^John", None, None, None, None, None)
    assert written[nameless] == (None,) * 6
    searches = (("PatientName", "山田^太郎"), ("PatientName", "やまだ^たろう"), ("ReferringPhysicianName", "佐藤^一郎"))
    for key, query in searches:
        found = client.get("/dicom-web/studies", params={key: query}).json()
        assert [result["0020000D"]["Value"][0] for result in found] == [grouped]
