"""Persistence and reliability under the payments API.

- ``store``: ``PaymentStore`` (payments, attempts, refunds, received webhook events) with the
  normalization state machine and optimistic concurrency; ``records``: what it returns;
  ``schema``: its tables and the row <-> record mapping.
- ``idempotency``: ``IdempotencyStore.run``, Stripe's Idempotency-Key semantics across processes.
- ``outbox``: ``Outbox`` (notifications enqueued in the payment's own transaction),
  ``NotificationDispatcher`` (signed, retried, lease-claimed delivery to merchants) and
  ``delivery_session`` (the aiohttp session it builds for itself and posts with, guarded against
  internal addresses).
- ``signatures``: the ``Tessera-Signature`` scheme; ``backoff``: exponential backoff with jitter
  and the reconciliation schedule; ``instants``: how times are stored.

Imports ``vault.database`` (the SQL interface), ``vault.clock``, ``normalization``, the SDK's
address guard (``sdk.hostpolicy``, ``sdk.aiohttp_transport.GuardedResolver``) and the gateway's
``merchants`` and ``problems``; never a connector.
"""

from gateway.payments.backoff import ExponentialBackoff, ReconcilePolicy
from gateway.payments.idempotency import (
    HandlerResult,
    IdempotencyClaim,
    IdempotencyStore,
    IdempotentResponse,
    validate_idempotency_key,
)
from gateway.payments.outbox import (
    DispatchReport,
    Notification,
    NotificationDispatcher,
    NotificationStatus,
    Outbox,
    delivery_session,
)
from gateway.payments.records import (
    KEEP,
    AttemptRecord,
    ConcurrentUpdateError,
    MigrationConflictError,
    OperationInProgressError,
    PaymentMethodSummary,
    PaymentRecord,
    RefundRecord,
    RefundStatus,
    Unchanged,
    provider_idempotency_key,
)
from gateway.payments.signatures import (
    SIGNATURE_HEADER,
    InvalidSignatureError,
    sign_payload,
    verify_signature,
)
from gateway.payments.store import PaymentStore

__all__ = [
    "KEEP",
    "SIGNATURE_HEADER",
    "AttemptRecord",
    "ConcurrentUpdateError",
    "DispatchReport",
    "ExponentialBackoff",
    "HandlerResult",
    "IdempotencyClaim",
    "IdempotencyStore",
    "IdempotentResponse",
    "InvalidSignatureError",
    "MigrationConflictError",
    "Notification",
    "NotificationDispatcher",
    "NotificationStatus",
    "OperationInProgressError",
    "Outbox",
    "PaymentMethodSummary",
    "PaymentRecord",
    "PaymentStore",
    "ReconcilePolicy",
    "RefundRecord",
    "RefundStatus",
    "Unchanged",
    "delivery_session",
    "provider_idempotency_key",
    "sign_payload",
    "validate_idempotency_key",
    "verify_signature",
]
