"""EHR launch (SMART App Launch 2.x, app-launch.html#launch-app-ehr-launch):
an EHR, or an admin, with a patient open asks `POST /auth/launch` for a
launch context of that patient (`patient=<Patient id>`, a form) and gets an
opaque `launch` value, which it hands to the app it launches; the app sends
it to /auth/authorize with the `launch` scope, and the token it gets names
that patient (`server.auth.authorize`). A context is used once: the
authorization that takes it deletes it, and an app that sends it again is
refused. Given `client_id`, the registered app the EHR launches, only that
app may use it: a launch value seen elsewhere (a log, a referrer, another
app in the same EHR) gives another app nothing.

Only an identity that may read the Patient opens a context for it (a token
that is itself held to one patient opens none), and the user who then logs
in to the app must be able to read it as well. A context lasts five
minutes; the value is kept as its SHA-256 only.
"""

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from fhir_mappings.errors import FhirError
from fhir_mappings.resources import require_id
from server.auth.access import Permission, Principal
from server.auth.launch import LAUNCH_CONTEXT_SECONDS
from server.auth.routes import FORM, is_form, oauth_error, read_form
from server.services import services

router = APIRouter()


@router.post("/auth/launch")
async def open_launch(request: Request) -> JSONResponse:
    if not is_form(request):
        return oauth_error(415, "invalid_request", f"a launch context is asked for with a {FORM} form")
    form = await read_form(request)
    if form is None:
        return oauth_error(413, "invalid_request", "the form is too large")
    patient = form.get("patient", "")
    try:
        require_id(patient)
    except FhirError:
        return oauth_error(400, "invalid_request", "patient (a Patient id) is required")
    principal: Principal = request.state.principal
    if principal.patient is not None or not principal.may(Permission("Patient", "r")):
        return oauth_error(403, "access_denied",
                           f"{principal.name} may not open a launch context: it needs Patient.r over every patient")
    fhir = services(request).fhir
    try:
        await run_in_threadpool(fhir.store.read, "Patient", patient)
    except FhirError:
        return oauth_error(404, "invalid_request", f"there is no Patient {patient!r} that {principal.name} may read")
    # Sent empty, it names no app: refused, not taken for "any app" (an EHR that meant to bind gets told).
    client_id = form.get("client_id")
    auth = services(request).auth
    if client_id is not None and (not client_id or "\x00" in client_id  # PostgreSQL's text holds no NUL: a 500
                                  or await run_in_threadpool(auth.identities.launch_client, client_id) is None):
        return oauth_error(400, "invalid_request", f"client_id {client_id[:64]!r} is no app registered here")
    launch = await run_in_threadpool(auth.launches.open_context, patient, principal.name, client_id)
    answer = {"launch": launch, "patient": patient, "expires_in": LAUNCH_CONTEXT_SECONDS}
    if client_id is not None:
        answer["client_id"] = client_id
    return JSONResponse(answer, status_code=201, headers={"Cache-Control": "no-store"})
