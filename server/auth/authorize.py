"""The authorization endpoint of SMART App Launch 2.x, standalone launch
(RFC 6749 4.1 with PKCE S256, RFC 7636): an app sends the user's browser to
`GET /auth/authorize`; the user logs in on the page it answers and allows
the scopes it lists; `POST /auth/authorize` sends the browser back to the
app's redirect URI with a code, which the app trades for tokens at
/auth/token (`authorization_code`). An app granted patient/ scopes (it
asked for `launch/patient`) gets its code once the user, logged in, has
picked the patient on a second page (`server.auth.patient_picker`), which
posts back the same way.

Until the client and its redirect URI are known to be registered together,
an error is shown to the user and never redirected (RFC 6749 4.1.2.1: an
open redirector otherwise); after, it goes back to the app as `error=` with
its `state`. The login form is bound to its pending authorization by a key
that travels in the form and in a cookie of this path alike (a page of
another site can send neither). The page needs no script and loads nothing.
"""

import hashlib
import html
import secrets
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fhir_mappings.errors import FhirError
from server.audit.middleware import note_refusal
from server.auth.access import Principal
from server.auth.identities import Identity, LaunchClient
from server.auth.launch import (
    EHR_LAUNCH,
    REQUEST_SECONDS,
    S256_CHALLENGE,
    Crowded,
    Pending,
    Spent,
    granted_scope,
    needs_patient,
)
from server.auth.limits import limited_address
from server.auth.patient_picker import (
    ChoicePage,
    NotPickable,
    patients_to_pick,
    require_pickable,
)
from server.auth.routes import is_form, login_wait, read_form
from server.errors import fhir_status_for
from server.public_url import public_root
from server.services import services

router = APIRouter()
PATH = "/auth/authorize"
_COOKIE = "medaiflow_authorize"
_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


@router.get(PATH)
async def authorize(request: Request) -> Response:
    query = request.query_params
    repeated = sorted({name for name, _ in query.multi_items() if len(query.getlist(name)) > 1})
    auth = services(request).auth
    client_id, redirect_uri = query.get("client_id", ""), query.get("redirect_uri", "")
    # No client id has a NUL, and PostgreSQL's text holds none (looking one up would be a 500).
    known = client_id and "\x00" not in client_id
    client = await run_in_threadpool(auth.identities.launch_client, client_id) if known else None
    if client is None or "client_id" in repeated:
        return _page(400, "Unknown app", "<p>This app is not registered here, or is disabled.</p>")
    if redirect_uri not in client.redirect_uris or "redirect_uri" in repeated:
        return _page(400, "Wrong redirect URI",
                     "<p>The address this app asked to be sent back to is not one registered for it.</p>")
    # From here on the app is known: it hears of what is wrong.
    state = query.get("state")
    if repeated:
        return _back(redirect_uri, state, "invalid_request", f"parameters given more than once: {', '.join(repeated)}")
    if any("\x00" in value for _, value in query.multi_items()):
        return _back(redirect_uri, None, "invalid_request", "a parameter holds a NUL character")
    if query.get("response_type") != "code":
        return _back(redirect_uri, state, "unsupported_response_type", "response_type must be code")
    if not state:
        return _back(redirect_uri, state, "invalid_request", "state is required (SMART App Launch)")
    if query.get("code_challenge_method") != "S256":
        return _back(redirect_uri, state, "invalid_request", "PKCE is required, with code_challenge_method S256")
    challenge = query.get("code_challenge", "")
    if not S256_CHALLENGE.fullmatch(challenge):
        # No verifier could match another: the user would log in for a code that no app can redeem.
        return _back(redirect_uri, state, "invalid_request",
                     "code_challenge must be an S256 challenge: a SHA-256 in unpadded base64url, 43 characters")
    fhir_base = f"{public_root(request)}/fhir"
    if query.get("aud", "").rstrip("/") != fhir_base:
        return _back(redirect_uri, state, "invalid_request", f"aud must be this server's FHIR base URL, {fhir_base}")
    scope = query.get("scope", "")
    launch = query.get("launch")
    if (launch is not None) != (EHR_LAUNCH in scope.split()):
        return _back(redirect_uri, state, "invalid_request",
                     "an EHR launch sends its launch parameter with the launch scope, each with the other")
    context = await run_in_threadpool(auth.launches.context, launch) if launch else None
    if launch is not None and context is None:
        return _back(redirect_uri, state, "invalid_request",
                     "the launch is unknown, has expired or was used already: launch again")
    if context is not None and not context.allows(client.client_id):
        # Not taken: the app it was opened for may still use it.
        note_refusal(request.scope, f"{client.client_id} sent a launch opened for another app")
        return _back(redirect_uri, state, "access_denied", "the launch was opened for another app")
    patient = context.patient if context is not None else None
    # Refused now only when no user could be granted any of it: the user's role narrows it further at login.
    if not granted_scope(scope, client.grant, client.grant):
        return _back(redirect_uri, state, "invalid_scope",
                     "none of the user/ or patient/ scopes asked for is registered for this app")
    # Each page is a row until its login: an address asks for a few; all together, no more than the table holds.
    address = limited_address(request.scope)
    if auth.authorize_rate.take(f"address:{address}") is not None:
        return _back(redirect_uri, state, "temporarily_unavailable",
                     "too many authorizations asked from this address; try again later")
    pending = Pending(client.client_id, redirect_uri, scope, state, challenge, patient=patient)
    try:
        key = await run_in_threadpool(auth.launches.ask, pending, launch)
    except Crowded:
        return _back(redirect_uri, state, "temporarily_unavailable",
                     "too many authorizations are waiting for a login; try again later")
    except Spent:
        return _back(redirect_uri, state, "invalid_request",
                     "the launch was used already, or has expired: launch again")
    response = _login_page(request, 200, client, scope, key)
    response.set_cookie(_cookie(key), key, max_age=REQUEST_SECONDS, path=_cookie_path(request),
                        secure=public_root(request).startswith("https:"), httponly=True, samesite="strict")
    return response


@router.post(PATH)
async def login(request: Request) -> Response:
    if not is_form(request):
        return _page(415, "Not a form", "<p>Log in with the form of the login page.</p>")
    form = await read_form(request)
    key = (form or {}).get("request", "")
    # The form and the cookie, both: a page elsewhere that posts here has neither this browser's cookie nor the key.
    # Compared as bytes: compare_digest refuses str that is not ASCII (a TypeError, a 500).
    cookie = request.cookies.get(_cookie(key), "")
    if form is None or not key or not secrets.compare_digest(key.encode(), cookie.encode()):
        return _stale()
    auth = services(request).auth
    pending = await run_in_threadpool(auth.launches.pending, key)
    client = await run_in_threadpool(auth.identities.launch_client, pending.client_id) if pending else None
    if pending is None or client is None or pending.redirect_uri not in client.redirect_uris:
        return _stale()
    if form.get("decision") == "deny":
        await run_in_threadpool(auth.launches.end, key)
        note_refusal(request.scope, f"the user did not let {client.client_id} in")
        return _back(pending.redirect_uri, pending.state, "access_denied", "the user did not allow it", 303)
    if pending.user_name is not None:
        return await _pick(request, form, key, pending, client)
    name, password = form.get("username", ""), form.get("password", "")
    if not name or not password or "\x00" in name:
        return _login_page(request, 400, client, pending.scope, key, "Give your user name and your password.")
    address = limited_address(request.scope)
    keys = (f"name:{name}", f"address:{address}")
    refusal = login_wait(request, auth, name, address, keys, app=client.client_id)
    if refusal is not None:
        return _login_page(request, 429, client, pending.scope, key, refusal[0].capitalize() + ".",
                           {"Retry-After": str(refusal[1])})
    identity = await run_in_threadpool(auth.identities.authenticate_user, name, password)
    if identity is None:
        return _login_page(request, 401, client, pending.scope, key, "The user name or the password is wrong.")
    auth.failed_logins.succeeded(*keys, afresh=keys[0])
    scope = granted_scope(pending.scope, client.grant, identity.grant)
    if not scope:
        await run_in_threadpool(auth.launches.end, key)
        note_refusal(request.scope, f"{identity.name} may use none of the scopes {client.client_id} asked for")
        return _back(pending.redirect_uri, pending.state, "invalid_scope",
                     f"{identity.name} may use none of the scopes asked for", 303)
    if needs_patient(scope) and pending.patient is not None:
        return await _launch_patient(request, key, pending, client, identity, scope)
    if needs_patient(scope):
        if not await run_in_threadpool(auth.launches.log_in, key, identity.name):
            return _stale()
        return await _picker(request, 200, client, key, _user(identity, client), {})
    return await _coded(request, key, pending, identity.name, scope, None)


async def _launch_patient(request: Request, key: str, pending: Pending, client: LaunchClient, identity: Identity,
                          scope: str) -> Response:
    """An EHR launch: its patient, which the user who logged in must be able to read, needs no picking."""
    patient = pending.patient or ""
    try:
        await run_in_threadpool(require_pickable, services(request).fhir, _user(identity, client), patient)
    except NotPickable as refusal:
        await run_in_threadpool(services(request).auth.launches.end, key)
        note_refusal(request.scope, f"{identity.name} launched {client.client_id}: {refusal}")
        return _back(pending.redirect_uri, pending.state, "access_denied", str(refusal), 303)
    return await _coded(request, key, pending, identity.name, scope, patient)


async def _pick(request: Request, form: dict[str, str], key: str, pending: Pending, client: LaunchClient) -> Response:
    """The picker's posts: a search (or its next page), or the patient picked, which ends in the code."""
    auth = services(request).auth
    identity = await run_in_threadpool(auth.identities.active_user, pending.user_name or "")
    scope = granted_scope(pending.scope, client.grant, identity.grant) if identity is not None else ""
    if identity is None or not needs_patient(scope):  # disabled, or its role changed, since the login
        await run_in_threadpool(auth.launches.end, key)
        return _back(pending.redirect_uri, pending.state, "access_denied", "the user may no longer pick a patient", 303)
    user = _user(identity, client)
    patient_id = form.get("patient")
    if patient_id is None:
        return await _picker(request, 200, client, key, user, form)
    try:
        await run_in_threadpool(require_pickable, services(request).fhir, user, patient_id)
    except NotPickable as refusal:
        note_refusal(request.scope, f"{identity.name} picked a patient for {client.client_id}: {refusal}")
        return await _picker(request, 403, client, key, user, form, str(refusal))
    return await _coded(request, key, pending, identity.name, scope, patient_id)


async def _coded(request: Request, key: str, pending: Pending, user_name: str, scope: str,
                 patient: str | None) -> Response:
    code = await run_in_threadpool(services(request).auth.launches.code, key, user_name, scope, patient)
    if code is None:
        return _stale()
    response = _redirect(pending.redirect_uri, {"code": code, "state": pending.state}, 303)
    response.delete_cookie(_cookie(key), path=_cookie_path(request))
    return response


def _user(identity: Identity, client: LaunchClient) -> Principal:
    """The user as the picker searches for it: with its role's scopes, through the app."""
    return Principal(identity.name, identity.role.value if identity.role else None, identity.grant, False,
                     app=client.client_id)


def _cookie(key: str) -> str:
    """The cookie of one pending authorization: one cookie for all, and a
    second asked in the same browser (another app, another tab) made the
    first one's form stale."""
    return f"{_COOKIE}_{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _cookie_path(request: Request) -> str:
    """The form's path as the browser sees it, behind a proxy's prefix too."""
    return urlsplit(public_root(request)).path + PATH


def _back(redirect_uri: str, state: str | None, error: str, description: str, status: int = 302) -> Response:
    return _redirect(redirect_uri, {"error": error, "error_description": description, "state": state}, status)


def _redirect(redirect_uri: str, parameters: dict[str, str | None], status: int) -> Response:
    query = urlencode({name: value for name, value in parameters.items() if value is not None})
    separator = "&" if "?" in redirect_uri else "?"
    return RedirectResponse(f"{redirect_uri}{separator}{query}", status_code=status, headers=_HEADERS)


def _stale() -> Response:
    return _page(400, "Login form expired",
                 "<p>This login form has expired, was used already, or was not sent from this browser. "
                 "Start again from the app.</p>")


def _login_page(request: Request, status: int, client: LaunchClient, scope: str, key: str, message: str = "",
                headers: dict[str, str] | None = None) -> Response:
    offered = [html.escape(word) for word in granted_scope(scope, client.grant, client.grant).split()]
    notice = f'<p class="error">{html.escape(message)}</p>' if message else ""
    body = (
        f"<p><b>{html.escape(client.name)}</b> asks to act for you here, with these permissions:</p>"
        f"<ul>{''.join(f'<li><code>{word}</code></li>' for word in offered)}</ul>"
        "<p>Only those your role has are given.</p>"
        f"{notice}"
        f'<form method="post" action="{html.escape(public_root(request) + PATH)}">'
        f'<input type="hidden" name="request" value="{html.escape(key)}">'
        '<p><label>User name <input name="username" autocomplete="username" required></label></p>'
        '<p><label>Password <input name="password" type="password" autocomplete="current-password"></label></p>'
        '<p><button name="decision" value="allow">Log in and allow</button> '
        '<button name="decision" value="deny" formnovalidate>Deny</button></p>'
        "</form>"
    )
    return _page(status, "Log in", body, headers)


async def _picker(request: Request, status: int, client: LaunchClient, key: str, user: Principal,
                  form: dict[str, str], message: str = "") -> Response:
    """The page where the user picks the patient the app will reach: a page
    of the Patients found by the name and identifier of `form`, if given."""
    name, identifier = form.get("name", "").strip(), form.get("identifier", "").strip()
    cursor = form.get("cursor", "") if form.get("decision") == "next" else ""
    try:
        found = await run_in_threadpool(patients_to_pick, services(request).fhir, user, name, identifier, cursor)
    except FhirError as error:
        status, message, found = fhir_status_for(error), error.diagnostics, ChoicePage([], None)
    notice = f'<p class="error">{html.escape(message)}</p>' if message else ""
    rows = "".join(
        f'<li><button name="patient" value="{html.escape(choice.patient_id)}">{html.escape(choice.name)}</button> '
        f"{html.escape(choice.birth_date)} <small>{html.escape(', '.join(choice.identifiers))}</small></li>"
        for choice in found.choices
    ) or "<li>No patient found.</li>"
    more = (f'<input type="hidden" name="cursor" value="{html.escape(found.next_cursor)}">'
            '<p><button name="decision" value="next">Next page</button></p>') if found.next_cursor else ""
    body = (
        f"<p>Which patient may <b>{html.escape(client.name)}</b> reach? It will see this patient's records only.</p>"
        f"{notice}"
        f'<form method="post" action="{html.escape(public_root(request) + PATH)}">'
        f'<input type="hidden" name="request" value="{html.escape(key)}">'
        f'<p><label>Name <input name="name" value="{html.escape(name)}"></label> '
        f'<label>Identifier <input name="identifier" value="{html.escape(identifier)}"></label> '
        '<button name="decision" value="search">Search</button></p>'
        f"<ul>{rows}</ul>{more}"
        '<p><button name="decision" value="deny">Deny</button></p>'
        "</form>"
    )
    return _page(status, "Pick a patient", body)


def _page(status: int, title: str, body: str, headers: dict[str, str] | None = None) -> Response:
    """A page for the user (never for the app): `body` is escaped by the caller."""
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>MedAIFlow: {html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:32em;margin:2em auto;padding:0 1em}.error{color:#a00}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(page, status_code=status, headers={**_HEADERS, **(headers or {})})
