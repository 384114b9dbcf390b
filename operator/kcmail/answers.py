"""HTTP clients for servers kcmail does not control (token endpoints, Keycloak), whose answers are read up
to a limit.

A token endpoint or a Keycloak may be a tenant's (a MailConfig names any token URL, a namespaced
KeycloakConnection any Keycloak), and an answer is read whole into memory before it is parsed: one
endless answer would take the operator's memory. So each answer is counted as it arrives and abandoned
past its limit, and the body is asked for without compression, so that what is counted is what is kept.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from kcmail import __version__

# A token answer is a few kilobytes (a Microsoft 365 token is 2-4 KB); an error page, less.
TOKEN_ANSWER_LIMIT = 64 * 1024
# Keycloak's largest answer kcmail reads is /admin/serverinfo: about 300 KB on 26.7.
KEYCLOAK_ANSWER_LIMIT = 4 * 1024 * 1024
USER_AGENT = f"kcmail/{__version__}"


class AnswerTooLarge(httpx.TransportError):
    """The server's answer went past the limit; nothing of it is kept."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is larger than {_size(limit)}")
        self.limit = limit


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit // 1024} KiB"


class _CountedStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._stream:
            seen += len(chunk)
            if seen > self._limit:
                raise AnswerTooLarge(self._limit)
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


class _LimitedTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._limit:
            await response.aclose()
            raise AnswerTooLarge(self._limit)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(status_code=response.status_code, headers=response.headers,
                              stream=_CountedStream(response.stream, self._limit), extensions=response.extensions)

    async def aclose(self) -> None:
        await self._inner.aclose()


def limited_client(limit: int, *, verify: Any = True, limits: httpx.Limits | None = None,
                   timeout: httpx.Timeout | float | None = None, **options: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose answers are refused past ``limit`` bytes (``AnswerTooLarge``);
    ``options`` go to the client (``event_hooks``)."""
    transport = httpx.AsyncHTTPTransport(verify=verify, limits=limits or httpx.Limits())
    return httpx.AsyncClient(transport=_LimitedTransport(transport, limit), timeout=timeout,
                             headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}, **options)
