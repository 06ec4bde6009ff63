"""The OAuth 2.0 token endpoint (RFC 6749: `password` and `client_credentials`
grants, the latter with a secret or, for SMART Backend Services, a signed
client assertion; `authorization_code` and `refresh_token` for the apps of
SMART App Launch, see `server.auth.authorize`) and the discovery documents
(JWKS, SMART configuration).

Errors follow RFC 6749 5.2: `{"error": ..., "error_description": ...}`,
400 for a bad request or grant, 401 with WWW-Authenticate for a client that
fails to authenticate, 429 with Retry-After while logins are limited. No
answer says whether a user exists.
"""

import logging
import time
from urllib.parse import parse_qsl, unquote

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from server.audit.middleware import note_login
from server.auth.access import basic_credentials
from server.auth.client_assertions import ALGORITHMS, ASSERTION_TYPE, InvalidAssertion, claimed_client
from server.auth.identities import Identity
from server.auth.launch import EHR_LAUNCH, LAUNCH_PATIENT, PKCE_TEXT, OutOfScope, Refused, refresh_kind, scope_text
from server.auth.limits import limited_address
from server.auth.scopes import Grant
from server.auth.service import AuthService
from server.public_url import public_root
from server.services import services

log = logging.getLogger(__name__)
router = APIRouter()
FORM = "application/x-www-form-urlencoded"
# A token request is a few short fields. The endpoint needs no credentials, so
# its body is judged as it arrives, never held whole whatever its size.
_FORM_LIMIT = 16_384


def _auth(request: Request) -> AuthService:
    return services(request).auth


def oauth_error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status,
                        headers={"Cache-Control": "no-store", **(headers or {})})


@router.post("/auth/token")
async def token(request: Request) -> JSONResponse:
    answer = await _token(request)
    # A refused token request is a request without valid credentials, and is recorded as one: limited alike.
    if 400 <= answer.status_code < 500 and (wait := _auth(request).over_unauthenticated_limit(request.scope)):
        return oauth_error(429, "slow_down", "too many refused token requests from this address; try again later",
                           {"Retry-After": str(wait)})
    return answer


async def _token(request: Request) -> JSONResponse:
    if not is_form(request):
        return oauth_error(400, "invalid_request", f"the token request must be {FORM}")
    form = await read_form(request)
    if form is None:
        return oauth_error(413, "invalid_request", f"a token request is at most {_FORM_LIMIT} bytes")
    grant_type = form.get("grant_type")
    address = limited_address(request.scope)
    auth = _auth(request)
    if grant_type == "password":
        name, secret = form.get("username", ""), form.get("password", "")
        if not name or not secret:
            return oauth_error(400, "invalid_request", "the password grant needs username and password")
        check = auth.identities.authenticate_user
        failure = oauth_error(400, "invalid_grant", "the user name or the password is wrong")
    elif grant_type == "client_credentials" and "client_assertion_type" in form:
        return await _backend_service_token(request, form, address)
    elif grant_type == "client_credentials":
        credentials = _client_credentials(request, form)
        if credentials is None:
            return oauth_error(401, "invalid_client",
                               "client authentication is needed (HTTP Basic, or client_id and client_secret)",
                               {"WWW-Authenticate": 'Basic realm="medaiflow"'})
        name, secret = credentials
        check = auth.identities.authenticate_client
        failure = oauth_error(401, "invalid_client", "the client id or the secret is wrong",
                              {"WWW-Authenticate": 'Basic realm="medaiflow"'})
    elif grant_type in ("authorization_code", "refresh_token"):
        return await _launch_token(request, form, address, grant_type)
    else:
        return oauth_error(400, "unsupported_grant_type",
                           "grant_type must be password, client_credentials, authorization_code or refresh_token")

    if "\x00" in name:  # no account's name has one, and PostgreSQL's text holds none (looking one up was a 500)
        return failure
    # A secret can be guessed: failures count against the name tried, as well as where they come from.
    keys = (f"name:{name}", f"address:{address}")
    refused = _limited(request, auth, name, address, keys)
    if refused is not None:
        return refused
    identity: Identity | None = await run_in_threadpool(check, name, secret)
    if identity is None:
        return failure
    return _issued(auth, identity, form, keys, afresh=keys[0])


def _limited(
    request: Request, auth: AuthService, name: str, address: str, keys: tuple[str, ...]
) -> JSONResponse | None:
    """The 429 for a token request over the address's rate, or over the
    failed-login limit of one of `keys`, if any."""
    refusal = login_wait(request, auth, name, address, keys)
    if refusal is None:
        return None
    return oauth_error(429, "slow_down", refusal[0], {"Retry-After": str(refusal[1])})


def login_wait(
    request: Request, auth: AuthService, name: str, address: str, keys: tuple[str, ...], app: str | None = None
) -> tuple[str, int] | None:
    """Why a login must wait, and for how many seconds, if it must: the
    address's request rate, or the failed-login limit of one of `keys`.
    Counts the attempt; a success is given back with `failed_logins.succeeded`."""
    note_login(request.scope, name, app)
    # Each answer costs an Argon2 check or a signature check, right or not: the address's request rate holds here too.
    wait = auth.request_rate.take(f"address:{address}") if auth.request_rate is not None else None
    if wait is not None:
        return "too many token requests; try again later", wait
    wait = auth.failed_logins.attempt(*keys)
    if wait is not None:
        return "too many failed logins; try again later", wait
    return None


def _issued(
    auth: AuthService, identity: Identity, form: dict[str, str], keys: tuple[str, ...], afresh: str | None = None
) -> JSONResponse:
    """The token, the login's attempt given back to `keys`, and the name that logged in (`afresh`) starting afresh."""
    auth.failed_logins.succeeded(*keys, afresh=afresh)
    granted = Grant.parse(form["scope"]).narrowed_to(identity.grant) if form.get("scope") else identity.grant
    granted = granted.in_context("user", "system")  # patient/ scopes need the patient a launch picks
    if not granted.scopes:
        return oauth_error(400, "invalid_scope", "none of the scopes asked for is allowed to this identity")
    access_token, lifetime = auth.issuer.issue(
        identity.name, identity.role.value if identity.role else "", str(granted), identity.client
    )
    return JSONResponse({"access_token": access_token, "token_type": "Bearer", "expires_in": lifetime,
                         "scope": str(granted)}, headers={"Cache-Control": "no-store"})


async def _launch_token(request: Request, form: dict[str, str], address: str, grant_type: str) -> JSONResponse:
    """The grants of SMART App Launch: a code (with its PKCE verifier) or a
    refresh token traded for an access token, and a new refresh token when
    offline_access or online_access was granted. A confidential app
    authenticates as for client_credentials; a public one names itself."""
    auth = _auth(request)
    if "client_assertion_type" in form:
        return oauth_error(400, "invalid_request", "apps that log users in authenticate with a secret, or are public")
    credentials = _client_credentials(request, form)
    if credentials is not None:
        client_id, secret = credentials
        if "\x00" in client_id or form.get("client_id", client_id) != client_id:
            return oauth_error(400, "invalid_request", "client_id differs from the client that authenticates")
        keys = (f"name:{client_id}", f"address:{address}")
        refused = _limited(request, auth, client_id, address, keys)
        if refused is not None:
            return refused
        if await run_in_threadpool(auth.identities.authenticate_client, client_id, secret) is None:
            return oauth_error(401, "invalid_client", "the client id or the secret is wrong",
                               {"WWW-Authenticate": 'Basic realm="medaiflow"'})
        auth.failed_logins.succeeded(*keys, afresh=keys[0])
    else:
        client_id = form.get("client_id", "")
        client = await run_in_threadpool(auth.identities.launch_client, client_id) if "\x00" not in client_id else None
        if client is None or not client.public:
            # A confidential client that sends no secret is refused alike: no answer tells which clients are public.
            return oauth_error(401, "invalid_client",
                               "client authentication is needed (a public client sends its client_id)",
                               {"WWW-Authenticate": 'Basic realm="medaiflow"'})
    # RFC 6749 6: a refresh may ask for less than granted, never more.
    asked = Grant.parse(form["scope"]) if grant_type == "refresh_token" and form.get("scope") else None
    try:
        if grant_type == "authorization_code":
            code, redirect_uri = form.get("code", ""), form.get("redirect_uri", "")
            verifier = form.get("code_verifier", "")
            if not code or not redirect_uri or not PKCE_TEXT.fullmatch(verifier):
                return oauth_error(400, "invalid_request", "the authorization_code grant needs code, redirect_uri and "
                                   "code_verifier (43 to 128 URL-safe characters)")
            granted = await run_in_threadpool(auth.launches.redeem, code, client_id, redirect_uri, verifier)
        else:
            if not form.get("refresh_token"):
                return oauth_error(400, "invalid_request", "the refresh_token grant needs refresh_token")
            granted = await run_in_threadpool(auth.launches.use_refresh_token, form["refresh_token"], client_id, asked)
    except Refused as refusal:
        return oauth_error(400, "invalid_grant", str(refusal))
    except OutOfScope as refusal:
        return oauth_error(400, "invalid_scope", str(refusal))
    user = await run_in_threadpool(auth.identities.active_user, granted.user_name)
    if user is None or user.role is None:
        return oauth_error(400, "invalid_grant", f"user {granted.user_name} is disabled or gone")
    note_login(request.scope, user.name, app=client_id)
    # The user's role as it is now: one changed since the login narrows what the app gets.
    resources = Grant.parse(granted.scope).narrowed_to(user.grant)
    if granted.patient is None:  # patient/ scopes reach the patient picked, and there is none
        resources = resources.in_context("user")
    if asked is not None:  # the access token's; the refresh token keeps its family's scope
        resources = resources.narrowed_to(asked)
    if not resources.scopes:
        return oauth_error(400, "invalid_scope", f"{user.name} may no longer use any of the scopes granted")
    kind = refresh_kind(granted.scope)
    # The launch scope granted with them (launch/patient, or launch for an EHR launch), while patient/ scopes are.
    launches = [word for word in granted.scope.split() if word in (LAUNCH_PATIENT, EHR_LAUNCH)]
    scope = scope_text(resources, launches, kind)
    access_token, lifetime = auth.issuer.issue(user.name, user.role.value, str(resources), False, app=client_id,
                                               patient=granted.patient)
    answer: dict[str, object] = {"access_token": access_token, "token_type": "Bearer", "expires_in": lifetime,
                                 "scope": scope}
    if granted.patient is not None:
        answer["patient"] = granted.patient  # SMART: the launch context, beside the token
    if granted.refresh_token is not None:
        answer["refresh_token"] = granted.refresh_token
    return JSONResponse(answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


async def _backend_service_token(request: Request, form: dict[str, str], address: str) -> JSONResponse:
    """The client_credentials grant of SMART Backend Services: the client
    authenticates with a JWT it signed (`private_key_jwt`), not a secret."""
    if form["client_assertion_type"] != ASSERTION_TYPE:
        return oauth_error(400, "invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
    assertion = form.get("client_assertion", "")
    if not assertion:
        return oauth_error(400, "invalid_request", "client_assertion is missing")
    if form.get("client_secret") or request.headers.get("authorization"):
        return oauth_error(400, "invalid_request", "a client authenticates one way only: an assertion, or a secret")
    token_url = f"{public_root(request)}/auth/token"
    try:
        claimed = claimed_client(assertion, token_url, int(time.time()))
    except InvalidAssertion as refusal:
        return oauth_error(401, "invalid_client", str(refusal))
    if form.get("client_id", claimed.client_id) != claimed.client_id:
        return oauth_error(400, "invalid_request", "client_id differs from the assertion's iss")
    auth = _auth(request)
    # No private key is guessed by trying: failures count against where they come from only, so that
    # assertions naming a client, sent by anyone, cannot lock it out.
    keys = (f"address:{address}",)
    refused = _limited(request, auth, claimed.client_id, address, keys)
    if refused is not None:
        return refused
    try:
        identity = await run_in_threadpool(auth.identities.authenticate_assertion, claimed, assertion, token_url)
    except InvalidAssertion as refusal:
        log.info("a client assertion was refused: %s", refusal)
        # Whether the client exists, or which of its keys, is not told.
        return oauth_error(401, "invalid_client", "the assertion does not verify with a key registered for its client")
    return _issued(auth, identity, form, keys)


def is_form(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == FORM


async def read_form(request: Request) -> dict[str, str] | None:
    """The form's fields; None once the body passes the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > _FORM_LIMIT:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _FORM_LIMIT:
            return None
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    if header[:6].lower() == "basic ":
        parsed = basic_credentials(header[6:])
        if parsed is None or not parsed[1]:
            return None
        # RFC 6749 2.3.1: both parts are form-urlencoded inside Basic.
        return unquote(parsed[0]), unquote(parsed[1])
    if form.get("client_id") and form.get("client_secret"):
        return form["client_id"], form["client_secret"]
    return None


@router.get("/.well-known/jwks.json")
def jwks(request: Request) -> JSONResponse:
    return JSONResponse(_auth(request).issuer.jwks(), headers={"Cache-Control": "max-age=300"})


@router.get("/.well-known/smart-configuration")
def smart_configuration(request: Request) -> JSONResponse:
    root = public_root(request)
    return JSONResponse({
        "issuer": _auth(request).issuer.issuer,
        "jwks_uri": f"{root}/.well-known/jwks.json",
        "token_endpoint": f"{root}/auth/token",
        "authorization_endpoint": f"{root}/auth/authorize",
        "grant_types_supported": ["authorization_code", "refresh_token", "password", "client_credentials"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "scopes_supported": ["system/*.cruds", "user/*.cruds", "system/*.rs", "user/*.rs", "patient/*.rs",
                             "launch/patient", "launch", "offline_access", "online_access"],
        "capabilities": ["launch-standalone", "context-standalone-patient", "launch-ehr", "context-ehr-patient",
                         "client-public",
                         "client-confidential-symmetric", "client-confidential-asymmetric", "permission-v2",
                         "permission-v1", "permission-user", "permission-patient", "permission-offline",
                         "permission-online"],
    })
