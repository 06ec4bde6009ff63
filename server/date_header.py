"""The Date header (RFC 9110 §6.6.1), stamped as each answer starts.

uvicorn refreshes its own Date once a second, so it could precede the
Last-Modified of a resource written by the same request, which an origin
server must never send (RFC 9110 §8.8.2.1): caches would see a negative
age, and a client that sends that Date back as If-Modified-Since would miss
the change. So uvicorn runs with `date_header=False` and this stamps it.
"""

from email.utils import formatdate

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class DateHeader:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def dated(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(name, value) for name, value in message.get("headers", []) if name.lower() != b"date"]
                message = {**message, "headers": [*headers, (b"date", formatdate(usegmt=True).encode())]}
            await send(message)

        await self.app(scope, receive, dated)
