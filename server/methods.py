"""HTTP methods as RFC 9110 has them: HEAD wherever GET is allowed
(§9.3.2), and a 405 that lists every method the resource allows (§15.5.6)."""

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
# In the scope of a HEAD answered as a GET: the audit trail says what was asked.
HEAD_MARK = "medaiflow.head"


def is_head(request: Request) -> bool:
    """Whether this GET answers a HEAD: a handler may then skip making the
    body, once the status and headers are what the GET's would be."""
    return bool(request.scope.get(HEAD_MARK))


class HeadAsGet:
    """A HEAD request is answered as the GET of the same URL would be (status
    and headers, Content-Length included), without the body. Outside every
    other middleware, so that authorization and the audit trail treat it as
    the read it is."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
            elif not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app({**scope, "method": "GET", HEAD_MARK: True}, receive, without_body)


async def allowed_methods(request: Request) -> str:
    """The Allow header for the request's URL: the methods some route takes
    there, less those the resource itself refuses with the same 405 (the
    writes of a FHIR type the server writes itself, the delete of a Task
    that is an inference job's record)."""
    routes = request.app.router.routes
    allowed = {
        method for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    }
    parts = request.url.path.split("/")
    fhir = request.app.state.services.fhir
    # `[type]/$op` is no instance: an operation takes its POST of a type the server alone writes too.
    is_instance_or_type = len(parts) == 3 or (len(parts) == 4 and not parts[3].startswith("$"))
    if is_instance_or_type and parts[1] == "fhir" and parts[2] in fhir.supported_types - fhir.writable_types:
        allowed -= {"POST", "PUT", "DELETE", "PATCH"}
    if len(parts) == 4 and parts[1:3] == ["fhir", "Task"]:
        job = await run_in_threadpool(request.app.state.services.jobs.queue.get, parts[3])
        if job is not None:
            allowed.discard("DELETE")
    if "GET" in allowed:
        allowed.add("HEAD")
    return ", ".join(sorted(allowed))
