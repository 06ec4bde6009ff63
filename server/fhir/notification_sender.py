"""The HTTP requests of Subscription notifications, each held to a total
deadline.

httpx's timeouts bound each connect, write and read on its own: an endpoint
that answers a byte a second is never timed out, and would hold its sender
thread (and, through it, every other Subscription) without end. So the
requests run on an event loop of their own, where one past its deadline is
cancelled, which closes its connection. Only the status line and headers are
read: a notification's answer says nothing more the server needs.
"""

import asyncio
import threading

import httpx


class NotificationSender:
    def __init__(self, deadline_seconds: float) -> None:
        self.deadline_seconds = deadline_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="subscription-http", daemon=True)
        self._thread.start()
        self._client = asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._client is not None:
            asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result(timeout=self.deadline_seconds)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=self.deadline_seconds)
        self._loop.close()
        self._loop = self._thread = self._client = None

    def send(self, method: str, url: str, content: bytes, headers: list[tuple[str, str]]) -> int:
        """The answer's status code. TimeoutError past the deadline; httpx's
        errors (and any other) for a request that could not be made."""
        assert self._loop is not None, "send runs between start and stop"
        return asyncio.run_coroutine_threadsafe(self._request(method, url, content, headers), self._loop).result()

    async def _open(self) -> httpx.AsyncClient:
        # Redirects are not followed: the endpoint, which the operator's allow-list
        # admitted, is where notifications go; nor is a proxy of the environment used.
        return httpx.AsyncClient(timeout=self.deadline_seconds, follow_redirects=False, trust_env=False)

    async def _request(self, method: str, url: str, content: bytes, headers: list[tuple[str, str]]) -> int:
        assert self._client is not None
        async with asyncio.timeout(self.deadline_seconds):
            async with self._client.stream(method, url, content=content, headers=headers) as response:
                return response.status_code
