"""The server's root URL as clients see it, for links in answers."""

import re
from collections.abc import Callable

from starlette.requests import Request

# What may stand in a URL's scheme, authority and path prefix (RFC 3986):
# a header that holds anything else (quotes, spaces, a second URL) is not
# from a proxy we can honour, and is not pasted into links and JSON.
_SCHEMES = frozenset({"http", "https"})
_HOST = re.compile(r"(?:[A-Za-z0-9\-._~]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_PREFIX = re.compile(r"(?:/[A-Za-z0-9\-._~!$&'()*+,;=:@%]+)*")
# One `name=value` of a Forwarded element, the value a token or a quoted string, and what follows it.
_FORWARDED_PAIR = re.compile(r'\s*([A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,"\s]*)\s*([;,]|$)')


def public_root(request: Request) -> str:
    """Absolute root, behind a reverse proxy too.

    `MEDAIFLOW_PUBLIC_BASE_URL` wins; otherwise X-Forwarded-Proto/-Host/-Prefix,
    then `Forwarded` (RFC 7239: proto and host) are honoured so that
    RetrieveURLs, BulkDataURIs and Bundle links point at the proxy, not at
    this process. The X- headers first: the proxies that set them (nginx,
    Apache, Traefik) replace a client's, but pass a client's `Forwarded` on.
    A value that is not a scheme, a host or a path is passed over, for the
    request's own (or, for a malformed Host, the address the server listens on).
    """
    configured = request.app.state.services.settings.public_base_url
    if configured:
        return str(configured).rstrip("/")
    headers = request.headers
    forwarded = _forwarded(headers.get("forwarded"))
    scheme = (
        _first(headers.get("x-forwarded-proto"), lambda value: value in _SCHEMES)
        or _first(forwarded.get("proto"), lambda value: value in _SCHEMES)
        or request.url.scheme
    )
    host = (
        _first(headers.get("x-forwarded-host"), _HOST.fullmatch)
        or _first(forwarded.get("host"), _HOST.fullmatch)
        or _first(headers.get("host"), _HOST.fullmatch)
        or _listening_address(request)
    )
    prefix = _first(headers.get("x-forwarded-prefix"), lambda value: _PREFIX.fullmatch(value.rstrip("/"))) or ""
    prefix = prefix.rstrip("/")
    root_path = request.scope.get("root_path", "")
    return f"{scheme}://{host}{prefix}{root_path if _PREFIX.fullmatch(root_path) else ''}"


def _forwarded(header: str | None) -> dict[str, str]:
    """The parameters of a Forwarded header's first element (RFC 7239 §4),
    the one the proxy nearest the client wrote; nothing when it is malformed."""
    found: dict[str, str] = {}
    position = 0
    while header and position < len(header):
        pair = _FORWARDED_PAIR.match(header, position)
        if pair is None:
            return {}
        name, value, separator = pair.groups()
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        found.setdefault(name.lower(), value)
        if separator != ";":
            break
        position = pair.end()
    return found


def _first(header: str | None, acceptable: Callable[[str], object]) -> str | None:
    """The first of a proxy chain's comma-separated values, if acceptable."""
    if header is None:
        return None
    value = header.split(",")[0].strip()
    return value if value and acceptable(value) else None


def _listening_address(request: Request) -> str:
    host, port = request.scope.get("server") or ("127.0.0.1", 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
