"""Outcome certainty: every way a provider call can fail, mapped once, to what it means.

Transport failures (raised by ``CallContext.send``, from httpx errors)::

    ConnectorError
    ├── TransportFault
    │   ├── RequestNotSentError     outcome not_sent  refused, DNS, connect/pool timeout, TLS
    │   │   │                                         failure: nothing reached the provider
    │   │   └── ClientCertificateRefusedError         the server's TLS alert refused the client
    │   │                                             certificate: not retried
    │   └── OutcomeUnknownError     outcome unknown   write error, read timeout, reset, truncated
    │                                                 reply: the provider may have acted
    └── ProviderError
        ├── ProviderHttpError
        │   ├── ProviderServerError       5xx       counted by the breaker; retried only for
        │   │                                       operations declared safe to retry
        │   ├── ProviderThrottledError    429       Retry-After honoured
        │   ├── ProviderAuthenticationError 401     the provider refused the connector's
        │   │                                       credentials: outcome not_sent, counted by
        │   │                                       the breaker, never retried
        │   └── UnexpectedRedirectError   3xx       redirects are never followed
        ├── ResponseTooLargeError                   the reply exceeded the size limit
        └── RetryableProviderError                  an error-map entry marked retryable

The boundary between ``not_sent`` and ``unknown`` is *the request started being written*. The
egress transport watches the network transport's trace events (httpcore's
``http11.send_request_headers.started``, or the aiohttp transport's
``aiohttp.send_request_headers.started``), so a failure before the first byte of the request is
``not_sent`` whatever exception carried it; without trace events (mock transports)
the exception type decides, conservatively. One failure after the first byte is ``not_sent``
too: the server's TLS alert refusing the client certificate (or its absence). With TLS 1.3 the
client finishes its half of the handshake and writes the request before the server has judged
its certificate, and the alert arrives in place of the reply; a server that refuses the
certificate has not processed the request (``certificate_refusal``). It is a
``ClientCertificateRefusedError``, which the runtime does not retry (it would be refused again).

4xx replies other than 401 and 429 are not errors here: the connector parses them and maps
provider codes through its ``ErrorMap`` into declined results. A 401 is the gateway's problem,
not the payer's (a wrong or revoked API key): read as a decline it told the merchant the card
was refused, never tripped the breaker and never stopped a failover. A 403 stays the
connector's: providers use it for refusals of the payment too.
"""

from __future__ import annotations

import email.utils
import ssl
import time
from typing import ClassVar

import httpx

from normalization import ConnectorError, Outcome, PaymentResult, ProviderError

__all__ = [
    "ClientCertificateRefusedError",
    "OutcomeUnknownError",
    "ProviderAuthenticationError",
    "ProviderHttpError",
    "ProviderServerError",
    "ProviderThrottledError",
    "RequestNotSentError",
    "ResponseTooLargeError",
    "RetryableProviderError",
    "TransportFault",
    "UnexpectedRedirectError",
    "certificate_refusal",
    "check_response_status",
    "classify_transport_error",
    "parse_retry_after",
    "transport_fault",
]

# Exceptions that can only happen before any byte of the request was written.
_NOT_SENT_TYPES: tuple[type[httpx.HTTPError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
)

#: The TLS alerts (OpenSSL's ``reason``) a server sends when it refuses the client's certificate,
#: or its absence, during the handshake.
_CERTIFICATE_REFUSALS = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
        "TLSV1_ALERT_DECRYPT_ERROR",
    }
)

_MAX_RETRY_AFTER_SECONDS = 3600.0


class TransportFault(ConnectorError):
    """The exchange with the provider broke; ``outcome`` says whether it may have acted."""

    outcome: ClassVar[Outcome] = Outcome.UNKNOWN


class RequestNotSentError(TransportFault):
    code = "connector_not_sent"
    default_detail = "Nothing reached the provider."
    outcome = Outcome.NOT_SENT


class ClientCertificateRefusedError(RequestNotSentError):
    code = "connector_certificate_refused"
    default_detail = "The provider refused the TLS client certificate, or its absence."


class OutcomeUnknownError(TransportFault):
    code = "connector_outcome_unknown"
    default_detail = "The exchange broke after the request was sent; the outcome is unknown."
    outcome = Outcome.UNKNOWN


class ProviderHttpError(ProviderError):
    """The provider answered with a status the connector must not parse as a result."""

    def __init__(
        self, status_code: int, detail: str | None = None, *, retry_after: float | None = None
    ) -> None:
        self.status_code = status_code
        super().__init__(
            detail if detail is not None else f"The provider answered HTTP {status_code}.",
            retry_after=retry_after,
        )


class ProviderServerError(ProviderHttpError):
    code = "provider_error"


class ProviderThrottledError(ProviderHttpError):
    code = "provider_throttled"


class UnexpectedRedirectError(ProviderHttpError):
    code = "provider_redirect"


class ProviderAuthenticationError(ProviderHttpError):
    code = "provider_credentials_refused"


class ResponseTooLargeError(ProviderError):
    code = "provider_response_too_large"
    default_detail = "The provider's reply exceeded the size limit."


class RetryableProviderError(ProviderError):
    """The provider refused with a code its error map marks retryable (it did not act).

    The runtime retries within the deadline; when it gives up, ``result`` (the declined result
    the code maps to) is what the call returns.
    """

    code = "provider_retryable"

    def __init__(self, result: PaymentResult, *, retry_after: float | None = None) -> None:
        self.result = result
        super().__init__("The provider asked for a retry.", retry_after=retry_after)


def classify_transport_error(exc: httpx.HTTPError, *, write_started: bool | None) -> Outcome:
    """``not_sent`` or ``unknown`` for an httpx failure.

    ``write_started`` is what the transport observed: False (trace events seen, none of them the
    start of the request), True, or None (no trace: decide by exception type).
    """
    if write_started is False or isinstance(exc, _NOT_SENT_TYPES):
        return Outcome.NOT_SENT
    if certificate_refusal(exc) is not None:
        return Outcome.NOT_SENT
    return Outcome.UNKNOWN


def certificate_refusal(exc: BaseException) -> str | None:
    """The TLS alert with which the server refused the client certificate (or the lack of one),
    found among ``exc`` and its causes, or None. See the module docstring."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # getattr: aiohttp's ClientConnectorSSLError is an SSLError without OpenSSL's fields
        reason = getattr(current, "reason", None) if isinstance(current, ssl.SSLError) else None
        if reason in _CERTIFICATE_REFUSALS:
            return str(reason)
        current = current.__cause__ or current.__context__
    return None


def transport_fault(exc: httpx.HTTPError, *, write_started: bool | None) -> TransportFault:
    """The SDK error for an httpx failure; its text names the failure type, never the request."""
    kind = type(exc).__name__
    refusal = certificate_refusal(exc)
    if refusal is not None:
        return ClientCertificateRefusedError(
            f"The provider refused the TLS client certificate, or its absence ({refusal}): "
            "check the connector's client_tls and tls_client_* credentials."
        )
    if classify_transport_error(exc, write_started=write_started) is Outcome.NOT_SENT:
        return RequestNotSentError(f"Nothing reached the provider ({kind}).")
    return OutcomeUnknownError(f"The exchange broke after the request was sent ({kind}).")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), bounded."""
    if value is None:
        return None
    value = value.strip()
    seconds: float
    if value.isascii() and value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_SECONDS)


def check_response_status(response: httpx.Response) -> None:
    """Raise for 3xx, 401, 429 and 5xx; 2xx and other 4xx are the connector's to parse."""
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if status == 401:
        raise ProviderAuthenticationError(
            status, "The provider refused the connector's credentials (HTTP 401)."
        )
    if 300 <= status < 400:
        raise UnexpectedRedirectError(
            status, f"The provider answered HTTP {status} (redirects are not followed)."
        )
    if status == 429:
        raise ProviderThrottledError(status, retry_after=retry_after)
    if status >= 500:
        raise ProviderServerError(status, retry_after=retry_after)
