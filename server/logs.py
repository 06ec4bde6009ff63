"""Structured JSON logs: one line per record, one line per request.

Request lines carry the route template, never the path or query string:
QIDO queries and WADO URLs name patients and studies, and logs must not.
"""

import logging
import random
import re
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
# What a client may choose as its own id: short, and safe to echo and log.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
UNROUTED = "(unrouted)"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log repeats the query string; ours replaces it.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # pynetdicom (the DIMSE gateway) logs every association and message at INFO, several lines per instance of a
    # series: only at DEBUG. The gateway logs its own rejections and refusals (server/dimse/scp.py).
    logging.getLogger("pynetdicom").setLevel(logging.WARNING if root.level > logging.DEBUG else logging.NOTSET)


def route_template(scope: Scope) -> str:
    """The template of the route that answered, with the prefix of its router.

    FastAPI may put the route of an included router into the scope without
    the router's prefix; the prefix is then the part of the path in front of
    what the route's own pattern matched (router prefixes here are static
    text, so no path value reaches the log this way).
    """
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    pattern = getattr(route, "path_regex", None)
    if not template:
        return UNROUTED
    path: str = scope.get("path", "")
    if pattern is None or pattern.match(path):
        return template
    for start in range(1, len(path)):
        if path[start] == "/" and pattern.match(path[start:]):
            return path[:start] + template
    return template


class RequestLogMiddleware:
    """Assigns each request an id (or keeps a sane X-Request-ID), echoes it, and logs one line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger("medaiflow.request")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        # An id to find log lines by, not a secret: no need for the OS random source.
        request_id = incoming if _CLIENT_REQUEST_ID.fullmatch(incoming) else f"{random.getrandbits(64):016x}"
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        failed = False
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            failed = True
            raise
        finally:
            self.log.info(
                "request",
                extra={
                    "fields": {
                        "method": scope["method"],
                        "route": route_template(scope),
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    }
                },
            )
            # An unhandled error is answered and logged after this middleware
            # returns (Starlette's 500 handler and the server's error log sit
            # outside it), so the id stays set for those lines to carry. Each
            # request runs in a task of its own: the id cannot leak into another.
            if not failed:
                request_id_var.reset(token)
