"""The egress transport: the last SDK code a provider request passes through.

``EgressTransport`` wraps the pooled network transport and, for every request:

1. enforces the ``HostPolicy`` (https, declared hosts, no IP literals) before anything else;
2. **detokenizes**: finds card placeholder markers (``sdk.placeholders``) in the headers and
   body, reveals the card through the call's ``TokenRevealer`` and writes the real values into a
   copy of the request, each encoded for where it sits (JSON string escaping, form
   url-encoding including Stripe-style ``card[number]`` keys, XML escaping, raw in headers).
   An ``optional()`` placeholder whose field the card lacks takes what carries it out of the
   request (the JSON member or item, form pair, XML element or attribute, header); an
   ``as_number()`` one becomes a JSON number. Placeholders in the URL are refused: a PAN never
   goes into a query string;
3. **signs** the request as it will be written, when the call asked for it (``ctx.send(sign=)``,
   ``sdk.signing``): a body digest, an HTTP message signature or a detached JWS over the bytes
   that hold the card, which no connector code could compute;
4. watches the network transport's trace events (httpcore's, or ``sdk.aiohttp_transport``'s),
   to know whether the request started being written: that is the line between ``not_sent``
   and ``unknown`` (``sdk.outcomes``);
5. maps httpx failures to ``TransportFault`` errors (the one place this happens);
6. reads the reply under a size limit (inflating gzip/deflate under the same limit);
7. records the exchange in the call's ``TranscriptRecorder``, with masks where card data went and
   credentials scrubbed.

Per-call state travels in the request's extensions as an ``EgressScope``; the transport itself is
shared by every call of one connector runtime. ``content_length_header`` is the framing rule the
detokenized copy shares with the requests ``CallContext.send`` builds.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus
from xml.sax.saxutils import escape as xml_escape

import httpx

from normalization import ConnectorConfigurationError, ProviderError
from sdk.hostpolicy import HostPolicy
from sdk.outcomes import ResponseTooLargeError, transport_fault
from sdk.placeholders import (
    DIGIT_FIELDS,
    MARKER_PATTERN,
    MARKER_PREFIX,
    CardField,
    MissingCardDataError,
    PlaceholderTable,
    ResolvedValue,
)
from sdk.revealer import TokenRevealer
from sdk.scrubbing import Scrubber
from sdk.signing import header_names, sign_request, signers_of
from sdk.transcript import Exchange, TranscriptRecorder, clip_body

__all__ = [
    "SCOPE_EXTENSION",
    "SIGNERS_EXTENSION",
    "EgressScope",
    "EgressTransport",
    "SendTracker",
    "content_length_header",
]

SCOPE_EXTENSION = "tessera.egress_scope"
#: The request's signers (``sdk.signing``), applied to the bytes on the wire.
SIGNERS_EXTENSION = "tessera.signers"
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_BODY_FRAMING = frozenset({b"content-length", b"transfer-encoding"})

#: A digest or signature inside a signed header's value (base64 or base64url, 20+ characters).
_SIGNATURE_PART = re.compile(r"[A-Za-z0-9+/_-]{20,}={0,2}")

TraceCallback = Callable[[str, Mapping[str, Any]], Awaitable[None]]


@dataclass(slots=True)
class SendTracker:
    """What one request's trace events showed about how far it got."""

    handed_over: bool = False
    events_seen: bool = False
    write_started: bool = False

    @property
    def write_state(self) -> bool | None:
        """True/False when trace events tell, None when they cannot (no httpcore underneath)."""
        if self.write_started:
            return True
        return False if self.events_seen else None

    @property
    def may_have_reached_provider(self) -> bool:
        return self.write_started or (self.handed_over and not self.events_seen)


@dataclass(slots=True)
class EgressScope:
    """The per-call state the transport needs: who is calling, to reveal what, recorded where."""

    connector_id: str
    operation: str
    tenant: str
    placeholders: PlaceholderTable
    revealer: TokenRevealer | None = None
    scrubber: Scrubber = field(default_factory=Scrubber)
    transcript: TranscriptRecorder | None = None
    sensitive_headers: frozenset[str] = frozenset()
    trackers: list[SendTracker] = field(default_factory=list)

    @property
    def purpose(self) -> str:
        return f"egress:{self.connector_id}:{self.operation}"

    @property
    def may_have_reached_provider(self) -> bool:
        """Whether any request of this call may have reached the provider."""
        return any(t.may_have_reached_provider for t in self.trackers)


def content_length_header(method: str, body: bytes) -> tuple[bytes, bytes] | None:
    """The ``Content-Length`` header ``httpx.Request(method, url, content=body)`` adds: the
    length of a body, ``0`` for an empty POST, PUT or PATCH, none for any other empty request.

    The SDK builds its provider requests with ``httpx.Request(stream=...)``, which adds no
    header at all, so the framing is the SDK's to add, by this rule: ``CallContext.send``
    (``sdk.context``) for every request it builds, and ``EgressTransport`` for the detokenized
    copy it sends. ``content=`` would frame them itself, but it re-parses every header to do it,
    on the path of every payment: 21 against 12 us for a JSON request in ``CallContext.send``,
    14 against 4 us for the egress copy (httpx 0.28, CPython 3.11). ``test_context`` checks
    the result against what httpx builds.
    """
    if body:
        return (b"Content-Length", str(len(body)).encode("ascii"))
    if method.upper() in _BODY_METHODS:
        return (b"Content-Length", b"0")
    return None


# -- substitution ---------------------------------------------------------------------------------


def _body_kind(content_type: str) -> str:
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return "json"
    if media == "application/x-www-form-urlencoded":
        return "form"
    if media.endswith(("/xml", "+xml")):
        return "xml"
    return "opaque"


def _encode(value: str, kind: str, is_digits: bool) -> bytes:
    if kind == "json":
        return json.dumps(value)[1:-1].encode("ascii")
    if kind == "form":
        return quote_plus(value).encode("ascii")
    if kind == "xml":
        return xml_escape(value, {'"': "&quot;", "'": "&apos;"}).encode("utf-8")
    if kind == "header":
        if not (value.isascii() and value.isprintable()):
            raise ConnectorConfigurationError(
                "A card field with unsafe characters was put in a header."
            )
        return value.encode("ascii")
    if not is_digits:
        raise ConnectorConfigurationError(
            "Non-numeric card fields can only go into JSON, form or XML bodies or headers."
        )
    return value.encode("ascii")


def _substitute(data: bytes, resolved: Mapping[bytes, ResolvedValue], kind: str) -> bytes:
    if kind == "json":
        for marker, value in resolved.items():
            if value.number and marker in data:
                # The quoted marker, a whole JSON value, becomes the number ("03" -> 3).
                data = data.replace(b'"' + marker + b'"', str(int(value.raw)).encode("ascii"))
                if marker in data:
                    raise ConnectorConfigurationError(
                        "A card placeholder sent as a number must be a whole JSON value."
                    )

    def replace(match: Any) -> bytes:
        value = resolved[match.group(0)]
        return _encode(value.raw, kind, value.field in DIGIT_FIELDS)

    return MARKER_PATTERN.sub(replace, data)


# -- leaving out optional fields the card does not hold -------------------------------------------

_XML_NAME = rb"[A-Za-z_][\w.:-]*"


def _omit(body: bytes, omitted: frozenset[bytes], kind: str) -> bytes:
    """``body`` without what carries each marker in ``omitted`` (see the module docstring);
    ``MissingCardDataError`` when such a marker sits where nothing can be left out whole."""
    present = [marker for marker in omitted if marker in body]
    if not present:
        return body
    if kind == "json":
        body = _omit_json(body, omitted)
    elif kind == "form":
        body = b"&".join(
            pair for pair in body.split(b"&") if pair.partition(b"=")[2] not in omitted
        )
    elif kind == "xml":
        for marker in present:
            quoted = re.escape(marker)
            element = rb"<(" + _XML_NAME + rb")(?:\s[^<>]*)?>\s*" + quoted + rb"\s*</\1\s*>"
            attribute = rb"\s+" + _XML_NAME + rb"\s*=\s*([\"'])" + quoted + rb"\1"
            body = re.sub(attribute, b"", re.sub(element, b"", body))
    if any(marker in body for marker in present):
        raise MissingCardDataError(
            "The card does not hold an optional field this request carries inside a larger"
            " value, where it cannot be left out."
        )
    return body


def _omit_json(body: bytes, omitted: frozenset[bytes]) -> bytes:
    try:
        document = json.loads(body)
    except ValueError:
        raise ConnectorConfigurationError("A JSON request body does not parse.") from None

    def kept(value: Any) -> bool:
        return not (isinstance(value, str) and value.encode() in omitted)

    def prune(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: prune(value) for key, value in node.items() if kept(value)}
        if isinstance(node, list):
            return [prune(value) for value in node if kept(value)]
        return node

    # httpx's and pydantic's compact form, so an unchanged body keeps its bytes.
    return json.dumps(
        prune(document), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


def _omit_headers(
    headers: list[tuple[bytes, bytes]], omitted: frozenset[bytes]
) -> list[tuple[bytes, bytes]]:
    kept = [(name, value) for name, value in headers if value.strip() not in omitted]
    if any(marker in value for _, value in kept for marker in omitted):
        raise MissingCardDataError(
            "The card does not hold an optional field this request carries inside a header"
            " value, where it cannot be left out."
        )
    return kept


def _mask(data: bytes, resolved: Mapping[bytes, ResolvedValue]) -> bytes:
    return MARKER_PATTERN.sub(
        lambda m: resolved[m.group(0)].masked.encode() if m.group(0) in resolved else b"***", data
    )


# -- the transport --------------------------------------------------------------------------------


class EgressTransport(httpx.AsyncBaseTransport):
    """See the module docstring. ``inner`` is the pooled network transport."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        policy: HostPolicy,
        *,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._inner = inner
        self._policy = policy
        self._max_response_bytes = max_response_bytes

    @property
    def policy(self) -> HostPolicy:
        return self._policy

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        self._policy.check_url(url)
        extensions = request.extensions
        scope = extensions.get(SCOPE_EXTENSION)
        if scope is not None and not isinstance(scope, EgressScope):
            raise ConnectorConfigurationError("Malformed egress scope on a provider request.")
        # refused before any reveal
        signers = signers_of(extensions.get(SIGNERS_EXTENSION), request.headers.raw)
        body = await request.aread()
        if MARKER_PATTERN.search(str(url).encode()):
            raise ConnectorConfigurationError("Card placeholders are not allowed in URLs.")
        if scope is not None:
            scope.placeholders.check_whole(str(url).encode())

        headers = request.headers.raw
        resolved: dict[bytes, ResolvedValue] = {}
        omitted: frozenset[bytes] = frozenset()
        kind = ""
        if scope is not None:
            slots = scope.placeholders.slots_in(body)
            scope.placeholders.check_whole(body)
            for _, value in headers:
                if MARKER_PREFIX in value:
                    slots |= scope.placeholders.slots_in(value)
                scope.placeholders.check_whole(value)
            if slots:
                resolution = await scope.placeholders.resolve(
                    slots, scope.revealer, scope.tenant, scope.purpose
                )
                resolved, omitted = resolution.values, resolution.omitted
                if omitted:
                    kind = _body_kind(request.headers.get("content-type", ""))
                    body = _omit(body, omitted, kind)
                    headers = _omit_headers(headers, omitted)
        elif MARKER_PATTERN.search(body) or any(MARKER_PATTERN.search(v) for _, v in headers):
            raise ConnectorConfigurationError("Card placeholders need a call context.")

        tracker = SendTracker()
        if scope is not None:
            scope.trackers.append(tracker)
        trace = _tracing(tracker, extensions.get("trace"))
        signed: list[tuple[bytes, bytes]] = []
        if resolved or omitted or signers:
            # A new request for the wire; ``request`` (placeholders only) is what the reply
            # points back to, so no connector code ever holds the detokenized one, nor what
            # was signed over it. Its body is whole, so it is framed by its length alone (a
            # streamed one came chunked).
            kind = kind or _body_kind(request.headers.get("content-type", ""))
            content = _substitute(body, resolved, kind) if body and resolved else body
            wire_headers = [
                (name, _substitute(value, resolved, "header") if MARKER_PREFIX in value else value)
                for name, value in headers
                if name.lower() not in _BODY_FRAMING
            ]
            length = content_length_header(request.method, content)
            if length is not None:
                wire_headers.append(length)
            if signers:
                signed = sign_request(signers, request.method, url, wire_headers, content)
                wire_headers.extend(signed)
            outgoing = httpx.Request(
                request.method,
                url,
                headers=wire_headers,
                stream=httpx.ByteStream(content),
                extensions={**extensions, "trace": trace},
            )
        else:
            outgoing = request
            request.extensions = {**extensions, "trace": trace}

        started = time.perf_counter()
        status: int | None = None
        response_headers: list[tuple[bytes, bytes]] = []
        response_body = b""
        error: str | None = None
        try:
            tracker.handed_over = True
            try:
                response = await self._inner.handle_async_request(outgoing)
                status = response.status_code
                response_headers = raw_headers = response.headers.raw
                try:
                    response_body, response_headers = await self._read_body(
                        response, response_headers
                    )
                finally:
                    await response.aclose()
            except httpx.HTTPError as exc:
                raise transport_fault(exc, write_started=tracker.write_state) from exc
            return httpx.Response(
                status,
                # unchanged (the usual case): httpx copies its own Headers without re-parsing
                headers=response.headers if response_headers is raw_headers else response_headers,
                content=response_body,
                request=request,
                extensions=response.extensions,
            )
        except BaseException as exc:
            error = type(exc).__name__
            raise
        finally:
            if scope is not None and scope.transcript is not None:
                self._record(
                    scope,
                    request,
                    body,
                    [*headers, *signed],
                    # over a body with card data, a digest or signature is a way to test
                    # guesses of the card number: recorded as [REDACTED] (sdk.signing)
                    header_names(signed) if resolved else frozenset(),
                    resolved,
                    status,
                    response_headers,
                    response_body,
                    error,
                    started,
                )

    async def _read_body(
        self, response: httpx.Response, headers: list[tuple[bytes, bytes]]
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        limit = self._max_response_bytes
        declared: list[bytes] = []
        encodings: list[bytes] = []
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-length":
                declared.append(value)
            elif lowered == b"content-encoding":
                encodings.append(value)
        if len(declared) == 1 and declared[0].isdigit() and int(declared[0]) > limit:
            raise ResponseTooLargeError()
        skip = (b"content-encoding", b"content-length")
        if response.is_stream_consumed:
            # An in-memory response (mock transports, cassettes): already read and decoded.
            if len(response.content) > limit:
                raise ResponseTooLargeError()
            return response.content, [(k, v) for k, v in headers if k.lower() not in skip]
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > limit:
                raise ResponseTooLargeError()
            chunks.append(chunk)
        raw = b"".join(chunks)
        encoding = b", ".join(encodings).decode("latin-1").strip().lower()
        if encoding in ("", "identity"):
            return raw, headers
        if encoding not in ("gzip", "deflate"):
            raise ProviderError(f"The provider replied with unsupported encoding {encoding!r}.")
        wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
        try:
            inflater = zlib.decompressobj(wbits)
            body = inflater.decompress(raw, limit + 1)
        except zlib.error:
            raise ProviderError("The provider's compressed reply is corrupt.") from None
        if len(body) > limit or inflater.unconsumed_tail:
            raise ResponseTooLargeError()
        return body, [(k, v) for k, v in headers if k.lower() not in skip]

    def _record(
        self,
        scope: EgressScope,
        request: httpx.Request,
        body: bytes,
        request_headers: list[tuple[bytes, bytes]],
        hidden_headers: frozenset[str],
        resolved: Mapping[bytes, ResolvedValue],
        status: int | None,
        response_headers: list[tuple[bytes, bytes]],
        response_body: bytes,
        error: str | None,
        started: float,
    ) -> None:
        scrubber = scope.scrubber.with_secrets(
            v.raw for v in resolved.values() if v.field not in DIGIT_FIELDS or len(v.raw) >= 12
        )
        # What a credential header carried is a secret wherever else it shows (a reply echoing
        # the session, a URL): ``Bearer abc`` counts as ``abc``, a value of 8 characters or more.
        sent = scrubber.secrets_in_headers(
            ((k.decode("latin-1"), v.decode("latin-1")) for k, v in request_headers),
            scope.sensitive_headers,
        )
        if sent:
            scrubber = scrubber.with_secrets(sent)
        if hidden_headers:
            # what a signer wrote over card data, wherever a reply quotes it ("digest mismatch:
            # got <digest>"), recorded in place as [REDACTED] like a credential header
            scrubber = scrubber.with_secrets(
                part
                for name, value in request_headers
                if name.decode("latin-1").lower() in hidden_headers
                for part in _SIGNATURE_PART.findall(value.decode("latin-1"))
            )
        assert scope.transcript is not None

        def text(data: bytes) -> str:
            return scrubber.scrub_text(_mask(data, resolved).decode("utf-8", errors="replace"))

        # The revealed security code, wherever a reply holds it as a number of its own (quoted
        # or not, under a name the scrubber does not know, after the card number in a message:
        # "Card 4242... 737 declined"). A recording is test data: another number that happens
        # to equal the code is hidden too, which costs nothing (replies only: the request shows
        # placeholders' masks).
        codes = [
            re.compile(r"(?<![0-9])" + re.escape(v.raw) + r"(?![0-9])")
            for v in resolved.values()
            if v.field is CardField.CVC and v.raw
        ]

        def reply_text(data: bytes) -> str:
            scrubbed = text(data)
            for code in codes:
                if code.search(scrubbed) is not None:
                    # Scrubbed again: decoding the JSON turns escapes the first pass could not
                    # read (``\u0034242...``) into plain digits.
                    scrubbed = scrubber.scrub_text(_hide_code(scrubbed, code))
            return scrubbed

        def header_pairs(
            raw: list[tuple[bytes, bytes]], sensitive: frozenset[str]
        ) -> tuple[tuple[str, str], ...]:
            pairs = [(k.decode("latin-1"), text(v)) for k, v in raw]
            return scrubber.scrub_headers(pairs, sensitive)

        scope.transcript.record(
            Exchange(
                connector=scope.connector_id,
                operation=scope.operation,
                method=request.method,
                url=scrubber.scrub_text(str(request.url)),
                request_headers=header_pairs(
                    list(request_headers), scope.sensitive_headers | hidden_headers
                ),
                request_body=clip_body(text(body)),
                status_code=status,
                response_headers=header_pairs(response_headers, scope.sensitive_headers),
                response_body=clip_body(reply_text(response_body)),
                error=error,
                elapsed_ms=round((time.perf_counter() - started) * 1000, 3),
            )
        )


def _hide_code(text: str, code: re.Pattern[str]) -> str:
    """``text`` without the security code ``code`` matches: in a JSON document, inside every
    string and as a number of its own (then ``"***"``, so the document still parses); in other
    text, wherever it stands alone."""
    try:
        document = json.loads(text)
    except ValueError:
        return code.sub("***", text)

    def hide(node: Any) -> Any:
        if isinstance(node, str):
            return code.sub("***", node)
        if isinstance(node, int) and not isinstance(node, bool) and code.fullmatch(str(node)):
            return "***"
        if isinstance(node, dict):
            return {key: hide(value) for key, value in node.items()}
        if isinstance(node, list):
            return [hide(item) for item in node]
        return node

    return json.dumps(hide(document), ensure_ascii=False)


def _tracing(tracker: SendTracker, downstream: TraceCallback | None) -> TraceCallback:
    async def trace(name: str, info: Mapping[str, Any]) -> None:
        tracker.events_seen = True
        if name.endswith("send_request_headers.started"):
            tracker.write_started = True
        if downstream is not None:
            await downstream(name, info)

    return trace
