"""The traffic tap: the bytes a connector really sends and receives, for the kit's checks.

``TrafficTap`` is an httpx transport placed *under* the SDK's egress transport (as the runtime's
``transport``) and over the network transport. So it sees each request after detokenization,
exactly as it goes on the wire, and each response before the SDK reads it. The kit uses what it
sees for contract validation, for counting provider calls per step, for checking idempotency
keys and for finding floats in amounts.

What it holds contains real card data: ``TappedExchange`` values stay in memory for the checks
of one scenario and are never rendered; reports show the SDK's scrubbed transcript instead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["TappedExchange", "TrafficTap", "json_floats"]

# A tap that buffers an unbounded reply would defeat the SDK's size limit; past this the tap
# passes the rest through unread.
_MAX_TAPPED_BYTES = 4 * 1024 * 1024


@dataclass
class TappedExchange:
    method: str
    url: httpx.URL
    headers: list[tuple[str, str]]
    body: bytes
    status_code: int | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_body: bytes = b""
    error: str | None = None
    elapsed_s: float = 0.0

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)

    @property
    def content_type(self) -> str:
        return (self.header("content-type") or "").split(";", 1)[0].strip().lower()

    @property
    def response_content_type(self) -> str:
        lowered = next((v for k, v in self.response_headers if k.lower() == "content-type"), "")
        return lowered.split(";", 1)[0].strip().lower()


class TrafficTap(httpx.AsyncBaseTransport):
    """Records every exchange (see the module docstring) and passes it on unchanged."""

    def __init__(
        self, inner: httpx.AsyncBaseTransport, exchanges: list[TappedExchange] | None = None
    ) -> None:
        self._inner = inner
        #: Shared with other taps of the same scenario when given, so steps see one sequence.
        self.exchanges: list[TappedExchange] = exchanges if exchanges is not None else []

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        tapped = TappedExchange(
            method=request.method,
            url=request.url,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
            body=body,
        )
        self.exchanges.append(tapped)
        started = time.perf_counter()
        try:
            response = await self._inner.handle_async_request(request)
            tapped.status_code = response.status_code
            tapped.response_headers = [
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.raw
            ]
            if response.is_stream_consumed:
                tapped.response_body = response.content
                return response
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_raw():
                chunks.append(chunk)
                size += len(chunk)
                if size > _MAX_TAPPED_BYTES:
                    break
            await response.aclose()
            raw = b"".join(chunks)
            tapped.response_body = raw
            return httpx.Response(
                response.status_code,
                headers=response.headers.raw,
                stream=httpx.ByteStream(raw),
                extensions=response.extensions,
            )
        except BaseException as exc:
            tapped.error = type(exc).__name__
            raise
        finally:
            tapped.elapsed_s = time.perf_counter() - started


def _walk_floats(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, float):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk_floats(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk_floats(item, f"{path}[{index}]")


def json_floats(body: bytes, content_type: str) -> list[str]:
    """JSON paths of non-integer numbers in a JSON body (amounts must be integers or strings)."""
    if not body or not (content_type == "application/json" or content_type.endswith("+json")):
        return []
    try:
        data = json.loads(body)
    except ValueError:
        return []
    return list(_walk_floats(data, "$"))
