"""FHIR Bulk Data `$export` jobs (hl7.org/fhir/uv/bulkdata/export.html): their
rows, who may see them, and their files under `<data dir>/exports/<id>/`.

A kick-off adds a queued row; a worker (`bulk_export_worker`) claims it,
writes the files and marks it complete. An export is its starter's alone
(an admin's too): to anyone else its status and files are not there (404).
Rows and files go together: a DELETE or expiry removes the row, then the
directory; a directory without a row is removed by the next clean-up.
"""

import re
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, delete, func, or_, select, update

from fhir_mappings import fhir_json
from fhir_mappings.bulk_export import ExportRequest, Level, level_types, type_filter
from fhir_mappings.errors import Forbidden, InvalidRequest, ResourceNotFound
from fhir_mappings.group_cohort import current_patients
from server.auth.access import Permission, Principal, search_permissions
from server.auth.scopes import Role
from server.db import advisory_locks, reading, write_connection
from server.fhir import interactions
from server.fhir.service import FhirService
from server.tables import fhir_exports

QUEUED, RUNNING, COMPLETE, FAILED = "queued", "running", "complete", "failed"
_ACTIVE = (QUEUED, RUNNING)
_ORPHAN_SECONDS = 60.0
# What `start` names an export: a UUID as `str(uuid.uuid4())` writes it.
_EXPORT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class ExportJob:
    export_id: str
    owner: str
    owner_is_client: bool
    owner_role: str | None
    scopes: str
    level: Level
    types: tuple[str, ...]
    since: int | None
    patients: tuple[str, ...] | None
    group: str | None
    type_filters: tuple[str, ...]
    patient_context: str | None  # the starter's (`Principal.patient`), which its `_typeFilter` chains keep to
    request_url: str
    transaction_time: int
    status: str
    progress: str | None
    outputs: list[dict[str, Any]]
    failure: str | None
    expires_at: int

    @classmethod
    def from_row(cls, row: Any) -> "ExportJob":
        return cls(
            export_id=row.export_id, owner=row.owner, owner_is_client=row.owner_is_client,
            owner_role=row.owner_role, scopes=row.scopes, level=Level(row.level),
            types=tuple(row.types.split(",")), since=row.since,
            patients=tuple(orjson.loads(row.patients)) if row.patients is not None else None, group=row.group_id,
            type_filters=tuple(orjson.loads(row.type_filters)) if row.type_filters is not None else (),
            patient_context=row.patient_context, request_url=row.request_url,
            transaction_time=row.transaction_time, status=row.status,
            progress=row.progress, outputs=orjson.loads(row.outputs) if row.outputs is not None else [],
            failure=row.failure, expires_at=row.expires_at,
        )


class TooManyExports(Exception):
    """The caller has as many exports running as it may."""


def now_micros() -> int:
    return time.time_ns() // 1000


def exported_types(principal: Principal, request: ExportRequest, supported: frozenset[str]) -> tuple[str, ...]:
    """The types the export writes: those asked for (or all the level holds)
    that the caller may both read and search, as a search would require.
    Naming one it may not is refused; otherwise such types are left out
    (AuditEvent and Subscription, which wildcards do not reach, among them)."""
    def allowed(resource_type: str) -> bool:
        return principal.may(Permission(resource_type, "r")) and principal.may(Permission(resource_type, "s"))

    if request.types is not None:
        refused = [resource_type for resource_type in request.types if not allowed(resource_type)]
        if refused:
            raise Forbidden(f"_type names {', '.join(refused)}, which {principal.name} may not read and search")
        return request.types
    types = tuple(resource_type for resource_type in level_types(request.level, supported) if allowed(resource_type))
    if not types:
        raise Forbidden(f"{principal.name} may not read and search any type this export holds")
    return types


def held_to_patient(principal: Principal, request: ExportRequest) -> ExportRequest:
    """The export a principal may start: under a patient context, one of its
    patient alone, at the Patient level. The worker writes it without the
    request's principal: the export's own list of patients is what keeps it
    to that patient, and the context, stored with it, what keeps its
    `_typeFilter` chains to the patient's compartment."""
    if principal.patient is None:
        return request
    if request.level is not Level.PATIENT:
        raise Forbidden("a token with a patient context exports its patient only: use [base]/Patient/$export")
    if request.patients not in (None, (principal.patient,)):
        raise Forbidden(f"a token with a patient context exports its patient only, Patient/{principal.patient}")
    return replace(request, patients=(principal.patient,))


def with_group_members(principal: Principal, fhir: FhirService, request: ExportRequest, group_id: str) -> ExportRequest:
    """A Group-level export of the Group's member Patients as it holds them
    now, at the kick-off (of those the `patient` parameter names, when it
    is given): a Group changed while the export runs changes nothing of it.
    The caller must be allowed to read the Group, as a read of it would."""
    if not principal.may(Permission("Group", "r")):
        raise Forbidden(f"{principal.name} may not read Group/{group_id[:64]}, so may not export it")
    group = fhir_json.loads(interactions.read(fhir, "Group", group_id).body)
    members = current_patients(group, now_micros())
    if request.patients is not None:
        # export.html, `patient`: one naming a patient who is no member of the Group SHOULD be an error.
        held = set(members)
        outsiders = [patient for patient in request.patients if patient not in held]
        if outsiders:
            raise InvalidRequest(
                f"patient names {', '.join(f'Patient/{patient}' for patient in outsiders[:3])[:200]}, not a member"
                f" of Group/{group_id} whose membership holds now"
            )
        members = tuple(patient for patient in members if patient in request.patients)
    return replace(request, group=group_id, patients=members)


def check_type_filters(principal: Principal, request: ExportRequest, supported: frozenset[str]) -> None:
    """A `_typeFilter` looks where a search of it would (its chains), and needs the same rights."""
    for query in request.type_filters:
        needed = search_permissions(type_filter(query, supported))
        refused = sorted(f"{p.resource_type}.{p.letter}" for p in needed if not principal.may(p))
        if refused:
            raise Forbidden(f"{principal.name} may not run _typeFilter {query[:64]!r}: it needs {', '.join(refused)}")


class ExportJobs:
    def __init__(self, engine: Engine, data_dir: Path, retention_seconds: float, max_per_caller: int) -> None:
        self.engine = engine
        self.root = data_dir / "exports"
        self.retention_micros = int(retention_seconds * 1_000_000)
        self.max_per_caller = max_per_caller

    def directory(self, export_id: str) -> Path:
        return self.root / export_id

    # --- for the routes --------------------------------------------------------

    def start(self, principal: Principal, request: ExportRequest, types: tuple[str, ...], request_url: str) -> str:
        """A new queued export; TooManyExports when the caller has its
        fill running. Counted and added under a lock per caller, so that two
        kick-offs at once cannot both take the last place."""
        export_id = str(uuid.uuid4())
        with write_connection(self.engine) as connection:
            advisory_locks(connection, [f"fhir-export:{principal.client}:{principal.name}"])
            active = connection.execute(
                select(func.count()).select_from(fhir_exports).where(
                    *_owned_by(principal), fhir_exports.c.status.in_(_ACTIVE))
            ).scalar_one()
            if active >= self.max_per_caller:
                raise TooManyExports(f"{principal.name} has {active} exports in progress, as many as it may")
            created = now_micros()
            connection.execute(fhir_exports.insert().values(
                export_id=export_id, owner=principal.name, owner_is_client=principal.client,
                owner_role=principal.role, scopes=str(principal.grant), level=request.level.value,
                types=",".join(types), since=request.since,
                patients=orjson.dumps(list(request.patients)) if request.patients is not None else None,
                group_id=request.group,
                type_filters=orjson.dumps(list(request.type_filters)) if request.type_filters else None,
                patient_context=principal.patient, request_url=request_url, transaction_time=created, status=QUEUED,
                created_at=created,
                expires_at=created + self.retention_micros,
            ))
        return export_id

    def find(self, export_id: str, principal: Principal) -> ExportJob:
        """The caller's export (any, for an admin); ResourceNotFound for one
        that is not there, has expired, or is someone else's. A token held to
        one patient finds only the exports of that patient alone (`held_to_patient`),
        whatever else its user started."""
        if not _EXPORT_ID.fullmatch(export_id):  # none was made (and PostgreSQL's text holds no NUL, say)
            raise ResourceNotFound(f"there is no export {export_id[:64]!r} of {principal.name}")
        with reading(self.engine) as connection:
            row = connection.execute(select(fhir_exports).where(
                fhir_exports.c.export_id == export_id, fhir_exports.c.expires_at > now_micros(),
                *([] if principal.role == Role.ADMIN.value and principal.patient is None else _owned_by(principal)),
            )).first()
        job = ExportJob.from_row(row) if row is not None else None
        if job is None or (principal.patient is not None and (job.level is not Level.PATIENT
                                                              or job.patients != (principal.patient,))):
            raise ResourceNotFound(f"there is no export {export_id[:64]!r} of {principal.name}")
        return job

    def cancel(self, export_id: str, principal: Principal) -> None:
        """Cancel a running export or remove a finished one, with its files (export.html#bulk-data-delete-request)."""
        self.find(export_id, principal)
        with write_connection(self.engine) as connection:
            connection.execute(delete(fhir_exports).where(fhir_exports.c.export_id == export_id))
        self._remove_files(export_id)

    def file(self, job: ExportJob, name: str) -> Path:
        """One of a complete export's files; ResourceNotFound for any other name."""
        if job.status != COMPLETE or name not in {output["file"] for output in job.outputs}:
            raise ResourceNotFound(f"export {job.export_id} has no file {name[:64]!r}")
        return self.directory(job.export_id) / name

    # --- for the worker -------------------------------------------------------

    def claim(self, lease_micros: int) -> ExportJob | None:
        """The oldest queued export, or a running one whose worker has not
        said so for a lease (its server stopped): marked running by this
        worker, which starts it again from the beginning."""
        now = now_micros()
        claimable = or_(fhir_exports.c.status == QUEUED,
                        (fhir_exports.c.status == RUNNING) & (fhir_exports.c.heartbeat < now - lease_micros))
        oldest = select(fhir_exports.c.export_id).where(claimable).order_by(fhir_exports.c.created_at).limit(1)
        with reading(self.engine) as connection:  # most polls find nothing: no write lock taken for that
            if connection.execute(oldest).first() is None:
                return None
        with write_connection(self.engine) as connection:
            row = connection.execute(oldest).first()
            if row is None:
                return None
            # The same condition again: another process may have claimed it since the look.
            claimed = connection.execute(
                update(fhir_exports).where(fhir_exports.c.export_id == row.export_id, claimable)
                .values(status=RUNNING, heartbeat=now, progress="starting")
            ).rowcount
            if not claimed:
                return None
            job = connection.execute(select(fhir_exports).where(fhir_exports.c.export_id == row.export_id)).one()
        return ExportJob.from_row(job)

    def beat(self, export_id: str, progress: str) -> bool:
        """Say the export is being written; False when it is gone (cancelled or expired)."""
        with write_connection(self.engine) as connection:
            return bool(connection.execute(
                update(fhir_exports).where(fhir_exports.c.export_id == export_id, fhir_exports.c.status == RUNNING)
                .values(heartbeat=now_micros(), progress=progress[:256])
            ).rowcount)

    def complete(self, connection: Connection, export_id: str, outputs: list[dict[str, Any]]) -> bool:
        """Mark it complete in the caller's transaction; False when it is gone."""
        return bool(connection.execute(
            update(fhir_exports).where(fhir_exports.c.export_id == export_id, fhir_exports.c.status == RUNNING)
            .values(status=COMPLETE, outputs=orjson.dumps(outputs), progress="complete", heartbeat=now_micros())
        ).rowcount)

    def requeue(self, export_id: str) -> None:
        """Back to the queue when its server stops; a cancelled export stays gone."""
        with write_connection(self.engine) as connection:
            connection.execute(
                update(fhir_exports).where(fhir_exports.c.export_id == export_id, fhir_exports.c.status == RUNNING)
                .values(status=QUEUED, progress="queued again: its server stopped")
            )

    def fail(self, export_id: str, reason: str) -> None:
        with write_connection(self.engine) as connection:
            connection.execute(
                update(fhir_exports).where(fhir_exports.c.export_id == export_id)
                .values(status=FAILED, failure=reason[:1024], progress="failed")
            )
        self._remove_files(export_id)

    def remove_expired(self) -> int:
        """Remove expired exports and their files, and directories without a
        row (left by a cancel that raced a worker); how many rows went."""
        now = now_micros()
        with reading(self.engine) as connection:  # most clean-ups find nothing: no write lock taken for that
            due = connection.execute(select(fhir_exports.c.export_id).where(fhir_exports.c.expires_at <= now)).first()
        expired: list[str] = []
        if due is not None:
            with write_connection(self.engine) as connection:
                expired = list(connection.execute(delete(fhir_exports).where(
                    fhir_exports.c.expires_at <= now).returning(fhir_exports.c.export_id)).scalars())
        with reading(self.engine) as connection:
            known = set(connection.execute(select(fhir_exports.c.export_id)).scalars())
        for export_id in expired:
            self._remove_files(export_id)
        if self.root.is_dir():
            settled = time.time() - _ORPHAN_SECONDS  # not one a worker has just made for a row added since the look
            for directory in self.root.iterdir():
                if directory.name not in known and directory.stat().st_mtime < settled:
                    shutil.rmtree(directory, ignore_errors=True)
        return len(expired)

    def _remove_files(self, export_id: str) -> None:
        shutil.rmtree(self.directory(export_id), ignore_errors=True)


def _owned_by(principal: Principal) -> list[Any]:
    return [fhir_exports.c.owner == principal.name, fhir_exports.c.owner_is_client == principal.client]
