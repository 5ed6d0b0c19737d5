"""``CallContext``: everything one connector call may use, and the only way it talks HTTP.

The resilience runtime builds a context for every attempt and passes it to the connector verb.
A connector uses it to:

- get card placeholders: ``card = ctx.card(request.payment_method)`` (``sdk.placeholders``);
- write and read amounts in the provider's minor units: ``ctx.provider_minor(amount)``,
  ``ctx.provider_money(value, currency)`` (the manifest's ``currency_exponents``);
- read credentials: ``ctx.credentials.reveal("api_key")``;
- send: ``response = await ctx.send("POST", "/v1/payments", json=body)``. The URL is resolved
  against the manifest's base URL for the environment, the provider idempotency header is added
  from the manifest, timeouts come from the deadline, and 3xx/429/5xx replies and transport
  failures raise the errors of ``sdk.outcomes``; 2xx and 4xx replies are returned to parse;
- sign what goes on the wire: ``ctx.send(..., sign=(Digest(), CavageSignature(...)))``
  (``sdk.signing``: the signature covers the card the egress transport writes in); a manifest
  with ``client_tls`` has every https request present the credentials' TLS client
  certificate (``sdk.client_tls``), with nothing to do here;
- turn a provider error code into a declined result: ``return ctx.decline(code, message)``
  (through the connector's ``ErrorMap``; unmapped codes are counted);
- log with ``ctx.logger`` (bound to connector, operation, tenant, correlation id).

It also knows whether any request of the call may have reached the provider, which is how a
deadline that fires mid-call becomes ``not_sent`` or ``unknown``.
"""

from __future__ import annotations

import functools
import json as jsonlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx
import structlog
from structlog.typing import FilteringBoundLogger

from normalization import CardMethod, Money, PaymentResult
from sdk.client_tls import CLIENT_CREDENTIALS_EXTENSION
from sdk.credentials import Credentials
from sdk.deadline import Deadline
from sdk.egress import SCOPE_EXTENSION, SIGNERS_EXTENSION, EgressScope, content_length_header
from sdk.error_map import ErrorMap
from sdk.http import ProviderClient
from sdk.manifest import Manifest
from sdk.outcomes import check_response_status
from sdk.placeholders import CardPlaceholders, PlaceholderTable
from sdk.revealer import TokenRevealer
from sdk.scrubbing import Scrubber
from sdk.signing import RequestSigner
from sdk.transcript import TranscriptRecorder

__all__ = ["CallContext"]

_LOGGER: FilteringBoundLogger = structlog.get_logger("tessera.sdk")

#: Parsed provider URLs (a connector sends to the same few paths over and over).
_parse_url = functools.lru_cache(maxsize=512)(httpx.URL)

_FRAMING_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding"})


def _compact_json(value: Any) -> bytes:
    text = jsonlib.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def _plain_json(value: Any) -> bytes:
    return jsonlib.dumps(value).encode("utf-8")


def _httpx_json_encoding() -> Callable[[Any], bytes] | None:
    """The JSON body encoding of the installed httpx (it changed between versions), or None
    when it is neither known one (``_direct_request`` then always defers to httpx)."""
    probe = {"a": [1, "é", None, True, 1.5], "b": {"c": "d"}}
    built = httpx.Request("POST", "http://probe.invalid/", json=probe)
    if built.headers.get("content-type") != "application/json":
        return None
    for encode in (_compact_json, _plain_json):
        if encode(probe) == built.content:
            return encode
    return None


_JSON_ENCODING = _httpx_json_encoding()


def _direct_request(
    http: httpx.AsyncClient,
    method: str,
    url: httpx.URL,
    json: Any,
    content: object,
    headers: Mapping[str, str],
    timeout: httpx.Timeout,
) -> httpx.Request | None:
    """The request ``http.build_request`` would build, built in a fraction of its CPU, or None
    where this does not know it would come out the same (then httpx builds it).

    Same headers in the same order (the client's defaults not in ``headers``, ``headers``,
    then the body's ``Content-Length``/``Content-Type`` unless given, ``Host`` first), same
    body bytes (httpx's own JSON encoding), same timeout extension. ``test_context`` compares
    the two.
    """
    if _JSON_ENCODING is None or http.params:
        return None
    if not isinstance(http, ProviderClient) and http.cookies:
        return None
    given: list[tuple[bytes, bytes]] = []
    pairs: Iterable[tuple[object, object]] = headers.items()  # connectors may pass anything
    for key, text in pairs:
        if not (isinstance(key, str) and isinstance(text, str)):
            return None  # httpx's error, not ours
        given.append((key.encode("ascii"), text.encode("ascii")))  # as httpx encodes them
    overridden = {name.lower() for name, _ in given}
    if overridden & _FRAMING_HEADERS:
        return None
    # httpx's Headers.update: the client's defaults minus those given, then those given.
    wire = [pair for pair in http.headers.raw if pair[0].lower() not in overridden]
    wire.extend(given)
    names = overridden | {name.lower() for name, _ in wire}
    body = b""
    json_type = False
    if content is not None:
        if not isinstance(content, (bytes, str)):
            return None  # an iterable: httpx streams it
        body = content.encode("utf-8") if isinstance(content, str) else content
    elif json is not None:
        body = _JSON_ENCODING(json)
        json_type = b"content-type" not in names
    front = [(b"Host", url.netloc)]
    length = content_length_header(method, body)
    if length is not None:
        # where httpx puts it: after the headers for a body, right after Host for an empty one
        (wire if body else front).append(length)
    if json_type:
        wire.append((b"Content-Type", b"application/json"))
    request = httpx.Request(
        method,
        url,
        headers=front + wire,
        stream=httpx.ByteStream(body),
        extensions={"timeout": timeout.as_dict()},
    )
    request.read()
    return request


class CallContext:
    """Per-call context; see the module docstring. Built by the runtime, not by connectors."""

    def __init__(
        self,
        *,
        manifest: Manifest,
        operation: str,
        tenant: str,
        deadline: Deadline,
        http: httpx.AsyncClient,
        base_url: str,
        credentials: Credentials | None = None,
        revealer: TokenRevealer | None = None,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        attempt: int = 1,
        error_map: ErrorMap | None = None,
        transcript: TranscriptRecorder | None = None,
        on_unmapped_code: Callable[[str | None], None] | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.manifest = manifest
        self.operation = operation
        self.tenant = tenant
        self.deadline = deadline
        self.idempotency_key = idempotency_key
        self.correlation_id = correlation_id
        self.attempt = attempt
        self.credentials = credentials if credentials is not None else Credentials()
        self.base_url = base_url.rstrip("/")
        self.logger: FilteringBoundLogger = _LOGGER.bind(
            connector=manifest.id,
            operation=operation,
            tenant=tenant,
            correlation_id=correlation_id,
            attempt=attempt,
        )
        self._http = http
        self._error_map = error_map if error_map is not None else ErrorMap({})
        self._on_unmapped_code = on_unmapped_code
        self._connect_timeout = connect_timeout
        self._scope = EgressScope(
            connector_id=manifest.id,
            operation=operation,
            tenant=tenant,
            placeholders=PlaceholderTable(),
            revealer=revealer,
            scrubber=Scrubber(self.credentials.secret_values()),
            transcript=transcript,
            sensitive_headers=manifest.sensitive_headers,
        )

    def __repr__(self) -> str:
        return (
            f"CallContext(connector={self.manifest.id!r}, operation={self.operation!r}, "
            f"tenant={self.tenant!r}, attempt={self.attempt})"
        )

    @property
    def connector_id(self) -> str:
        return self.manifest.id

    @property
    def may_have_reached_provider(self) -> bool:
        """Whether any request of this call may have reached the provider."""
        return self._scope.may_have_reached_provider

    @property
    def network_attempted(self) -> bool:
        """Whether any request of this call got as far as the network (past detokenization)."""
        return bool(self._scope.trackers)

    # -- secrets --------------------------------------------------------------------------------

    def secret(self, value: str) -> str:
        """Mark ``value``, a secret the connector obtained at run time (an OAuth access token, a
        session id, a signing nonce), as one: every exchange this call records (transcripts,
        cassettes) shows ``[REDACTED]`` wherever it appears, as it does for the configured
        credentials. Returns ``value``: ``headers={"X-Session": ctx.secret(session)}``."""
        self._scope.scrubber = self._scope.scrubber.with_secrets((value,))
        return value

    # -- card data ------------------------------------------------------------------------------

    def card(self, method: CardMethod) -> CardPlaceholders:
        """Placeholders for the card of ``method``; see ``sdk.placeholders``."""
        return self._scope.placeholders.card(method)

    # -- amounts ---------------------------------------------------------------------------------

    def provider_minor(self, amount: Money) -> int:
        """``amount`` as the provider's minor-unit integer: under the manifest's
        ``currency_exponents`` where it declares one for the currency (HUF as 2 decimals, say),
        else ISO 4217's. Raises ``InvalidAmountError`` for an amount the provider's form cannot
        carry exactly."""
        return amount.to_provider_minor(self.manifest.exponent_for(amount.currency))

    def provider_money(self, value: int, currency: str) -> Money:
        """A minor-unit integer from the provider's reply, read as ``provider_minor`` wrote it."""
        exponent = self.manifest.exponent_for(currency)
        if exponent is None:
            return Money.of(value, currency)
        return Money.from_provider_minor(value, currency, exponent)

    # -- HTTP -----------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """``path`` resolved against the base URL; absolute URLs pass (the policy checks them)."""
        if path.startswith(("https://", "http://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    async def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        check_status: bool = True,
        sign: RequestSigner | tuple[RequestSigner, ...] | None = None,
    ) -> httpx.Response:
        """Send one request to the provider; see the module docstring for what it adds.

        ``sign``: signers of ``sdk.signing`` (a body digest, an HTTP message signature, a
        detached JWS), applied in order by the egress transport to the bytes as sent."""
        merged = dict(headers or {})
        idempotency = self.manifest.idempotency
        if idempotency is not None and idempotency.header and self.idempotency_key:
            own = [v for k, v in merged.items() if k.lower() == idempotency.header.lower()]
            if not own:
                merged[idempotency.header] = self.idempotency_key
            elif own != [self.idempotency_key]:
                # Kept (a provider may want the key reshaped), but said: a key of the
                # connector's own (a fresh UUID per call) makes a retry a second payment.
                self.logger.warning("connector_idempotency_key_replaced", header=idempotency.header)
        if self.correlation_id and not any(k.lower() == "x-request-id" for k in merged):
            merged["X-Request-Id"] = self.correlation_id
        remaining = max(self.deadline.remaining(), 0.001)
        timeout = httpx.Timeout(remaining, connect=min(self._connect_timeout, remaining))
        url = _parse_url(self.url(path))
        request = None
        if data is None and params is None:
            request = _direct_request(self._http, method, url, json, content, merged, timeout)
            if request is not None:
                request.extensions[SCOPE_EXTENSION] = self._scope
        if request is None:
            request = self._http.build_request(
                method,
                url,
                json=json,
                data=data,
                content=content,
                headers=merged,
                params=params,
                timeout=timeout,
                extensions={SCOPE_EXTENSION: self._scope},
            )
        if sign is not None:  # checked by the egress transport, before the card is revealed
            request.extensions[SIGNERS_EXTENSION] = sign
        if self.manifest.client_tls:  # mutual TLS: the network transport reads them
            request.extensions[CLIENT_CREDENTIALS_EXTENSION] = self.credentials
        started = time.perf_counter()
        response = await self._http.send(request)
        self.logger.debug(
            "provider_exchange",
            method=method,
            path=request.url.path,
            status=response.status_code,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        if check_status:
            check_response_status(response)
        return response

    # -- results --------------------------------------------------------------------------------

    def decline(
        self,
        provider_code: str | None,
        message: str = "",
        *,
        provider_reference: str | None = None,
        retry_after: float | None = None,
    ) -> PaymentResult:
        """The declined result for a provider error code, through the connector's error map."""
        return self._error_map.result(
            provider_code,
            message,
            provider_reference=provider_reference,
            retry_after=retry_after,
            on_unmapped=self._report_unmapped,
        )

    def _report_unmapped(self, provider_code: str | None) -> None:
        self.logger.warning("unmapped_provider_code", provider_code=(provider_code or "")[:100])
        if self._on_unmapped_code is not None:
            self._on_unmapped_code(provider_code)
