"""The index schema: one row per study, series and instance.

Columns exist for every QIDO matching key (PS3.18 §10.6.1.2) so matching runs
in SQL; each row also keeps the DICOM JSON it answers with, built once at
ingest, so QIDO and metadata responses never reparse files.
"""

import hashlib

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    func,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Widths follow the VR maximum lengths of PS3.5 Table 6.2-1 (PN: 64 chars per
# component group, times three groups plus separators).
studies = Table(
    "studies",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_instance_uid", String(64), nullable=False, unique=True),
    Column("patient_id", String(64), index=True),
    Column("issuer_of_patient_id", String(64)),
    Column("patient_name", String(324), index=True),
    Column("patient_name_search", String(330), index=True),
    # Each component group of the name, so that an exact match on one group
    # is an index look-up (`dicom.matching.PersonNameMatch`); as wide as the
    # whole name, so that a group is cut only where the whole is.
    Column("patient_name_alphabetic", String(324), index=True),
    Column("patient_name_ideographic", String(324), index=True),
    Column("patient_name_phonetic", String(324), index=True),
    Column("patient_birth_date", String(8), index=True),
    Column("patient_sex", String(16)),
    Column("study_date", String(8), index=True),
    Column("study_time", String(16)),
    Column("accession_number", String(64), index=True),
    Column("study_id", String(16)),
    Column("study_description", String(64)),
    Column("referring_physician_name", String(324)),
    Column("referring_physician_name_search", String(330)),
    Column("referring_physician_name_alphabetic", String(324), index=True),
    Column("referring_physician_name_ideographic", String(324), index=True),
    Column("referring_physician_name_phonetic", String(324), index=True),
    Column("attributes_json", LargeBinary, nullable=False),
    # Whether a text column holds only the start of its value (`server.index._fitted`).
    # Instances need no such flag: their text is UIDs, refused unless they fit.
    Column("index_cut", Boolean, nullable=False, server_default=false()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

series = Table(
    "series",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_pk", Integer, ForeignKey("studies.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("series_instance_uid", String(64), nullable=False, unique=True),
    Column("modality", String(16), index=True),
    Column("series_number", Integer),
    Column("series_description", String(64)),
    Column("body_part_examined", String(16)),
    Column("performed_procedure_step_start_date", String(8)),
    Column("performed_procedure_step_start_time", String(16)),
    Column("attributes_json", LargeBinary, nullable=False),
    Column("index_cut", Boolean, nullable=False, server_default=false()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# RequestAttributesSequence items of the instances of a series, so QIDO
# sequence matching on RequestedProcedureID / ScheduledProcedureStepID runs in
# SQL. Items accumulate over the series' instances; an absent ID is stored as
# "" so that the unique constraint sees repeats (NULLs never compare equal).
series_requests = Table(
    "series_requests",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("series_pk", Integer, ForeignKey("series.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("requested_procedure_id", String(16), nullable=False, index=True),
    Column("scheduled_procedure_step_id", String(16), nullable=False, index=True),
    UniqueConstraint("series_pk", "requested_procedure_id", "scheduled_procedure_step_id"),
)

instances = Table(
    "instances",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("series_pk", Integer, ForeignKey("series.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("study_pk", Integer, ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("sop_class_uid", String(64), nullable=False, index=True),
    Column("instance_number", Integer),
    Column("rows", Integer),
    Column("columns", Integer),
    Column("bits_allocated", Integer),
    Column("number_of_frames", Integer),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("file_path", String(512), nullable=False),
    Column("file_size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("metadata_json", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
# A study's instances in the order its ImagingStudy lists them, with every
# column the FHIR sync reads (a covering index): a study sent an instance per
# STOW has them all read at each arrival, and at 1,000 SQLite took 1.6 ms
# reading the rows and sorting them, 0.5 ms from this.
Index(
    "ix_instances_study_contents", instances.c.study_pk, instances.c.instance_number, instances.c.sop_instance_uid,
    instances.c.series_pk, instances.c.sop_class_uid,
)

# Files renamed into place but not yet committed to the index. A crash in
# that window leaves a row here; start-up removes each such file that no
# instance row references (STYLE 7: never a file without its row).
storage_journal = Table(
    "storage_journal",
    metadata,
    Column("file_path", String(512), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

Index("ix_series_study_modality", series.c.study_pk, series.c.modality)

# --- FHIR resource store ----------------------------------------------------
# One row per resource with its current version's JSON, serialized once when
# written and served as is. `last_updated` is microseconds since the epoch
# (UTC) so that comparisons and keyset paging are exact on both databases.
fhir_resources = Table(
    "fhir_resources",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("resource_type", String(64), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("resource_json", LargeBinary),
    UniqueConstraint("resource_type", "resource_id"),
)
# Serves `_lastUpdated` ranges, counts and sorts over current resources.
Index(
    "ix_fhir_resources_type_updated",
    fhir_resources.c.resource_type,
    fhir_resources.c.deleted,
    fhir_resources.c.last_updated,
    fhir_resources.c.resource_id,
)

# Every version, past and present, of the types that keep history. Types
# derived from the DICOM index (ImagingStudy, Patient, Endpoint) change with
# every stored instance and keep only their current version.
fhir_versions = Table(
    "fhir_versions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("resource_type", String(64), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),
    Column("method", String(8), nullable=False),
    Column("resource_json", LargeBinary),
    UniqueConstraint("resource_type", "resource_id", "version_id"),
)
Index("ix_fhir_versions_type_updated", fhir_versions.c.resource_type, fhir_versions.c.last_updated)
# The whole-system history, newest first across types.
Index("ix_fhir_versions_updated", fhir_versions.c.last_updated, fhir_versions.c.id)


def _search_index(name: str, *columns: Column, lookup: tuple[str, ...], **index_options: object) -> Table:  # type: ignore[type-arg]
    table = Table(
        name,
        metadata,
        Column("resource_pk", Integer, ForeignKey("fhir_resources.id", ondelete="CASCADE"), nullable=False, index=True),
        Column("param", String(64), nullable=False),
        *columns,
    )
    Index(f"ix_{name}_lookup", table.c.param, *(table.c[column] for column in lookup), **index_options)
    return table


# Search-index rows of the current version, one table per parameter type.
# Their text columns hold INDEX_WIDTH characters at most: one overlong value
# must not fail a write on PostgreSQL, and the full value stays in the JSON.
INDEX_WIDTH = 256


def clipped(text: str | None) -> str | None:
    """Text as a column searched by prefix or substring holds it: its start."""
    return text if text is None else text[:INDEX_WIDTH]


def equality_key(text: str | None, width: int = INDEX_WIDTH) -> str | None:
    """Text as a column `width` wide, only compared for equality, holds it:
    as is when it fits, or else its start and a hash of the whole (160 bits
    of SHA-256), so that a search for the whole finds it and one for a value
    that merely starts alike does not."""
    if text is None or len(text) <= width:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:40]
    return f"{text[: width - 41]}\u2026{digest}"


fhir_tokens = _search_index(
    "fhir_tokens", Column("system", String(INDEX_WIDTH)), Column("code", String(INDEX_WIDTH), nullable=False),
    lookup=("code",),
)
fhir_strings = _search_index(
    "fhir_strings", Column("normalised", String(INDEX_WIDTH), nullable=False),
    Column("exact", String(INDEX_WIDTH), nullable=False),
    lookup=("normalised",),
    # Prefix LIKE can use a btree only under the C collation or with pattern ops (PostgreSQL).
    postgresql_ops={"normalised": "varchar_pattern_ops"},
)
fhir_dates = _search_index(
    "fhir_dates", Column("low", BigInteger, nullable=False), Column("high", BigInteger, nullable=False),
    lookup=("low", "high"),
)
fhir_references = _search_index(
    "fhir_references", Column("target_type", String(64), nullable=False),
    # resource_pk last: the resources pointing at one target in the order they were written.
    Column("target_id", String(64), nullable=False), lookup=("target_id", "target_type", "resource_pk"),
)
fhir_quantities = _search_index(
    "fhir_quantities", Column("value", Float, nullable=False), Column("system", String(256)), Column("code", String(64)),
    lookup=("value",),
)


# --- Inference -------------------------------------------------------------
# Registered model versions. The bundle is copied under the data directory,
# so the registration outlives the folder it was added from.
ai_models = Table(
    "ai_models",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False),
    Column("version", String(32), nullable=False),
    Column("bundle_path", String(1024), nullable=False),
    Column("weights_sha256", String(64), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("active", Boolean, nullable=False),
    # JSON of the last validation: metrics, whether it passed, and whether an
    # activation was forced past a failing or missing one.
    Column("validation_json", LargeBinary),
    Column("registered_at", BigInteger, nullable=False),
    UniqueConstraint("name", "version"),
)

# The durable state of each inference job; the Task resource is its public
# face and is written in the same transaction as every change here. Times are
# microseconds since the epoch, like the FHIR store's.
inference_jobs = Table(
    "inference_jobs",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("model_id", Integer, ForeignKey("ai_models.id"), nullable=False),
    Column("study_instance_uid", String(64), nullable=False),
    Column("series_instance_uid", String(64)),
    Column("patient_id", String(64)),
    Column("automatic", Boolean, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("not_before", BigInteger, nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_expires", BigInteger),
    # When the job was last handed to the executor (a broker may lose it, or
    # be down at submit time: the scheduler hands it over again).
    Column("dispatched_at", BigInteger),
    Column("business_status", String(256)),
    Column("reason", String(1024)),
    # Whether the results of the job are withdrawn: the SEG of a job that
    # ended without results taken back, or the FHIR results of a completed
    # one marked entered-in-error (`server.jobs.study_changes`).
    Column("results_withdrawn", Boolean, nullable=False, server_default=false()),
    Column("created_at", BigInteger, nullable=False),
    Column("started_at", BigInteger),
    Column("ended_at", BigInteger),
    Column("updated_at", BigInteger, nullable=False),
    # JSON: what the client's Task said beyond the job (`fhir_mappings.task.client_elements`).
    Column("client_elements_json", LargeBinary),
    # Of an automatic job: a digest of what its series held (`server.jobs.series.series_content`).
    Column("series_content", String(64)),
    # The study's patient changed since the job's SEG was written (`server.jobs.seg_patients`).
    Column("seg_patient_stale", Boolean, nullable=False, server_default=false()),
    # The job's results were withdrawn while its study stays: its SEG series is to go (`server.jobs.withdrawal`).
    Column("seg_removal_due", Boolean, nullable=False, server_default=false()),
)
Index("ix_inference_jobs_queue", inference_jobs.c.status, inference_jobs.c.not_before)
Index("ix_inference_jobs_study", inference_jobs.c.study_instance_uid)
# An automatic run happens once per model and content of a series: the
# server's own SEG series changes the study again, and must not start the job
# over; new or changed instances in the series must.
Index(
    "ix_inference_jobs_automatic",
    inference_jobs.c.model_id,
    inference_jobs.c.series_instance_uid,
    inference_jobs.c.series_content,
    unique=True,
    sqlite_where=inference_jobs.c.automatic,
    postgresql_where=inference_jobs.c.automatic,
)

# Every job is a UPS workitem too (`server.dicomweb.workitems`): its UID is
# the requester's (UPS-RS create) or derived from the Task id
# (`dicom.workitems.derived_workitem_uid`).
workitems = Table(
    "workitems",
    metadata,
    Column("workitem_uid", String(64), primary_key=True),
    Column("task_id", String(64), ForeignKey("inference_jobs.task_id"), nullable=False, unique=True),
    # YYYYMMDDHHMMSS.FFFFFF in UTC, for range matching (`dicom.matching.datetime_bounds`).
    Column("scheduled_start", String(21), nullable=False, index=True),
    Column("priority", String(8), nullable=False),
    # JSON: the requester's data set, as sent; NULL for a job ordered otherwise.
    Column("dataset_json", LargeBinary),
)

# UPS Watch (`server.dicomweb.workitem_subscriptions`, PS3.4 CC.2.3): the
# subscribers (an AE title, of the user or client that subscribed it) that
# receive the event reports of a workitem. Keyed by the job: a workitem
# created over UPS-RS takes its UID after its job row is written.
workitem_subscriptions = Table(
    "workitem_subscriptions",
    metadata,
    Column("owner", String(64), primary_key=True),
    Column("ae_title", String(16), primary_key=True),
    Column("task_id", String(64), ForeignKey("workitems.task_id"), primary_key=True),
)
Index("ix_workitem_subscriptions_task_id", workitem_subscriptions.c.task_id)
# Subscribers to the worklist: each is subscribed to every workitem created from now on.
worklist_subscriptions = Table(
    "worklist_subscriptions",
    metadata,
    Column("owner", String(64), primary_key=True),
    Column("ae_title", String(16), primary_key=True),
)
# Event reports not yet sent to their subscriber, written in the transaction
# of the change they report; a WebSocket sends them in id order and deletes them.
workitem_events = Table(
    "workitem_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("owner", String(64), nullable=False),
    Column("ae_title", String(16), nullable=False),
    Column("task_id", String(64), ForeignKey("workitems.task_id"), nullable=False),
    Column("created_at", BigInteger, nullable=False, index=True),
    # JSON: the report without its addressing (`dicom.workitem_events.addressed`).
    Column("report_json", LargeBinary, nullable=False),
)
Index("ix_workitem_events_subscriber_id", workitem_events.c.owner, workitem_events.c.ae_title, workitem_events.c.id)

# FHIR Subscriptions (`server.fhir.subscriptions`): what the server keeps of
# each beside the resource: the type its criteria watch, whether it is active
# and until when, and who wrote it last, with the scopes it wrote with, whose
# rights its notifications are sent under.
fhir_subscriptions = Table(
    "fhir_subscriptions",
    metadata,
    Column("subscription_id", String(64), primary_key=True),
    Column("criteria_type", String(64), nullable=False),
    Column("active", Boolean, nullable=False),
    Column("end_at", BigInteger),  # microseconds since the epoch; none: no end
    Column("owner", String(64), nullable=False),
    Column("owner_is_client", Boolean, nullable=False),
    Column("scopes", String(2048), nullable=False),
)
Index("ix_fhir_subscriptions_criteria_type", fhir_subscriptions.c.criteria_type, fhir_subscriptions.c.active)
# The outbox: a notification to send, one row per active Subscription and
# resource version written, in the transaction that wrote the version. A
# dispatcher claims due rows (pushing `not_before` past its lease), deletes
# each once sent, or sets it due again later.
fhir_subscription_notifications = Table(
    "fhir_subscription_notifications",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("subscription_id", String(64), ForeignKey("fhir_subscriptions.subscription_id"), nullable=False,
           index=True),
    Column("resource_type", String(64), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("not_before", BigInteger, nullable=False, index=True),
    Column("created_at", BigInteger, nullable=False),
)

# Studies changed by STOW since their last look by the trigger: a study is
# considered for automatic jobs once it has been quiet for a while.
study_activity = Table(
    "study_activity",
    metadata,
    Column("study_instance_uid", String(64), primary_key=True),
    Column("changed_at", BigInteger, nullable=False),
)

# How many current resources of a type were last updated in each second:
# kept by the store in every write transaction, so that the total of a
# `_lastUpdated` search sums a few buckets and counts only the matches in
# the two partial buckets at its ends, instead of counting every match.
fhir_update_counts = Table(
    "fhir_update_counts",
    metadata,
    Column("resource_type", String(64), primary_key=True),
    Column("bucket", BigInteger, primary_key=True),  # start of the second, microseconds since the epoch
    Column("live", Integer, nullable=False),
)


# --- Audit trail -------------------------------------------------------------
# The hash chain: each event's hash is SHA-256 over its predecessor's hash and
# the RFC 8785 canonical JSON of the event (kept here as those exact bytes).
audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("previous_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("event_json", LargeBinary, nullable=False),
)
# One row: the chain's head. Appenders lock it, so sequence numbers never fork
# or repeat, on either database.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)
# How far the chain has been written out as FHIR AuditEvents (for search): the
# chain commits with the action; its searchable copy follows a moment later.
audit_projection = Table(
    "audit_projection",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
)
# Signed statements of the head at a moment: cutting events off the end of the
# chain then shows, as a checkpoint beyond the end.
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("signature", String(128), nullable=False),
)


# --- Identities ----------------------------------------------------------------
# People, with a role and an Argon2id password hash (rehashed at login when
# the parameters change).
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", String(256), nullable=False),
    Column("disabled", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)
# Systems (an EHR, a PACS), with a client id, a hashed secret or public keys
# (a JWK Set, for SMART Backend Services) or both, and the SMART scopes they
# may ask for.
clients = Table(
    "clients",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("client_id", String(64), nullable=False, unique=True),
    Column("name", String(64), nullable=False),
    Column("secret_hash", String(256)),
    Column("scopes", String(2048), nullable=False),
    Column("disabled", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("jwks_json", Text),
    # SMART App Launch: the redirect URIs of an app that logs a user in (one
    # per line, each compared exactly), and whether it is public (no secret,
    # no keys: PKCE is all that binds its code to it).
    Column("redirect_uris", Text),
    Column("public", Boolean, nullable=False, server_default=false()),
)
# The `jti` of each client assertion accepted, until it expires: an assertion
# seen once is refused after (RFC 7523 3, SMART Backend Services).
client_assertions = Table(
    "client_assertions",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("jti", String(256), primary_key=True),
    Column("expires_at", BigInteger, nullable=False, index=True),
)


# --- SMART App Launch (`server.auth.launch`) ------------------------------------
# Every secret here is kept as its SHA-256 only: each is random, 256 bits, so
# its hash is as good as a key and a stolen table gives nothing to send.
# An authorization asked for at /auth/authorize, between its login page and
# the login: the page's form (and a cookie) carries the key.
authorization_requests = Table(
    "authorization_requests",
    metadata,
    Column("key_hash", String(64), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("scope", Text, nullable=False),
    Column("state", Text),
    Column("code_challenge", String(128), nullable=False),
    Column("expires_at", BigInteger, nullable=False, index=True),
    Column("user_name", String(64)),  # who logged in, while the user picks the launch's patient
    Column("patient", String(64)),  # an EHR launch's patient, known before the login
)
# EHR launch contexts: an EHR (or an admin) names the patient open in it and
# gets an opaque `launch` value for the app it launches, which /auth/authorize
# resolves; kept as its SHA-256 only, for minutes.
launch_contexts = Table(
    "launch_contexts",
    metadata,
    Column("launch_hash", String(64), primary_key=True),
    Column("patient", String(64), nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("expires_at", BigInteger, nullable=False, index=True),
    Column("client_id", String(64)),  # the one app that may use it; None: any
)
# Authorization codes, bound to what they were issued for; a used one is kept
# (until a day past its expiry) so that using it again is seen, and the
# refresh tokens issued from it (its family) revoked.
authorization_codes = Table(
    "authorization_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("code_challenge", String(128), nullable=False),
    Column("user_name", String(64), nullable=False),
    Column("scope", Text, nullable=False),
    Column("expires_at", BigInteger, nullable=False, index=True),
    Column("used", Boolean, nullable=False),
    Column("patient", String(64)),  # the Patient id of the launch context, if one was picked
)
# Refresh tokens: each is used once, then replaced by the next of its family
# (the code that started it); a used one sent again ends the whole family.
refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("family", String(64), nullable=False, index=True),
    Column("client_id", String(64), nullable=False),
    Column("user_name", String(64), nullable=False),
    Column("scope", Text, nullable=False),
    Column("expires_at", BigInteger, nullable=False, index=True),
    Column("used", Boolean, nullable=False),
    Column("patient", String(64)),  # the Patient id of the launch context, if one was picked
)


# --- FHIR Bulk Data export (`server.fhir.bulk_export`) ------------------------
# One row per `$export` kick-off: who asked (with the scopes it asked with, so
# that the worker reads only what the caller may), what it asked for, the
# instant it stands for (transactionTime), and its state; its files lie under
# `<data dir>/exports/<export_id>/`, and go with the row.
fhir_exports = Table(
    "fhir_exports",
    metadata,
    Column("export_id", String(36), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("owner_is_client", Boolean, nullable=False),
    Column("owner_role", String(16)),
    Column("scopes", String(2048), nullable=False),
    Column("level", String(16), nullable=False),
    Column("types", String(2048), nullable=False),  # comma-separated, as resolved at kick-off
    Column("since", BigInteger),  # microseconds; none: from the beginning
    Column("patients", LargeBinary),  # JSON list of Patient ids; none: every patient
    Column("group_id", String(64)),  # a Group-level export's Group, whose members `patients` lists
    Column("patient_context", String(64)),  # the starter's SMART patient context, whose rule its _typeFilters keep
    Column("type_filters", LargeBinary),  # JSON list of `_typeFilter` queries; none: no filter
    Column("request_url", Text, nullable=False),  # as long as a URL may be: _typeFilter queries make them long
    Column("transaction_time", BigInteger, nullable=False),  # microseconds
    Column("status", String(16), nullable=False),  # queued, running, complete, failed
    Column("progress", String(256)),
    Column("heartbeat", BigInteger),  # microseconds: when the worker running it last said so
    Column("outputs", LargeBinary),  # JSON list of {type, file, count} once complete
    Column("failure", String(1024)),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)
Index("ix_fhir_exports_owner", fhir_exports.c.owner, fhir_exports.c.owner_is_client, fhir_exports.c.status)
Index("ix_fhir_exports_status", fhir_exports.c.status)
Index("ix_fhir_exports_expires_at", fhir_exports.c.expires_at)
# The remote DICOM applications that may open a DIMSE association
# (server/dimse/peers.py): DIMSE carries no credentials, so a peer is known by
# its AE title and the address it calls from, and acts with a role's rights.
dicom_peers = Table(
    "dicom_peers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("ae_title", String(16), nullable=False, unique=True),  # AE: 16 characters (PS3.5 Table 6.2-1)
    Column("host", String(255), nullable=False),
    Column("role", String(32), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)
