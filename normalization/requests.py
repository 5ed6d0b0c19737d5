"""Normalized operation requests: what the gateway hands a connector.

Every request carries the merchant's ``reference``, an ``idempotency_key`` (the provider-facing
key, derived deterministically by the gateway so a retry after a crash reuses it) and
``metadata`` (string to string, bounded).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

from normalization.errors import InvalidAmountError
from normalization.methods import BankAccountMethod, OpenBankingMethod, PaymentMethod
from normalization.money import Money, currency_exponent
from normalization.validation import DomainModel, reraise_for_pydantic

__all__ = [
    "AuthorizeRequest",
    "CaptureRequest",
    "ConsentRequest",
    "DebitRequest",
    "Metadata",
    "OperationRequest",
    "PayoutRequest",
    "RefundRequest",
    "SyncRequest",
    "VerifyRequest",
    "VoidRequest",
]

MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=40)]
MetadataValue = Annotated[str, StringConstraints(max_length=500)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=50)]
Reference = Annotated[str, StringConstraints(min_length=1, max_length=128)]
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=255)]
Url = Annotated[str, StringConstraints(pattern=r"^https?://", max_length=2048)]


@reraise_for_pydantic
def _positive(amount: Money) -> Money:
    if amount.value <= 0:
        raise InvalidAmountError(
            "The amount must be greater than zero (use a verify request for zero-amount checks)."
        )
    return amount


@reraise_for_pydantic
def _known_currency(currency: str) -> str:
    currency_exponent(currency)
    return currency


#: An amount that moves money: at least one minor unit.
PositiveMoney = Annotated[Money, AfterValidator(_positive)]
CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$"), AfterValidator(_known_currency)]


class OperationRequest(DomainModel):
    """Fields every operation shares."""

    reference: Reference | None = None
    idempotency_key: IdempotencyKey | None = None
    metadata: Metadata = Field(default_factory=dict)


class AuthorizeRequest(OperationRequest):
    """Authorize, or purchase when ``capture`` is true."""

    amount: PositiveMoney
    payment_method: PaymentMethod
    capture: bool = False
    return_url: Url | None = None
    description: Annotated[str | None, Field(max_length=500)] = None
    country: Annotated[str | None, Field(pattern=r"^[A-Z]{2}$")] = None


class _FollowUp(OperationRequest):
    """An operation on an existing payment, addressed by both ids."""

    payment_id: Reference
    provider_reference: Annotated[str | None, Field(max_length=200)] = None


class CaptureRequest(_FollowUp):
    amount: PositiveMoney
    final: bool = True


class VoidRequest(_FollowUp):
    pass


class RefundRequest(_FollowUp):
    amount: PositiveMoney
    reason: Annotated[str | None, Field(max_length=200)] = None


class SyncRequest(_FollowUp):
    """Ask the provider for the current state (after ``unknown``, or to poll ``pending``)."""


class VerifyRequest(OperationRequest):
    """Zero-amount account/card verification."""

    payment_method: PaymentMethod
    currency: CurrencyCode


class PayoutRequest(OperationRequest):
    """Credit transfer to a bank account (bank rails)."""

    amount: PositiveMoney
    destination: BankAccountMethod
    description: Annotated[str | None, Field(max_length=140)] = None


class DebitRequest(OperationRequest):
    """Pull funds from a bank account (bank rails, e.g. ACH debit)."""

    amount: PositiveMoney
    source: BankAccountMethod
    description: Annotated[str | None, Field(max_length=140)] = None


class ConsentRequest(OperationRequest):
    """Create an open-banking payment consent; the customer then authorizes it at the bank."""

    amount: PositiveMoney
    payer: OpenBankingMethod
    return_url: Url
