"""What the payment store holds: frozen records, their enums, ids and provider idempotency keys.

- ``PaymentRecord``: one merchant payment, its running amounts (minor units) and its current
  status. ``status`` is ``None`` until a connector has answered (the state machine's "new").
- ``AttemptRecord``: one connector call (authorize, capture, void, refund, sync, ...) with its
  outcome certainty. ``outcome is None`` means the call is in flight, or its process died before
  writing the answer: reconciliation picks those up after a grace period.
- ``RefundRecord``: one refund of a payment, partial or whole.
- ``PaymentMethodSummary``: what is kept of the payment method. Never a PAN or a CVV: a token
  id, a brand, the last four digits, a masked bank account. Construction refuses anything that
  looks like a card number, so a PAN passed into the wrong field never reaches the database.

``provider_idempotency_key`` derives the key sent to the provider from (merchant, payment,
attempt sequence, operation), so a retry of the same attempt after a crash re-sends the same key.

Also the store's vocabulary: ``KEEP`` ("leave this field as it is") and
``ConcurrentUpdateError`` (a stale write lost to another writer: re-read and retry), and its
``OperationInProgressError`` (a money-moving operation on the payment is still open).
"""

from __future__ import annotations

import re
import secrets
import string
import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import Enum, StrEnum
from typing import Any, Final, Literal

from normalization import (
    Decline,
    InvalidRequestError,
    Money,
    NextAction,
    Outcome,
    PaymentState,
    PaymentStatus,
    TesseraError,
    contains_pan,
)
from normalization.methods import BankAccountMethod, CardMethod, OpenBankingMethod

__all__ = [
    "KEEP",
    "AttemptRecord",
    "ConcurrentUpdateError",
    "MigrationConflictError",
    "OperationInProgressError",
    "PaymentMethodSummary",
    "PaymentRecord",
    "RefundRecord",
    "RefundStatus",
    "Unchanged",
    "new_id",
    "provider_idempotency_key",
]

_BASE62 = string.ascii_letters + string.digits
_ID_LENGTH = 24

# A fixed namespace: provider keys must be the same in every process and after every restart.
_PROVIDER_KEY_NAMESPACE = uuid.UUID("6f1c2a0e-4b7d-5c3e-9a8f-7d2b1e0c9a41")


_ID_SPACE = len(_BASE62) ** _ID_LENGTH
_ID_SOURCE_BYTES = 32  # 256 random bits reduced mod 62**24 (~143 bits): bias below 2**-113


def new_id(prefix: str) -> str:
    """``<prefix>_`` + 24 random base62 characters (about 143 bits).

    One call to the CSPRNG and integer arithmetic: 24 ``secrets.choice`` calls cost ~5x more,
    and a payment makes several ids.
    """
    n = int.from_bytes(secrets.token_bytes(_ID_SOURCE_BYTES), "big") % _ID_SPACE
    chars = []
    for _ in range(_ID_LENGTH):
        n, digit = divmod(n, 62)
        chars.append(_BASE62[digit])
    return f"{prefix}_" + "".join(chars)


def provider_idempotency_key(
    merchant_id: str, payment_id: str, attempt_seq: int, operation: str
) -> str:
    """The idempotency key sent to the provider for one attempt: a UUIDv5 of its identity.

    Deterministic, so the retry of an attempt whose process crashed after the provider acted
    re-sends the same key and the provider answers with the first result instead of acting twice.
    Nothing secret goes in (payment ids are random), so a UUIDv5 needs no key management.
    """
    name = f"{merchant_id}\x1f{payment_id}\x1f{attempt_seq}\x1f{operation}"
    return str(uuid.uuid5(_PROVIDER_KEY_NAMESPACE, name))


class ConcurrentUpdateError(TesseraError):
    """Another writer changed the payment since it was read. Re-read and try again."""

    code = "concurrent_update"
    default_detail = "The payment was changed by a concurrent request; retry."

    def __init__(self, detail: str | None = None, *, retry_after: float | None = 1.0) -> None:
        super().__init__(detail, retry_after=retry_after)


class MigrationConflictError(TesseraError):
    """The database holds rows a migration's constraints forbid; an operator must settle them
    first (the message names them)."""

    code = "migration_conflict"
    default_detail = "The database holds rows a migration cannot accept."


class OperationInProgressError(ConcurrentUpdateError):
    """Another operation that moves money on this payment (capture, void, refund, completing an
    authorization, submitting a consent) has started and its outcome is not known yet: sent and
    unanswered, or answered ``unknown`` and awaiting reconciliation. Nothing was sent; retry
    once it settles."""

    code = "operation_in_progress"
    default_detail = (
        "Another operation on this payment is in progress or its outcome is not known yet; "
        "nothing was done. Retry once it has settled."
    )


class _Keep(Enum):
    KEEP = "keep"


#: "Leave this field as it is" for ``PaymentStore.apply`` (``None`` clears a field).
KEEP: Final = _Keep.KEEP
#: The type of ``KEEP``, for signatures that accept it.
Unchanged = Literal[_Keep.KEEP]


class RefundStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class PaymentMethodSummary:
    """The payment method as stored and shown: a reference and masked details, never card data."""

    type: str
    token: str | None = None
    brand: str | None = None
    last4: str | None = None
    masked_account: str | None = None
    country: str | None = None
    scheme: str | None = None

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, str) and contains_pan(value):
                # The message names the field, never the value.
                raise InvalidRequestError(
                    f"payment_method.{item.name} looks like a card number; it is not stored."
                )
        if self.last4 is not None and not re.fullmatch(r"[0-9]{4}", self.last4, re.ASCII):
            raise InvalidRequestError("payment_method.last4 must be 4 digits.")

    @classmethod
    def of(
        cls,
        method: CardMethod | BankAccountMethod | OpenBankingMethod,
        *,
        token: str | None = None,
        brand: str | None = None,
        last4: str | None = None,
    ) -> PaymentMethodSummary:
        """Summarize a validated payment method.

        For a card paid inline, pass the ``token`` it was tokenized into (and its brand and
        last4 from the token's masked metadata): the inline card itself is never summarized.
        """
        if isinstance(method, CardMethod):
            return cls(type="card", token=token or method.token, brand=brand, last4=last4)
        if isinstance(method, BankAccountMethod):
            return cls(
                type="bank_account", masked_account=method.masked_account, country=method.country
            )
        return cls(type="open_banking", scheme=method.scheme.value)

    def to_json(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PaymentMethodSummary:
        known = {item.name for item in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    """One payment as persisted. Amounts are minor units of ``amount.currency``."""

    id: str
    merchant_id: str
    status: PaymentStatus | None
    amount: Money
    captured: int
    refunded: int
    capture: bool
    connector: str | None
    reference: str | None
    metadata: dict[str, str]
    payment_method: PaymentMethodSummary
    return_url: str | None
    provider_reference: str | None
    next_action: NextAction | None
    decline: Decline | None
    created_at: datetime
    updated_at: datetime
    version: int

    @property
    def state(self) -> PaymentState:
        """The state-machine view of this payment."""
        return PaymentState(
            status=self.status, amount=self.amount, captured=self.captured, refunded=self.refunded
        )


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One connector call for a payment, numbered ``seq`` from 1 within the payment."""

    id: str
    payment_id: str
    seq: int
    connector: str
    operation: str
    provider_idempotency_key: str
    outcome: Outcome | None
    status: PaymentStatus | None
    provider_reference: str | None
    error_code: str | None
    amount: Money | None
    refund_id: str | None
    started_at: datetime
    finished_at: datetime | None
    next_reconcile_at: datetime | None
    reconcile_count: int

    @property
    def in_flight(self) -> bool:
        """Started and never finished: the call is running, or its process died mid-call."""
        return self.outcome is None

    @property
    def needs_reconciliation(self) -> bool:
        """The provider may have acted, or has not finished: sync before trusting the state."""
        return (
            self.outcome is None
            or self.outcome is Outcome.UNKNOWN
            or self.status is PaymentStatus.PENDING
        )


@dataclass(frozen=True, slots=True)
class RefundRecord:
    id: str
    payment_id: str
    amount: Money
    status: RefundStatus
    provider_reference: str | None
    created_at: datetime
    updated_at: datetime = field(compare=False)
