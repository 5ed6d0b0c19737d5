"""What a connector call produces: ``PaymentResult``, its status, outcome certainty and declines.

Every connector call ends in exactly one ``Outcome``:

- ``succeeded``: the provider answered and did what was asked (the status says how far).
- ``declined``: the provider answered and refused (``decline`` says why). A business outcome.
- ``not_sent``: nothing reached the provider; safe to retry or fail over.
- ``unknown``: the provider may have acted; never retried blindly, reconciled by sync/webhook.

Provider text kept on a result (a decline's message and provider code, the raw status) goes
through ``normalization.redaction`` whichever way the result is built: a provider that echoes
the card number or the security code in its message ("Card 4000...0002 declined", "CVC 123
does not match") cannot put them in the payments table, the API or a merchant notification.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, Field, model_validator

from normalization.errors import InvalidRequestError
from normalization.money import Money
from normalization.redaction import redact_card_numbers, redact_card_text
from normalization.validation import DomainModel, reraise_for_pydantic

__all__ = [
    "FINAL_STATUSES",
    "Decline",
    "DeclineCode",
    "NextAction",
    "Outcome",
    "PaymentResult",
    "PaymentStatus",
]


class PaymentStatus(StrEnum):
    REQUIRES_ACTION = "requires_action"
    PENDING = "pending"
    AUTHORIZED = "authorized"
    PARTIALLY_CAPTURED = "partially_captured"
    CAPTURED = "captured"
    VOIDED = "voided"
    DECLINED = "declined"
    FAILED = "failed"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    UNKNOWN = "unknown"


#: Statuses after which no provider operation can change the payment.
FINAL_STATUSES = frozenset(
    {PaymentStatus.VOIDED, PaymentStatus.DECLINED, PaymentStatus.FAILED, PaymentStatus.REFUNDED}
)


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    NOT_SENT = "not_sent"
    UNKNOWN = "unknown"


class DeclineCode(StrEnum):
    """Normalized decline and error codes. Connectors map provider codes onto these."""

    INSUFFICIENT_FUNDS = "insufficient_funds"
    DO_NOT_HONOR = "do_not_honor"
    EXPIRED_CARD = "expired_card"
    INCORRECT_CVC = "incorrect_cvc"
    INVALID_CARD_NUMBER = "invalid_card_number"
    INVALID_AMOUNT = "invalid_amount"
    INVALID_ACCOUNT = "invalid_account"
    FRAUD_SUSPECTED = "fraud_suspected"
    LOST_OR_STOLEN = "lost_or_stolen"
    CARD_NOT_SUPPORTED = "card_not_supported"
    CURRENCY_NOT_SUPPORTED = "currency_not_supported"
    AUTHENTICATION_REQUIRED = "authentication_required"
    AUTHENTICATION_FAILED = "authentication_failed"
    LIMIT_EXCEEDED = "limit_exceeded"
    RESTRICTED_CARD = "restricted_card"
    ACCOUNT_CLOSED = "account_closed"
    CONSENT_REJECTED = "consent_rejected"
    CONSENT_EXPIRED = "consent_expired"
    PAYMENT_RETURNED = "payment_returned"
    DUPLICATE_TRANSACTION = "duplicate_transaction"
    INVALID_REQUEST = "invalid_request"
    PROCESSING_ERROR = "processing_error"


def _redact_identifier(value: str) -> str:
    return redact_card_numbers(value, known_brand=True)


#: Free text from a provider: card numbers masked, security codes next to their name hidden.
ProviderText = Annotated[str, AfterValidator(redact_card_text)]
#: An identifier or address from a provider (its payment id, a redirect URL): stored, echoed to
#: the merchant and sent back to the provider, so a card number in one (a provider echoing the
#: PAN into its ids) is masked like one in free text. Such an id no longer finds the payment at
#: the provider; it was never safe to keep. Only numbers in a known brand's range count here:
#: one numeric id in ten (Adyen's 16-digit ``pspReference``) passes Luhn alone, and masking it
#: broke every capture, refund and sync of that payment.
ProviderValue = Annotated[str, AfterValidator(_redact_identifier)]


class Decline(DomainModel):
    """Why a provider refused: a normalized code, a message, and the provider's raw code."""

    code: DeclineCode
    message: Annotated[ProviderText, Field(max_length=500)] = ""
    provider_code: Annotated[ProviderText | None, Field(max_length=100)] = None


class NextAction(DomainModel):
    """What the customer must do next (3-D Secure, bank consent): follow a redirect."""

    type: Literal["redirect"] = "redirect"
    url: Annotated[ProviderValue, Field(pattern=r"^https?://", max_length=4096)]
    method: Literal["GET", "POST"] = "GET"
    data: dict[str, ProviderValue] = Field(default_factory=dict)


class PaymentResult(DomainModel):
    """The normalized result of one connector call."""

    status: PaymentStatus
    outcome: Outcome
    provider_reference: Annotated[ProviderValue | None, Field(max_length=200)] = None
    provider_references: dict[str, ProviderValue] = Field(default_factory=dict)
    amount_authorized: Money | None = None
    amount_captured: Money | None = None
    amount_refunded: Money | None = None
    decline: Decline | None = None
    next_action: NextAction | None = None
    raw_status: Annotated[ProviderText | None, Field(max_length=100)] = None

    @model_validator(mode="after")
    @reraise_for_pydantic
    def _consistent(self) -> Self:
        if self.outcome is Outcome.DECLINED and self.decline is None:
            raise InvalidRequestError("A declined result needs a decline reason.")
        if self.status is PaymentStatus.DECLINED and self.outcome is not Outcome.DECLINED:
            raise InvalidRequestError("A declined status comes with the declined outcome.")
        if self.status is PaymentStatus.REQUIRES_ACTION and self.next_action is None:
            raise InvalidRequestError("A requires_action result needs a next_action.")
        if self.outcome is Outcome.NOT_SENT and self.status not in (
            PaymentStatus.UNKNOWN,
            PaymentStatus.FAILED,
        ):
            raise InvalidRequestError("A not_sent outcome carries status 'failed' or 'unknown'.")
        # 'failed' is final: recording it for a call that may have succeeded would make the
        # reconciliation that follows an unknown outcome impossible.
        if self.outcome is Outcome.UNKNOWN and self.status is not PaymentStatus.UNKNOWN:
            raise InvalidRequestError("An unknown outcome carries status 'unknown'.")
        return self

    @classmethod
    def not_sent(cls, raw_status: str | None = None) -> Self:
        """Nothing reached the provider, or it refused the call before acting (``raw_status``
        says how: ``http_401``, ``http_429``): the attempt failed and may be retried
        elsewhere."""
        return cls(status=PaymentStatus.FAILED, outcome=Outcome.NOT_SENT, raw_status=raw_status)

    @classmethod
    def unknown(cls, provider_reference: str | None = None) -> Self:
        """The provider may have acted: reconcile before doing anything else."""
        return cls(
            status=PaymentStatus.UNKNOWN,
            outcome=Outcome.UNKNOWN,
            provider_reference=provider_reference,
        )

    @classmethod
    def declined(
        cls,
        code: DeclineCode,
        message: str = "",
        provider_code: str | None = None,
        provider_reference: str | None = None,
    ) -> Self:
        return cls(
            status=PaymentStatus.DECLINED,
            outcome=Outcome.DECLINED,
            decline=Decline(code=code, message=message, provider_code=provider_code),
            provider_reference=provider_reference,
        )
