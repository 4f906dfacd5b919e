"""The HTTP side of a remote role: one pooled, kept-alive httpx client per engine server.

Every failure of the far side becomes a value with a cause: ``Unavailable`` when the server is
down, refuses the connection or its API key (401/403), times out, answers 5xx or sends a malformed or
truncated stream; ``Overloaded`` when it says so (429); ``BadRequest`` when it refuses the request
itself (another 4xx: a feature it lacks, a field it rejects).
Connection failures and 502/503/504 are retried a bounded number of times, and only before any
of the answer has arrived; the caller bounds the whole exchange by its deadline.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import httpx
from httpx_sse import SSEError, aconnect_sse

from npcai.errors import BadRequest, NpcaiError, Overloaded, Unavailable

RETRIES = 2  # tries after the first, for connection failures and 502/503/504 only
_BACKOFF_S = (0.05, 0.2)
_RETRY_STATUS = frozenset({502, 503, 504})
#: Bounds of one HTTP operation when the request has no deadline: no request ever hangs.
CONNECT_S = 5.0
READ_S = 60.0
#: A start-up question's answer may wait behind a generation the server is still finishing
#: (llama-cpp-python's server serialises even ``GET /models`` with its requests).
PROBE_READ_S = 30.0
DRAIN_S = 0.25  # the most a stream's end may take after its [DONE] (normally it comes with it)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _cause(exc: Exception) -> str:
    """A short, human cause for a transport failure."""
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({exc or 'connection refused'})"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the connection broke off ({exc})"
    return f"{type(exc).__name__}: {exc}"


def _refusal(status: int, body: bytes, url: str) -> NpcaiError:
    """An HTTP error as the most specific error: a 4xx refuses the request itself (a field, a feature), except
    429 (the engine is overloaded: try later) and 401/403 (its key is no longer taken), which are the engine's
    state and say nothing of the request."""
    text = body.decode(errors="replace").strip().replace("\n", " ")[:300]
    if status == 429:
        return Overloaded(f"the engine at {url} is overloaded ({status}): {text}")
    if status in (401, 403):
        return Unavailable(f"the engine at {url} refused its API key ({status}): {text}")
    if 400 <= status < 500:
        return BadRequest(f"the engine at {url} refused the request ({status}): {text}")
    return Unavailable(f"the engine at {url} failed ({status}): {text}")


class Upstream:
    """Pooled keep-alive connections to one engine server (``base_url`` like http://host:8000/v1)."""

    def __init__(self, base_url: str, key: str = "", *, root: str = "", max_connections: int = 64):
        self.base_url = base_url
        self.root = root  # where an engine's own endpoints are (SGLang's /generate)
        self._client = httpx.AsyncClient(
            base_url=base_url, headers=_auth(key),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                                keepalive_expiry=60.0),
            timeout=httpx.Timeout(READ_S, connect=CONNECT_S))

    async def post_root(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """``post`` to a path under the server's root rather than its API path."""
        return await self.post(self.root + path, body)

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST JSON, answer JSON."""
        for attempt in range(RETRIES + 1):
            try:
                resp = await self._client.post(path, json=body)
            except httpx.TransportError as exc:
                if isinstance(exc, httpx.ConnectError) and attempt < RETRIES:
                    await asyncio.sleep(_BACKOFF_S[attempt])
                    continue
                raise Unavailable(f"the engine at {self.base_url}: {_cause(exc)}") from None
            if resp.status_code in _RETRY_STATUS and attempt < RETRIES:
                await asyncio.sleep(_BACKOFF_S[attempt])
                continue
            if resp.status_code >= 400:
                raise _refusal(resp.status_code, resp.content, self.base_url)
            try:
                data = resp.json()
            except ValueError:
                raise Unavailable(f"the engine at {self.base_url} sent malformed JSON") from None
            if not isinstance(data, dict):
                raise Unavailable(f"the engine at {self.base_url} sent JSON that is not an object")
            return data
        raise AssertionError("unreachable")

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST JSON with ``stream: true``; yield each server-sent event's JSON until ``[DONE]``.

        A stream that ends without ``[DONE]`` is truncated: ``Unavailable``. Closing the generator
        (a cancel) closes the connection, which tells the engine to stop.
        """
        for attempt in range(RETRIES + 1):
            try:
                async with aconnect_sse(self._client, "POST", path, json=body) as source:
                    resp = source.response
                    if resp.status_code in _RETRY_STATUS and attempt < RETRIES:
                        await asyncio.sleep(_BACKOFF_S[attempt])
                        continue
                    if resp.status_code >= 400:
                        raise _refusal(resp.status_code, await resp.aread(), self.base_url)
                    attempt = RETRIES  # something arrived: no retry from here on
                    events = source.aiter_sse()
                    async for event in events:
                        if event.data.strip() == "[DONE]":
                            await _read_to_the_end(events)
                            return
                        try:
                            data = json.loads(event.data)
                        except ValueError:
                            raise Unavailable(f"the engine at {self.base_url} sent a malformed event") from None
                        if not isinstance(data, dict):
                            raise Unavailable(f"the engine at {self.base_url} sent an event that is not an object")
                        if "error" in data:
                            raise Unavailable(f"the engine at {self.base_url} failed mid-stream: "
                                              f"{str(data['error'])[:300]}")
                        yield data
                raise Unavailable(f"the engine at {self.base_url} ended the stream early (no [DONE])")
            except httpx.TransportError as exc:
                if isinstance(exc, httpx.ConnectError) and attempt < RETRIES:
                    await asyncio.sleep(_BACKOFF_S[attempt])
                    continue
                raise Unavailable(f"the engine at {self.base_url}: {_cause(exc)}") from None
            except SSEError as exc:
                raise Unavailable(f"the engine at {self.base_url} did not answer with a stream: {exc}") from None
        raise Unavailable(f"the engine at {self.base_url} kept failing ({RETRIES + 1} tries)")

    async def close(self) -> None:
        await self._client.aclose()


async def _read_to_the_end(events: AsyncIterator[Any]) -> None:
    """Read what follows ``[DONE]`` (the body's end) so that the connection goes back to the pool:
    httpx keeps a connection only when its response was read whole, and closing one that was not
    made every streamed line open a new connection. Bounded: a server that keeps the stream open
    after ``[DONE]`` costs ``DRAIN_S`` and that connection, no more."""
    async def drain() -> None:
        async for _ in events:
            pass

    try:
        await asyncio.wait_for(drain(), DRAIN_S)
    except (asyncio.TimeoutError, httpx.TransportError, SSEError):
        pass  # the connection is closed instead of reused; the answer is complete either way


def probe(url: str, key: str = "") -> httpx.Response | str:
    """GET ``url`` once, synchronously (start-up only): the response, or the cause when none came.

    Connecting is bounded by CONNECT_S; the answer may take PROBE_READ_S, since a busy server is
    slow to answer, not gone."""
    try:
        return httpx.get(url, headers=_auth(key), timeout=httpx.Timeout(PROBE_READ_S, connect=CONNECT_S))
    except httpx.HTTPError as exc:
        if isinstance(exc, httpx.ReadTimeout):
            return f"connected, but it did not answer GET {httpx.URL(url).path} within {PROBE_READ_S:g} s (busy?)"
        return _cause(exc)
