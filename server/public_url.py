"""The server's root URL as clients see it, for links in answers."""

from starlette.requests import Request


def public_root(request: Request) -> str:
    """Absolute root, behind a reverse proxy too.

    `MEDAIFLOW_PUBLIC_BASE_URL` wins; otherwise X-Forwarded-Proto/-Host/-Prefix
    are honoured so that RetrieveURLs, BulkDataURIs and Bundle links point at
    the proxy, not at this process.
    """
    configured = request.app.state.services.settings.public_base_url
    if configured:
        return str(configured).rstrip("/")
    headers = request.headers
    scheme = headers.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip()
    host = headers.get("x-forwarded-host", headers.get("host", request.url.netloc)).split(",")[0].strip()
    prefix = headers.get("x-forwarded-prefix", "").split(",")[0].strip().rstrip("/")
    return f"{scheme}://{host}{prefix}{request.scope.get('root_path', '')}"
