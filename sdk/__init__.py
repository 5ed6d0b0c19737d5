"""What a connector author needs: the ``Connector`` base and capability manifest, the per-call
HTTP context with egress detokenization, outcome classification, error maps, webhook verification,
the resilience runtime (breaker, bulkhead, retry, deadline), the entry-point registry, testing
helpers (``sdk.testing``) and the generator (``sdk.generator``, templates in ``sdk/templates``).

Imports ``normalization`` only; card data is revealed through an injected ``TokenRevealer``.

Modules:

| module | holds |
| --- | --- |
| ``operations`` | ``Operation``, the verb of each, open-banking request types |
| ``manifest`` | ``Manifest`` and its parts |
| ``connector`` | the ``Connector`` base class and its load-time validation |
| ``context`` | ``CallContext``: send, card placeholders, credentials, declines |
| ``placeholders`` / ``egress`` | card placeholders and the transport that substitutes them |
| ``signing`` | request signers the egress transport applies to the wire bytes |
| ``client_tls`` | mutual TLS: the client certificate a ``client_tls`` connector presents |
| ``hostpolicy`` / ``http`` | where calls may go; the pooled, TLS-strict client |
| ``outcomes`` | transport/HTTP failures mapped to ``not_sent`` / ``unknown`` |
| ``error_map`` | provider codes onto normalized decline codes |
| ``forms`` | Stripe-style bracketed form bodies |
| ``scrubbing`` / ``transcript`` | card data and credentials out of recorded exchanges |
| ``resilience`` | ``ConnectorRuntime``: breaker, bulkhead, deadline, retries, metrics |
| ``registry`` | entry-point discovery, validation, ``tessera connector list`` output |
| ``webhooks`` | HMAC verification, replay window, event dedup |
| ``revealer`` / ``credentials`` / ``deadline`` | the seams and values above rely on |
"""

from sdk.connector import Connector, implemented_operations, validate_connector_class
from sdk.context import CallContext
from sdk.credentials import Credentials
from sdk.deadline import Deadline
from sdk.error_map import ErrorMap, ErrorMapping
from sdk.forms import bracketed_form
from sdk.hostpolicy import DestinationRefusedError, HostPolicy
from sdk.http import HttpSettings, build_http_client
from sdk.manifest import (
    BaseUrls,
    Category,
    CredentialField,
    Environment,
    IdempotencySupport,
    Manifest,
    MultiSupport,
)
from sdk.operations import CompleteAuthorizationRequest, Operation, SubmitRequest
from sdk.outcomes import (
    OutcomeUnknownError,
    ProviderAuthenticationError,
    ProviderHttpError,
    ProviderServerError,
    ProviderThrottledError,
    RequestNotSentError,
    ResponseTooLargeError,
    RetryableProviderError,
    TransportFault,
    UnexpectedRedirectError,
)
from sdk.placeholders import CardField, CardPlaceholder, CardPlaceholders, MissingCardDataError
from sdk.registry import (
    ENTRY_POINT_GROUP,
    BrokenPlugin,
    ConnectorRegistry,
    describe_manifest,
    format_broken_plugins,
    format_manifest_table,
    load_connectors,
    load_registry,
    register_connector,
    unregister_connector,
)
from sdk.resilience import (
    BreakerSettings,
    BulkheadSettings,
    ConnectorMetrics,
    ConnectorRuntime,
    RetrySettings,
    RuntimeSettings,
)
from sdk.revealer import RevealedCard, TokenRevealer
from sdk.scrubbing import Scrubber
from sdk.signing import (
    CavageSignature,
    ContentDigest,
    DetachedJws,
    Digest,
    MessageSignature,
    RequestSigner,
)
from sdk.transcript import Exchange, TranscriptRecorder
from sdk.webhooks import (
    EventStore,
    InMemoryEventStore,
    TimestampedHmacScheme,
    WebhookDeduplicator,
    WebhookEvent,
    WebhookRequest,
    WebhookVerificationError,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "BaseUrls",
    "BreakerSettings",
    "BrokenPlugin",
    "BulkheadSettings",
    "CallContext",
    "CardField",
    "CardPlaceholder",
    "CardPlaceholders",
    "Category",
    "CavageSignature",
    "CompleteAuthorizationRequest",
    "Connector",
    "ConnectorMetrics",
    "ConnectorRegistry",
    "ConnectorRuntime",
    "ContentDigest",
    "CredentialField",
    "Credentials",
    "Deadline",
    "DestinationRefusedError",
    "DetachedJws",
    "Digest",
    "Environment",
    "ErrorMap",
    "ErrorMapping",
    "EventStore",
    "Exchange",
    "HostPolicy",
    "HttpSettings",
    "IdempotencySupport",
    "InMemoryEventStore",
    "Manifest",
    "MessageSignature",
    "MissingCardDataError",
    "MultiSupport",
    "Operation",
    "OutcomeUnknownError",
    "ProviderAuthenticationError",
    "ProviderHttpError",
    "ProviderServerError",
    "ProviderThrottledError",
    "RequestNotSentError",
    "RequestSigner",
    "ResponseTooLargeError",
    "RetrySettings",
    "RetryableProviderError",
    "RevealedCard",
    "RuntimeSettings",
    "Scrubber",
    "SubmitRequest",
    "TimestampedHmacScheme",
    "TokenRevealer",
    "TranscriptRecorder",
    "TransportFault",
    "UnexpectedRedirectError",
    "WebhookDeduplicator",
    "WebhookEvent",
    "WebhookRequest",
    "WebhookVerificationError",
    "bracketed_form",
    "build_http_client",
    "describe_manifest",
    "format_broken_plugins",
    "format_manifest_table",
    "implemented_operations",
    "load_connectors",
    "load_registry",
    "register_connector",
    "unregister_connector",
    "validate_connector_class",
]
