"""The FHIR R4 route table (FHIR R4 http.html): every URL under /fhir, in one place.

Routes parse the request, call an interaction, and shape the answer
(negotiated format, ETag, Last-Modified, Location); the work lives in the
interaction modules.
"""

from collections.abc import Callable, Iterable
from dataclasses import replace
from email.utils import format_datetime, parsedate_to_datetime
from functools import lru_cache, partial
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.responses import Response

from fhir_mappings.capability import capability_statement
from fhir_mappings.date_ranges import from_micros, to_micros
from fhir_mappings.errors import Forbidden, InvalidRequest, UnsupportedMediaType
from fhir_mappings.operation_parameters import parameter_pairs
from fhir_mappings.patches import Patch, fhirpath_patch_of, json_patch_of
from fhir_mappings.patient_compartment import patients_of_json
from fhir_mappings.resources import require_id, resource_json, validated
from fhir_mappings.search_query import SearchRequest, read_subsetting
from fhir_mappings.subsetting import subset_json
from server.audit.middleware import note_patients, note_transaction
from server.auth.access import (
    BUNDLE,
    Permission,
    Principal,
    fhir_permission,
    require_search_rights,
)
from server.db import retried_on_conflict
from server.errors import fhir_status_for
from server.fhir import bundles, history, interactions
from server.fhir.conditional import (
    create_if_none_exist,
    delete_where,
    patch_where,
    update_where,
)
from server.fhir.everything import everything
from server.fhir.negotiation import (
    fhir_response,
    form_pairs,
    read_body,
    read_resource_body,
    require_patch_body,
    require_resource_body,
    response_format,
)
from server.fhir.own_references import (
    with_relative_references,
)
from server.fhir.preconditions import Preconditions, parse_preconditions
from server.fhir.search import render_searchset
from server.fhir.service import FhirService
from server.fhir.store import StoredVersion
from server.fhir.validation import validate, validation_request
from server.jobs.tasks import is_inference_order
from server.public_url import public_root
from server.services import services


class _InstanceId(Convertor[str]):
    """A resource id in a URL: any segment but one that starts with `$`,
    which names an operation (`Task/$validate`). So an operation's URL asked
    with a method it does not take is a 405 that names the ones it does (as
    every URL's is, server/methods.py), not the read or write of an id
    `$validate`, which `require_id` refused with a 400."""

    regex = r"[^/$][^/]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


# Registered before the routes below are made, which compile their paths with it.
register_url_convertor("instance_id", _InstanceId())
router = APIRouter(tags=["FHIR R4"])
SOFTWARE_VERSION = "0.1.0"


def _fhir(request: Request) -> FhirService:
    return services(request).fhir


def fhir_base(request: Request) -> str:
    return f"{public_root(request)}/fhir"


def _preference(request: Request, name: str) -> str | None:
    """A `Prefer` header's value for `name` (RFC 7240): `handling`, `return`."""
    for value in request.headers.getlist("prefer"):
        for part in value.split(","):
            key, _, setting = part.partition(";")[0].strip().partition("=")
            if key.strip().lower() == name:
                return setting.strip().strip('"').lower()
    return None


def _strict(request: Request) -> bool:
    return _preference(request, "handling") == "strict"


def _version_headers(version: StoredVersion) -> dict[str, str]:
    return {
        "ETag": version.etag,
        "Last-Modified": format_datetime(from_micros(version.last_updated).replace(microsecond=0), usegmt=True),
    }


def _not_modified(request: Request, version: StoredVersion) -> bool:
    return interactions.not_modified(
        version, request.headers.get("if-none-match"), _http_date(request.headers.get("if-modified-since"))
    )


def _http_date(header: str | None) -> int | None:
    """An HTTP date as microseconds; None for none, or for one that is not a date with a zone (then ignored)."""
    if header is None:
        return None
    try:
        moment = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return to_micros(moment) if moment.tzinfo is not None else None


def _version_response(
    request: Request, version: StoredVersion, status: int = 200, location: bool = False, written: bool = False
) -> Response:
    """`written`: by this request, whose record the store told the patients as it wrote."""
    if request.method == "GET":  # a read: nothing is disclosed when its If-Match fails
        interactions.require_read_match(version, request.headers.get("if-match"))
    if version.body is not None and not written:  # the patient whose data a read discloses, for the audit record
        note_patients(patients_of_json(version.body))
    fmt = response_format(request)
    headers = _version_headers(version)
    if location:
        headers["Location"] = (
            f"{fhir_base(request)}/{version.resource_type}/{version.resource_id}/_history/{version.version_id}"
        )
    if request.method == "GET" and _not_modified(request, version):
        return Response(status_code=304, headers=headers)
    assert version.body is not None
    if request.method == "GET":
        return fhir_response(subset_json(version.body, *read_subsetting(_search_pairs(request))), fmt, status, headers)
    # What a write answers (R4 http.html#ops): the resource by default, or nothing, or an OperationOutcome.
    returned = _preference(request, "return")
    if returned == "minimal":
        return Response(status_code=status, headers=headers)
    if returned == "operationoutcome":
        return fhir_response(interactions.written_outcome(version), fmt, status, headers)
    return fhir_response(version.body, fmt, status, headers, written=True)


def _search_pairs(request: Request) -> list[tuple[str, str]]:
    return form_pairs(request.scope["query_string"])


def _link_parameters(request: Request) -> list[tuple[str, str]]:
    """How the client asked for a page (`_format`, `_pretty`): not part of a
    search or history, and so not in a paging cursor, but kept in the links."""
    return [(name, value) for name, value in request.query_params.multi_items() if name in ("_format", "_pretty")]


# --- whole system --------------------------------------------------------------
def _search_authorizer(request: Request) -> Callable[[SearchRequest], None]:
    principal: Principal = request.state.principal

    # The searched type too: a transaction's conditional references search without a route of their own.
    return partial(require_search_rights, principal)


def _entry_authorizer(request: Request) -> Callable[[str, str, Any], None]:
    principal: Principal = request.state.principal

    def authorize(method: str, path: str, resource: Any) -> None:
        parts = [part for part in path.split("/") if part]
        if method in ("GET", "HEAD") and parts == ["metadata"]:
            return  # open to all, as `GET /fhir/metadata` is
        permission = fhir_permission(method, parts)
        # None: nobody's scopes decide (a write of a type no one writes, which the entry answers with 405).
        if permission is BUNDLE or (permission is not None and not principal.may(permission)):
            raise Forbidden(f"{principal.name} may not {method} {path} (its scopes do not allow it)")
        if len(parts) == 1:
            _require_creating_for_conditional_updates(principal, method, parts[0])
        if parts:
            _require_reading_for_patches(principal, method, parts[0])
        _require_study_reading_for_orders(principal, resource)

    return authorize


def _require_study_reading_for_orders(principal: Principal, resource: Any) -> None:
    """The answer to an inference order tells whether its study exists and
    whose it is (Task.for), so ordering needs the right to read the study.
    Checked before the study is looked up, so a refusal tells nothing."""
    if isinstance(resource, dict) and resource.get("resourceType") == "Task" and is_inference_order(resource):
        if not principal.reads_every("ImagingStudy"):
            raise Forbidden(f"{principal.name} may not order inference on a study it may not read (ImagingStudy.r)")


def _creating_allowed(request: Request) -> Callable[[str], bool]:
    principal: Principal = request.state.principal
    return lambda resource_type: principal.may(Permission(resource_type, "c"))


def _require_creating_for_conditional_updates(principal: Principal, method: str, resource_type: str) -> None:
    """A conditional update (`PUT [type]?...`) creates what it does not find."""
    if method == "PUT" and not principal.may(Permission(resource_type, "c")):
        raise Forbidden(f"{principal.name} may not create {resource_type}, which a conditional update may do")


def _require_reading_for_patches(principal: Principal, method: str, resource_type: str) -> None:
    """A patch reads what it patches: its answer is the whole resource as
    patched, and its `test` operations (and which paths it finds) tell what
    is there. With the right to update alone, an empty patch read anything."""
    if method == "PATCH" and not principal.may(Permission(resource_type, "r")):
        raise Forbidden(f"{principal.name} may not read {resource_type}, which a patch does ({resource_type}.r)")


@router.get("/metadata")
async def metadata(request: Request) -> Response:
    fmt = response_format(request)
    return fhir_response(_capabilities(request)(), fmt)


def _capabilities(request: Request) -> Callable[[], bytes]:
    """The CapabilityStatement of this request's base, as `GET metadata`
    answers it, alone or as a Bundle entry."""
    fhir, base, auth_url = _fhir(request), fhir_base(request), f"{public_root(request)}/auth"
    return lambda: _capability_json(base, fhir.writable_types, fhir.store.history_types, auth_url)


@lru_cache(maxsize=32)
def _capability_json(base: str, writable: frozenset[str], history_types: frozenset[str], auth_url: str) -> bytes:
    """Built and validated once per base URL: it only changes with the code."""
    return resource_json(capability_statement(base, SOFTWARE_VERSION, writable, history_types, auth_url))


@router.post("")
@router.post("/")
async def batch_or_transaction(request: Request) -> Response:
    require_resource_body(request)
    fmt = response_format(request)
    body = await read_resource_body(request, services(request).settings.fhir_max_body_bytes)
    if isinstance(body, dict) and body.get("type") == "transaction":
        note_transaction()
    await _audit_copies_current(request, _entry_urls(body))
    result = await run_in_threadpool(
        bundles.process_bundle, _fhir(request), body, fhir_base(request), fhir_status_for, _entry_authorizer(request),
        _search_authorizer(request), _creating_allowed(request), _capabilities(request), _preference(request, "return"),
    )
    return fhir_response(result, fmt, written=True)


@router.get("/_history")
async def system_history(request: Request) -> Response:
    fmt = response_format(request)
    principal: Principal = request.state.principal
    body = await run_in_threadpool(
        history.system_history, _fhir(request), lambda resource_type: principal.may(Permission(resource_type, "s")),
        _search_pairs(request), fhir_base(request), _link_parameters(request),
    )
    return fhir_response(body, fmt)


# --- type level ----------------------------------------------------------------
@router.get("/{resource_type}")
async def search(request: Request, resource_type: str) -> Response:
    return await _run_search(request, [resource_type], _search_pairs(request))


@router.post("/{resource_type}/_search")
async def search_by_post(request: Request, resource_type: str) -> Response:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # A body of another type is one the server does not take (415); no body at all leaves the parameters to the URL.
    if content_type not in ("application/x-www-form-urlencoded", ""):
        raise UnsupportedMediaType(
            f"POST _search takes application/x-www-form-urlencoded parameters, not {content_type[:100]}"
        )
    form = await read_body(request, services(request).settings.fhir_max_body_bytes)
    if form and not content_type:
        raise UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded parameters: say so")
    return await _run_search(request, [resource_type], _search_pairs(request) + form_pairs(form))


async def _audit_copies_current(request: Request, asked: Iterable[str] = ()) -> None:
    """AuditEvents are copies of the audit chain, written a moment after it:
    brought up to date before whatever may show them (a read or vread, a
    search and what it includes, `$everything`, a Bundle's entries: `asked`,
    their URLs) runs for a client that may read them, so that it sees every
    event recorded before it. Projecting is a write, which other requests
    do not wait for."""
    principal: Principal = request.state.principal
    if not (principal.may(Permission("AuditEvent", "r")) or principal.may(Permission("AuditEvent", "s"))):
        return
    if any(_may_show_audit_events(unquote(url)) for url in (str(request.url), *asked)):
        await run_in_threadpool(services(request).audit.chain.catch_up)


def _entry_urls(bundle: Any) -> list[str]:
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    if not isinstance(entries, list):
        return []
    requests = [entry.get("request") for entry in entries if isinstance(entry, dict)]
    return [request["url"] for request in requests if isinstance(request, dict) and isinstance(request.get("url"), str)]


def _may_show_audit_events(url: str) -> bool:
    return "AuditEvent" in url or "$everything" in url or "include=*" in url or "include:iterate=*" in url


async def _run_search(request: Request, path: list[str], pairs: list[tuple[str, str]]) -> Response:
    """`path`: `[type]`, or `[Patient, id, type]` for a search within a patient's compartment."""
    fmt = response_format(request)
    await _audit_copies_current(request, [f"{name}={value}" for name, value in pairs])  # a POST's form too
    base = fhir_base(request)
    page = await run_in_threadpool(
        interactions.search, _fhir(request), path, pairs, base, _strict(request), _search_authorizer(request)
    )
    page = page.with_link_parameters(_link_parameters(request))
    return fhir_response(render_searchset(page, base), fmt)


@router.get("/{resource_type}/_history")
async def type_history(request: Request, resource_type: str) -> Response:
    fmt = response_format(request)
    body = await run_in_threadpool(
        history.history, _fhir(request), resource_type, None, _search_pairs(request), fhir_base(request),
        _link_parameters(request),
    )
    return fhir_response(body, fmt)


@router.post("/{resource_type}")
async def create(request: Request, resource_type: str) -> Response:
    fhir = _fhir(request)
    fhir.require_writable(resource_type)
    require_resource_body(request)
    response_format(request)  # a 406 must come before the write, not after it
    body = await read_resource_body(request, services(request).settings.fhir_max_body_bytes)
    body = with_relative_references(body, fhir_base(request))
    _require_study_reading_for_orders(request.state.principal, body)
    condition = request.headers.get("if-none-exist")
    if condition is None:
        version = await run_in_threadpool(retried_on_conflict, partial(interactions.create, fhir, resource_type, body))
        return _version_response(request, version, 201, location=True, written=True)
    version, created = await run_in_threadpool(
        retried_on_conflict,
        partial(create_if_none_exist, fhir, resource_type, body, condition, fhir_base(request),
                _search_authorizer(request)),
    )
    return _version_response(request, version, 201 if created else 200, location=created, written=created)


# --- instance level ------------------------------------------------------------
@router.get("/AuditEvent/$verify")
async def verify_audit_trail(request: Request) -> Response:
    """Recompute the audit hash chain and its checkpoints (a Parameters answer;
    `intact` false names the first broken sequence number). It tells of every
    event, so it needs the right to read every one, more than a patient context's."""
    principal: Principal = request.state.principal
    if not principal.reads_every("AuditEvent"):
        raise Forbidden(f"{principal.name} may not verify the whole audit trail: its AuditEvent.r reaches the events "
                        "of one patient alone")
    verification = await run_in_threadpool(services(request).audit.chain.verify)
    parameters = [
        {"name": "intact", "valueBoolean": verification.intact},
        {"name": "events", "valueInteger": verification.events},
        {"name": "checkpoints", "valueInteger": verification.checkpoints},
    ]
    if verification.first_broken is not None:
        parameters.append({"name": "firstBrokenSequence", "valueInteger": verification.first_broken})
        parameters.append({"name": "problem", "valueString": verification.problem})
    answer = validated({"resourceType": "Parameters", "parameter": parameters})
    return fhir_response(answer, response_format(request))


@router.get("/Patient/{patient_id}/$everything")
async def patient_everything(request: Request, patient_id: str) -> Response:
    """The patient and its compartment (R4 OperationDefinition Patient-everything)."""
    return await _everything(request, patient_id, _search_pairs(request))


@router.post("/Patient/{patient_id}/$everything")
async def patient_everything_by_post(request: Request, patient_id: str) -> Response:
    """The same, its input in a Parameters resource (R4 operations.html#request)."""
    body = await read_resource_body(request, services(request).settings.fhir_max_body_bytes)
    return await _everything(request, patient_id, _search_pairs(request) + parameter_pairs(body, "$everything"))


async def _everything(request: Request, patient_id: str, pairs: list[tuple[str, str]]) -> Response:
    fmt = response_format(request)
    principal: Principal = request.state.principal

    def may_search(resource_type: str) -> bool:
        return principal.may(Permission(resource_type, "s"))

    await _audit_copies_current(request)
    note_patients([require_id(patient_id)])
    base = fhir_base(request)
    page = await run_in_threadpool(
        everything, _fhir(request), patient_id, pairs, base, _strict(request), may_search
    )
    return fhir_response(render_searchset(page.with_link_parameters(_link_parameters(request)), base), fmt)


@router.get("/{resource_type}/{resource_id:instance_id}")
async def read(request: Request, resource_type: str, resource_id: str) -> Response:
    await _audit_copies_current(request)
    version = await run_in_threadpool(interactions.read, _fhir(request), resource_type, resource_id)
    return _version_response(request, version)


@router.put("/{resource_type}/{resource_id:instance_id}")
async def update(request: Request, resource_type: str, resource_id: str) -> Response:
    body, preconditions = await _update_request(request, resource_type)
    may_create = request.state.principal.may(Permission(resource_type, "c"))
    version, created = await run_in_threadpool(retried_on_conflict, partial(
        interactions.update, _fhir(request), resource_type, resource_id, body, preconditions, may_create=may_create
    ))
    return _version_response(request, version, 201 if created else 200, location=created, written=True)


@router.put("/{resource_type}")
async def conditional_update(request: Request, resource_type: str) -> Response:
    """`PUT [type]?[query]` (http.html#cond-update): it may create, so it needs create as well as update."""
    query = _condition(request, resource_type)
    _require_creating_for_conditional_updates(request.state.principal, "PUT", resource_type)
    body, preconditions = await _update_request(request, resource_type)
    version, created = await run_in_threadpool(
        retried_on_conflict,
        partial(update_where, _fhir(request), resource_type, body, query, fhir_base(request), preconditions,
                _search_authorizer(request)),
    )
    return _version_response(request, version, 201 if created else 200, location=created, written=True)


async def _update_request(request: Request, resource_type: str) -> tuple[Any, Preconditions | None]:
    """The body and preconditions of an update, checked before anything is written."""
    _fhir(request).require_writable(resource_type)
    require_resource_body(request)
    response_format(request)  # a 406 must come before the write, not after it
    body = await read_resource_body(request, services(request).settings.fhir_max_body_bytes)
    body = with_relative_references(body, fhir_base(request))
    _require_study_reading_for_orders(request.state.principal, body)
    return body, _preconditions(request)


@router.patch("/{resource_type}/{resource_id:instance_id}")
async def patch(request: Request, resource_type: str, resource_id: str) -> Response:
    """R4 http.html#patch: a JSON Patch or a FHIRPath Patch, whose result is
    written as an update; it needs the right to update."""
    patch, preconditions = await _patch_request(request, resource_type)
    version = await run_in_threadpool(retried_on_conflict, partial(
        interactions.patch, _fhir(request), resource_type, resource_id, patch, preconditions, fhir_base(request),
        check=partial(_require_study_reading_for_orders, request.state.principal),
    ))
    return _version_response(request, version, written=True)


@router.patch("/{resource_type}")
async def conditional_patch(request: Request, resource_type: str) -> Response:
    """`PATCH [type]?[query]`: the one match patched; none 404, several 412. It never creates."""
    query = _condition(request, resource_type)
    patch, preconditions = await _patch_request(request, resource_type)
    version = await run_in_threadpool(retried_on_conflict, partial(
        patch_where, _fhir(request), resource_type, patch, query, fhir_base(request), preconditions,
        _search_authorizer(request), check=partial(_require_study_reading_for_orders, request.state.principal),
    ))
    return _version_response(request, version, written=True)


async def _patch_request(request: Request, resource_type: str) -> tuple[Patch, Preconditions | None]:
    """The patch, by its format (the body's Content-Type), and the
    preconditions, checked before anything is read or written."""
    _fhir(request).require_writable(resource_type)
    _require_reading_for_patches(request.state.principal, "PATCH", resource_type)
    fhirpath = require_patch_body(request)
    response_format(request)  # a 406 must come before the write, not after it
    body = await read_resource_body(request, services(request).settings.fhir_max_body_bytes)
    return (fhirpath_patch_of if fhirpath else json_patch_of)(body), _preconditions(request)


@router.delete("/{resource_type}/{resource_id:instance_id}")
async def delete(request: Request, resource_type: str, resource_id: str) -> Response:
    preconditions = _preconditions(request)
    version = await run_in_threadpool(
        retried_on_conflict, partial(interactions.delete, _fhir(request), resource_type, resource_id, preconditions)
    )
    return _deleted(version)


@router.delete("/{resource_type}")
async def conditional_delete(request: Request, resource_type: str) -> Response:
    """`DELETE [type]?[query]` (http.html#3.1.0.7.1): the one match deleted, 204 also for none."""
    query = _condition(request, resource_type)
    preconditions = _preconditions(request)
    version = await run_in_threadpool(
        retried_on_conflict,
        partial(delete_where, _fhir(request), resource_type, query, fhir_base(request), preconditions,
                _search_authorizer(request)),
    )
    return _deleted(version)


def _preconditions(request: Request) -> Preconditions | None:
    headers = request.headers
    return parse_preconditions(
        headers.get("if-match"), headers.get("if-none-match"), _http_date(headers.get("if-unmodified-since"))
    )


def _deleted(version: StoredVersion | None) -> Response:
    """204, with the deletion's version as ETag when there was something to delete."""
    return Response(status_code=204, headers={"ETag": version.etag} if version is not None else None)


def _condition(request: Request, resource_type: str) -> str:
    """The query of a conditional update or delete, which may not be empty:
    a type-wide PUT or DELETE is no interaction of R4."""
    _fhir(request).require_writable(resource_type)
    form_pairs(request.scope["query_string"])  # UTF-8, or a 400
    query = request.scope["query_string"].decode()
    if not query:
        raise InvalidRequest(
            f"{request.method} {resource_type} needs a condition ({resource_type}?identifier=...) or an id in the URL"
        )
    return query


@router.get("/{resource_type}/{resource_id}/_history")
async def instance_history(request: Request, resource_type: str, resource_id: str) -> Response:
    fmt = response_format(request)
    body = await run_in_threadpool(
        history.history, _fhir(request), resource_type, resource_id, _search_pairs(request), fhir_base(request),
        _link_parameters(request),
    )
    return fhir_response(body, fmt)


@router.get("/{resource_type}/{resource_id}/_history/{version_id}")
async def vread(request: Request, resource_type: str, resource_id: str, version_id: str) -> Response:
    await _audit_copies_current(request)
    version = await run_in_threadpool(interactions.vread, _fhir(request), resource_type, resource_id, version_id)
    return _version_response(request, version)


@router.post("/{resource_type}/$validate")
async def validate_content(request: Request, resource_type: str) -> Response:
    """In general, or as a create (R4 OperationDefinition Resource-validate)."""
    return await _validate(request, resource_type, None)


@router.post("/{resource_type}/{resource_id}/$validate")
async def validate_change(request: Request, resource_type: str, resource_id: str) -> Response:
    """In general, or as an update or delete of this resource."""
    return await _validate(request, resource_type, require_id(resource_id))


@router.get("/{resource_type}/{resource_id}/$validate")
async def validate_deletion(request: Request, resource_type: str, resource_id: str) -> Response:
    """`?mode=delete` or `?mode=profile`: what can be asked without content (operations.html#request)."""
    return await _validate(request, resource_type, require_id(resource_id), with_body=False)


async def _validate(request: Request, resource_type: str, resource_id: str | None, with_body: bool = True) -> Response:
    fhir = _fhir(request)
    fhir.require_type(resource_type)
    fmt = response_format(request)
    body = None
    if with_body:
        require_resource_body(request)
        body = await read_resource_body(request, services(request).settings.fhir_max_body_bytes)
    query = [(name, value) for name, value in _search_pairs(request) if name not in ("_format", "_pretty")]
    asked = validation_request(resource_type, resource_id, body, query)
    resource = with_relative_references(asked.resource, fhir_base(request))
    asked = replace(asked, resource=resource)
    principal: Principal = request.state.principal
    if asked.mode in ("create", "update"):
        _require_study_reading_for_orders(principal, resource)
    if asked.mode == "profile":  # a stored resource is read: an AuditEvent recorded a moment ago too
        await _audit_copies_current(request)
    outcome = await run_in_threadpool(
        validate, fhir, asked, _preconditions(request),
        lambda letter: principal.may(Permission(resource_type, letter)),
    )
    return fhir_response(outcome, fmt)


# After `_history` and `$validate`, which are no resource types.
@router.get("/Patient/{patient_id}/{resource_type}")
async def search_in_compartment(request: Request, patient_id: str, resource_type: str) -> Response:
    """`Patient/[id]/[type]` (R4 http.html#vsearch): a search of the type within the patient's compartment."""
    return await _run_search(request, ["Patient", patient_id, resource_type], _search_pairs(request))
