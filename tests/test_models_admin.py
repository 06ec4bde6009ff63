"""Model versions from the command line and the admin API: register,
validate on a labelled set, activate (refused without a passing validation
unless forced), deactivate; and `medaiflow infer` on a stored study."""

import dataclasses
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from inference.demo.labelled_set import (
    SMALL_GEOMETRY,
    reference_segmentation,
    write_labelled_set,
)
from inference.demo.phantom import make_phantom, phantom_datasets
from server.cli import main
from server.jobs.service import DEMO_BUNDLE
from server.tables import inference_jobs, instances
from tests.conftest import admin_headers
from tests.inference_checks import phantom, series_bytes, stow, study_uid
from tests.test_auth_access import _bearer

DEMO = "medaiflow-demo-lesions@1.0.1"


@pytest.fixture
def cli_env(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    data_dir = tmp_path / "cli-data"
    monkeypatch.setenv("MEDAIFLOW_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MEDAIFLOW_DATABASE_URL", database_url)
    monkeypatch.setenv("MEDAIFLOW_DEMO_MODEL", "false")
    monkeypatch.setenv("MEDAIFLOW_EXECUTOR", "none")
    return data_dir


@pytest.fixture(scope="module")
def labelled_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("labelled")
    write_labelled_set(directory, 2, geometry=SMALL_GEOMETRY)
    return directory


def test_models_from_the_command_line(cli_env, labelled_set, capsys):
    assert main(["models", "add", str(DEMO_BUNDLE)]) == 0
    assert DEMO in capsys.readouterr().out
    assert (cli_env / "models" / "medaiflow-demo-lesions" / "1.0.1" / "models" / "model.pt").is_file()

    assert main(["models", "activate", DEMO]) == 2
    assert "has not been validated" in capsys.readouterr().err

    assert main(["models", "validate", DEMO, str(labelled_set)]) == 0
    output = capsys.readouterr().out
    assert "Passed on 2 cases" in output
    assert "validation passed" in output

    assert main(["models", "activate", DEMO]) == 0
    assert "active" in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    listed = capsys.readouterr().out
    assert DEMO in listed and "validation passed" in listed and "without a passing" not in listed
    assert main(["models", "deactivate", DEMO]) == 0
    assert "inactive" in capsys.readouterr().out
    assert main(["models", "activate", "nothing@1"]) == 2
    assert "no model version nothing@1" in capsys.readouterr().err


def test_a_failing_validation_keeps_a_version_inactive(cli_env, tmp_path, capsys):
    # References that mark nothing: every lesion the model finds is a false positive.
    unrelated = tmp_path / "empty-references"
    case = unrelated / "case-1"
    case.mkdir(parents=True)
    study = make_phantom(20_500, SMALL_GEOMETRY, lesion_count=2, radius_mm=(8.0, 12.0))
    sources = phantom_datasets(study)
    for index, dataset in enumerate(sources):
        dataset.save_as(case / f"image-{index:03d}.dcm", enforce_file_format=True)
    unmarked = dataclasses.replace(study, label=np.zeros_like(study.label))
    reference_segmentation(unmarked, sources).save_as(case / "reference.dcm", enforce_file_format=True)

    assert main(["models", "add", str(DEMO_BUNDLE)]) == 0
    assert main(["models", "validate", DEMO, str(unrelated)]) == 1
    assert "Failed" in capsys.readouterr().out
    assert main(["models", "activate", DEMO]) == 2
    assert "did not pass" in capsys.readouterr().err
    assert main(["models", "activate", DEMO, "--force"]) == 0
    assert "activated without a passing validation" in capsys.readouterr().out


def test_the_admin_api(fhir, services, labelled_set):
    client: TestClient = fhir
    added = client.post("/admin/models", json={"path": str(DEMO_BUNDLE)})
    assert added.status_code == 201, added.text
    model = added.json()
    assert model["key"] == DEMO and model["active"] is False
    refused = client.post(f"/admin/models/{DEMO}/activate")
    assert refused.status_code == 409
    assert "has not been validated" in refused.json()["message"]
    forced = client.post(f"/admin/models/{DEMO}/activate", params={"force": "true"}).json()
    assert forced["active"] and forced["activatedWithoutPassingValidation"]
    device = client.get(f"/fhir/{model['device']}").json()
    assert device["status"] == "active"
    assert any(prop["type"]["coding"][0]["code"] == "activated-without-passing-validation"
               and prop["valueCode"][0]["coding"][0]["code"] == "Y" for prop in device["property"])

    validated = client.post(f"/admin/models/{DEMO}/validate", json={"directory": str(labelled_set)})
    assert validated.status_code == 200, validated.text
    assert validated.json()["report"]["passed"] is True
    device = client.get(f"/fhir/{model['device']}").json()
    codes = {prop["type"]["coding"][0]["code"] for prop in device["property"]}
    assert {"dice", "volume-error", "count-accuracy"} <= codes
    # The results it made while forced name this Device: it still says it ran unvalidated.
    assert any(prop["type"]["coding"][0]["code"] == "activated-without-passing-validation"
               and prop["valueCode"][0]["coding"][0]["code"] == "Y" for prop in device["property"])
    assert validated.json()["everActivatedWithoutPassingValidation"] is True
    assert client.get("/admin/models").json()[0]["validation"]["passed"] is True
    again = client.post("/admin/models", json={"path": str(DEMO_BUNDLE)})
    assert again.status_code == 200 and again.json()["key"] == DEMO  # nothing new was created
    assert client.post("/admin/models", json={"path": "/nonexistent"}).status_code == 422
    assert client.get("/admin/models/nothing@1").status_code == 404


def test_infer_from_the_command_line(cli_env, capsys):
    from server.app import build_services, create_app
    from server.migrate import upgrade
    from server.settings import load_settings

    services = build_services(load_settings(demo_model=True))
    upgrade(services.engine)
    study = phantom(seed=71, lesions=2)
    with TestClient(create_app(services=services), base_url="http://testserver", headers=admin_headers(services)) as client:
        stow(client, series_bytes(study))
    services.engine.dispose()
    assert main(["infer", "--study", study_uid(study), "--quiet"]) == 0
    output = capsys.readouterr().out
    assert "completed" in output and "DiagnosticReport/" in output
    # Ordered with no request to record it: the order is in the audit trail as the server's own.
    task = output.split()[0]
    services.audit.chain.project()
    app = create_app(services=services)
    with TestClient(app, base_url="http://testserver", headers=admin_headers(services)) as client:
        events = client.get("/fhir/AuditEvent", params={"entity": task, "_count": 10}).json()
    assert "inference Task requested" in [entry["resource"].get("outcomeDesc") for entry in events["entry"]]
    assert main(["infer", "--study", "1.2.3.4", "--quiet"]) == 2
    assert "no ImagingStudy/1.2.3.4" in capsys.readouterr().err


def test_infer_runs_every_attempt_of_its_job_with_no_server_running(cli_env, capsys, monkeypatch):
    """An attempt that fails in a way that may pass queues the job again; with
    no server's scheduler to hand it on, `infer` runs the next attempt itself."""
    from server.app import build_services, create_app
    from server.migrate import upgrade
    from server.settings import load_settings

    monkeypatch.setenv("MEDAIFLOW_JOB_RETRY_BACKOFF_SECONDS", "0.1")
    services = build_services(load_settings(demo_model=True))
    upgrade(services.engine)
    study = phantom(seed=72, lesions=1)
    app = create_app(services=services)
    with TestClient(app, base_url="http://testserver", headers=admin_headers(services)) as client:
        stow(client, series_bytes(study))
    with services.engine.connect() as connection:
        first_file = connection.execute(select(instances.c.file_path).limit(1)).scalar_one()
    services.jobs.files.absolute(first_file).unlink()  # every attempt fails to read the series, and may retry
    exit_codes: list[int] = []
    infer = threading.Thread(
        target=lambda: exit_codes.append(main(["infer", "--study", study_uid(study), "--quiet"])), daemon=True
    )
    infer.start()
    infer.join(timeout=120)
    assert not infer.is_alive(), "infer still waits for a job that nobody runs"
    assert exit_codes == [1]
    assert "failed" in capsys.readouterr().out
    with services.engine.connect() as connection:
        [task_id] = connection.execute(select(inference_jobs.c.task_id)).scalars().all()
    job = services.jobs.queue.get(task_id)
    assert job is not None and job.status == "failed" and job.attempts == 3
    services.engine.dispose()


def test_bad_input_to_the_model_api_is_a_client_error(fhir, tmp_path):
    broken = tmp_path / "broken-bundle"
    shutil.copytree(DEMO_BUNDLE, broken)
    metadata = (broken / "configs" / "metadata.json").read_text()
    (broken / "configs" / "metadata.json").write_text(metadata.replace('"min_slices": 20', '"min_slices": Infinity'))
    assert '"min_slices": Infinity' in (broken / "configs" / "metadata.json").read_text()
    for path in (str(broken), "a\u0000b"):
        response = fhir.post("/admin/models", json={"path": path})
        assert response.status_code == 422, (path, response.text)
    fhir.post("/admin/models", json={"path": str(DEMO_BUNDLE)})
    (tmp_path / "a-file").write_text("x")
    for directory in ("/nonexistent", str(tmp_path / "a-file"), "a\u0000b", str(tmp_path)):
        response = fhir.post(f"/admin/models/{DEMO}/validate", json={"directory": directory})
        assert response.status_code == 422, (directory, response.text)


def test_the_same_version_with_another_configuration_is_refused_not_ignored(fhir, tmp_path):
    assert fhir.post("/admin/models", json={"path": str(DEMO_BUNDLE)}).status_code in (200, 201)
    again = tmp_path / "same-version"
    shutil.copytree(DEMO_BUNDLE, again)
    assert fhir.post("/admin/models", json={"path": str(again)}).status_code == 200  # the same bundle: nothing new
    metadata = (again / "configs" / "metadata.json").read_text()
    (again / "configs" / "metadata.json").write_text(metadata.replace('"min_slices": 20', '"min_slices": 5'))
    refused = fhir.post("/admin/models", json={"path": str(again)})
    assert refused.status_code == 422
    assert "metadata.json" in refused.json()["message"] and "new version" in refused.json()["message"]


def test_a_labelled_set_that_is_no_folder_is_a_message_from_the_command_line(cli_env, capsys):
    assert main(["models", "add", str(DEMO_BUNDLE)]) == 0
    capsys.readouterr()
    assert main(["models", "validate", DEMO, "/nonexistent"]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_a_version_activated_after_studies_arrived_runs_on_them_when_asked(fhir):
    client: TestClient = fhir
    studies = [phantom(seed=seed, lesions=1) for seed in (72, 73)]
    for study in studies:
        stow(client, series_bytes(study))
    client.post("/admin/models", json={"path": str(DEMO_BUNDLE)})
    inactive = client.post(f"/admin/models/{DEMO}/run-stored")
    assert inactive.status_code == 409 and "not active" in inactive.json()["message"]
    client.post(f"/admin/models/{DEMO}/activate", params={"force": "true"})
    assert client.post(f"/admin/models/{DEMO}/run-stored", params={"studyDateFrom": "2099-01-01"}).status_code == 400
    assert client.post(f"/admin/models/{DEMO}/run-stored", params={"studyDateFrom": "20990101"}).json()["queued"] == 0
    queued = client.post(f"/admin/models/{DEMO}/run-stored")
    assert queued.status_code == 200, queued.text
    tasks = [client.get(f"/fhir/{reference}").json() for reference in queued.json()["tasks"]]
    assert sorted(task["focus"]["reference"] for task in tasks) == sorted(
        f"ImagingStudy/{study_uid(study)}" for study in studies
    )
    assert {task["status"] for task in tasks} == {"requested"}
    assert client.post(f"/admin/models/{DEMO}/run-stored").json()["queued"] == 0  # once per series content


def test_run_stored_from_the_command_line(cli_env, capsys):
    assert main(["models", "add", str(DEMO_BUNDLE)]) == 0
    assert main(["models", "activate", DEMO, "--force"]) == 0
    capsys.readouterr()
    assert main(["models", "run-stored", DEMO, "--study-date-from", "20200101"]) == 0
    assert "0 jobs queued" in capsys.readouterr().out  # nothing is stored
    with pytest.raises(SystemExit):
        main(["models", "run-stored", DEMO, "--study-date-from", "2020-01-01"])


def test_run_stored_needs_task_creation_and_study_reading_and_stops_once_deactivated(fhir, services, monkeypatch):
    from sqlalchemy import update

    from server.auth.scopes import Role
    from server.tables import ai_models

    client: TestClient = fhir
    for seed in (74, 75):
        stow(client, series_bytes(phantom(seed=seed, lesions=1)))
    client.post("/admin/models", json={"path": str(DEMO_BUNDLE)})
    client.post(f"/admin/models/{DEMO}/activate", params={"force": "true"})
    address = f"/admin/models/{DEMO}/run-stored"
    for scopes in ("system/Device.cru system/ImagingStudy.r", "system/Task.c"):
        headers = _bearer(services, Role.AI_OPERATOR, scopes)
        assert client.post(address, headers=headers).status_code == 403, scopes
    assert client.post(address, params={"studyDateFrom": "20241399"}).status_code == 400  # no such day

    registry = services.jobs.registry
    get = registry.get
    looked_up: list[str] = []

    def deactivated_after_the_first_study(key, connection=None):  # type: ignore[no-untyped-def]
        looked_up.append(key)
        if len(looked_up) == 3:  # before the second study: another request deactivated it
            connection.execute(update(ai_models).values(active=False))
        return get(key, connection)

    monkeypatch.setattr(registry, "get", deactivated_after_the_first_study)
    answer = client.post(address)
    assert answer.status_code == 200 and answer.json()["queued"] == 1
    # The server's own decision to run it is in the audit trail, naming the Task.
    services.audit.chain.project()
    events = client.get("/fhir/AuditEvent", params={"entity": answer.json()["tasks"][0], "_count": 10}).json()
    assert any("inference Task requested" in entry["resource"].get("outcomeDesc", "") for entry in events["entry"])


def _bundle_that_runs_code(tmp_path: Path) -> tuple[Path, Path]:
    """The demo bundle whose preprocessing, once parsed, writes a marker file: what any config may do."""
    bundle, marker = tmp_path / "code-bundle", tmp_path / "the-config-ran"
    shutil.copytree(DEMO_BUNDLE, bundle)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["preprocessing"]["transforms"].insert(0, {
        "_target_": "Lambdad", "keys": "image",
        "func": f"$__import__('pathlib').Path({str(marker)!r}).write_text('ran') and (lambda image: image)",
    })
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    return bundle, marker


def test_only_an_admin_user_registers_or_validates_a_bundle(fhir, services, labelled_set):
    from server.auth.scopes import Role

    client: TestClient = fhir
    operator = _bearer(services, Role.AI_OPERATOR)  # Device.cruds
    token, _ = services.auth.issuer.issue("ehr", "", "system/*.cruds", client=True)
    system = {"Authorization": f"Bearer {token}"}
    for headers in (operator, system):
        refused = client.post("/admin/models", json={"path": str(DEMO_BUNDLE)}, headers=headers)
        assert refused.status_code == 403 and "only an admin user" in refused.json()["message"], refused.text
    assert client.get("/admin/models").json() == []

    assert client.post("/admin/models", json={"path": str(DEMO_BUNDLE)}).status_code == 201  # the admin
    for headers in (operator, system):
        refused = client.post(f"/admin/models/{DEMO}/validate", json={"directory": str(labelled_set)}, headers=headers)
        assert refused.status_code == 403, refused.text
    assert client.get(f"/admin/models/{DEMO}").json()["validation"] is None
    # Switching a registered version runs nothing new: an operator's work still.
    assert client.post(f"/admin/models/{DEMO}/activate", params={"force": "true"}, headers=operator).status_code == 200
    assert client.post(f"/admin/models/{DEMO}/deactivate", headers=operator).status_code == 200


def test_a_folder_that_is_no_labelled_set_is_refused_before_the_bundles_configs_run(fhir, tmp_path):
    bundle, marker = _bundle_that_runs_code(tmp_path)
    assert fhir.post("/admin/models", json={"path": str(bundle)}).status_code == 201
    empty = tmp_path / "empty"
    empty.mkdir()
    for directory in ("/nonexistent", str(empty)):
        refused = fhir.post(f"/admin/models/{DEMO}/validate", json={"directory": directory})
        assert refused.status_code == 422, refused.text
    assert not marker.exists()
