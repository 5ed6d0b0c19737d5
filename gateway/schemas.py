"""Wire models of the gateway's HTTP API (requests and responses), shared with /openapi.json."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from gateway.payments.records import RefundStatus
from normalization import contains_pan
from normalization.methods import CardData, PaymentMethod, PaymentMethodType
from normalization.requests import Metadata, PositiveMoney
from normalization.results import Decline, NextAction, Outcome, PaymentStatus
from normalization.validation import DomainModel

__all__ = [
    "AmountRequest",
    "AttemptView",
    "BatchErrorDetail",
    "BatchItemError",
    "BatchTokenizeRequest",
    "BatchTokenizeResponse",
    "CaptureBody",
    "CardMetadata",
    "CompleteRequest",
    "CreatePaymentRequest",
    "DeclinedProblem",
    "FieldError",
    "Health",
    "MoneyView",
    "PaymentList",
    "PaymentMethodView",
    "PaymentView",
    "Problem",
    "Readiness",
    "RefundView",
    "TokenList",
    "TokenView",
    "TokenizeRequest",
    "WebhookReceipt",
    "parse_tokenize_request",
    "validate_card",
]

TokenFormatName = Literal["opaque", "numeric"]
_TTL_MIN, _TTL_MAX = 60, 10 * 366 * 86400
#: Token lifetimes: a minute to ten years; omitted means the token lives until deleted.
TtlSeconds = Annotated[int, Field(strict=True, ge=_TTL_MIN, le=_TTL_MAX)]


class TokenizeRequest(DomainModel):
    card: CardData
    format: TokenFormatName = "opaque"
    ttl_seconds: TtlSeconds | None = None


_TOKENIZE_FIELDS = frozenset(TokenizeRequest.model_fields)
_TOKEN_FORMAT_NAMES: tuple[TokenFormatName, ...] = get_args(TokenFormatName)


_validate_card = CardData.__pydantic_validator__.validate_python


def validate_card(value: Any) -> CardData:
    """``CardData`` from parsed JSON, as ``TypeAdapter(CardData).validate_python`` would.

    Errors come scrubbed by ``DomainModel``'s wrap validator, whose cost (≈ 0.5 µs a card since
    its wrapper stopped allocating) no longer warrants validating through a copy of the schema
    without it, as this function once did.
    """
    return _validate_card(value)  # type: ignore[no-any-return]


def parse_tokenize_request(data: Any) -> tuple[CardData, TokenFormatName, int | None]:
    """``(card, format, ttl_seconds)`` of a parsed ``POST /v1/tokens`` body.

    Same answer as ``TokenizeRequest.model_validate(data)``, for less: the request's own fields
    are checked here and only the card goes through pydantic (about a third of the cost of the
    whole model, on the hottest endpoint). Anything this shortcut does not accept as plainly
    valid, the card included, is validated again by the model, so a client gets exactly the
    model's answer, errors and all.
    """
    if type(data) is dict and "card" in data and _TOKENIZE_FIELDS.issuperset(data):
        token_format = data.get("format", "opaque")
        ttl_seconds = data.get("ttl_seconds")
        if token_format in _TOKEN_FORMAT_NAMES and (
            ttl_seconds is None
            or (type(ttl_seconds) is int and _TTL_MIN <= ttl_seconds <= _TTL_MAX)
        ):
            try:
                return validate_card(data["card"]), token_format, ttl_seconds
            except ValidationError:
                pass  # the model below reports it, with the field's location
    request = TokenizeRequest.model_validate(data)
    return request.card, request.format, request.ttl_seconds


class BatchTokenizeRequest(DomainModel):
    """Items are validated one by one so one bad card fails only its own slot."""

    cards: Annotated[
        list[Any],
        Field(
            min_length=1,
            # Items stay unconstrained in the schema: any item is accepted, and one that is not
            # a valid card fails alone (its slot in ``results`` holds the error), not the batch.
            description="Cards, each a `CardData` as in `POST /v1/tokens`; an item that is not "
            "a valid card gets an error in its slot of `results`, the others are tokenized. At "
            "most the gateway's `max_cards_per_request` (default 1,000; more is 413 "
            "`batch_too_large`).",
        ),
    ]
    format: TokenFormatName = "opaque"
    ttl_seconds: TtlSeconds | None = None


class _View(BaseModel):
    """A response shape; unknown fields are refused so that an undocumented field fails tests."""

    model_config = ConfigDict(extra="forbid")


class CardMetadata(_View):
    brand: str
    bin: str
    last4: str
    exp_month: int
    exp_year: int


class TokenView(_View):
    id: str
    fingerprint: str
    format: TokenFormatName
    card: CardMetadata
    created_at: str
    expires_at: str | None


class TokenList(_View):
    data: list[TokenView]
    has_more: bool = Field(description="More tokens follow: ask for `next_cursor`.")
    next_cursor: str | None = Field(description="`cursor` for the next page; null on the last.")


ConnectorId = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]

#: C0 and C1 control characters and DEL: never part of an identifier or a URL.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _refuse_control_characters(value: str) -> str:
    if CONTROL_CHARACTERS.search(value):
        raise PydanticCustomError(
            "invalid_request", "The field must not contain control characters."
        )
    return value


def _refuse_nul(value: str) -> str:
    # Free text may hold newlines and tabs; NUL is refused everywhere (PostgreSQL cannot store
    # it in text, and it truncates strings in the merchant's and providers' C-based tooling).
    if "\x00" in value:
        raise PydanticCustomError("invalid_request", "The field must not contain NUL characters.")
    return value


#: For identifiers: they are stored, searched with ?reference= and put into URLs and headers.
_NoControlCharacters = AfterValidator(_refuse_control_characters)
#: For free text and what a bank or challenge page returns.
_NoNul = AfterValidator(_refuse_nul)


_POSITIVE = "At least one minor unit (`value` >= 1): 422 `invalid_amount` otherwise."


class CreatePaymentRequest(DomainModel):
    """``POST /v1/payments``."""

    #: Positive here, before anything is written (a zero amount left a payment behind).
    amount: Annotated[PositiveMoney, Field(description=_POSITIVE)]
    payment_method: PaymentMethod
    #: Strict: ``"false"`` or ``0`` must not be read as a decision about capturing money.
    capture: StrictBool = False
    connector: ConnectorId | None = None
    reference: Annotated[str, Field(min_length=1, max_length=128), _NoControlCharacters] | None = (
        None
    )
    metadata: Metadata = Field(default_factory=dict)
    return_url: (
        Annotated[str, Field(pattern=r"^https?://", max_length=2048), _NoControlCharacters] | None
    ) = None
    description: Annotated[str, Field(max_length=500), _NoNul] | None = None
    country: Annotated[str | None, Field(pattern=r"^[A-Z]{2}$")] = None

    @field_validator("return_url", "description")
    @classmethod
    def _no_card_numbers(cls, value: str | None) -> str | None:
        # Free text is stored and echoed: a card number pasted here must not be.
        if value is not None and contains_pan(value):
            raise PydanticCustomError(
                "invalid_request", "The field looks like it holds a card number."
            )
        return value

    @field_validator("metadata")
    @classmethod
    def _clean_metadata(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            _refuse_control_characters(key)
            _refuse_nul(item)
        return value


class AmountRequest(DomainModel):
    """Capture and refund bodies: an optional amount; omitted means the whole remaining one."""

    amount: Annotated[PositiveMoney, Field(description=_POSITIVE)] | None = None


class CaptureBody(AmountRequest):
    """``POST /v1/payments/{id}/capture``: the amount, and whether this is the last capture."""

    final: StrictBool = Field(
        default=False,
        description=(
            "The last capture: what is left of the authorization is released, and the "
            "payment is `captured` whatever it captured in all. Always so on a connector "
            "that takes one capture per payment."
        ),
    )


class EmptyRequest(DomainModel):
    """Void and sync bodies: nothing to send. A body with fields is refused rather than
    ignored, so ``{"amount": ...}`` to void never passes for a partial reversal."""


class CompleteRequest(DomainModel):
    """``POST /v1/payments/{id}/complete``: what the bank or 3-D Secure page returned."""

    parameters: Annotated[
        dict[Annotated[str, _NoNul], Annotated[str, Field(max_length=4096), _NoNul]],
        Field(max_length=50),
    ] = Field(default_factory=dict)


# --- Response models -------------------------------------------------------------------------
# Documentation of what the views return (``gateway.views``); /openapi.json is built from them
# and tests validate real responses against that document, so a drift fails a test.

Timestamp = Annotated[str, Field(description="ISO 8601 date and time, UTC offset included.")]


class FieldError(_View):
    field: str
    code: str
    detail: str


class BatchErrorDetail(_View):
    code: str
    detail: str
    errors: list[FieldError] | None = Field(
        default=None,
        description="For a card that failed validation: each invalid field, never its value.",
    )


class BatchItemError(_View):
    error: BatchErrorDetail


class BatchTokenizeResponse(_View):
    """One entry per submitted card, in order: a token, or the error of that card alone."""

    results: list[TokenView | BatchItemError]


class MoneyView(_View):
    value: Annotated[int, Field(description="Amount in minor units of the currency.")]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code.")]


class PaymentMethodView(_View):
    """What is kept of the payment method: a token and masked details, never card data.

    Fields without a value are omitted."""

    type: PaymentMethodType
    token: str | None = None
    brand: str | None = None
    last4: Annotated[str | None, Field(pattern=r"^[0-9]{4}$")] = None
    masked_account: str | None = None
    country: str | None = None
    scheme: str | None = None


class AttemptView(_View):
    """One connector call; ``outcome`` null means still running (or to be reconciled)."""

    id: str
    connector: str
    operation: str
    outcome: Outcome | None
    status: PaymentStatus | None
    error_code: str | None
    provider_reference: str | None
    amount: MoneyView | None
    started_at: Timestamp
    finished_at: Timestamp | None


class RefundView(_View):
    id: str
    amount: MoneyView
    status: RefundStatus
    provider_reference: str | None
    created_at: Timestamp


class PaymentView(_View):
    """A payment (``gateway.views.payments.payment_view``)."""

    id: Annotated[str, Field(pattern=r"^pay_")]
    status: PaymentStatus
    connector: str | None
    amount: MoneyView
    captured: MoneyView
    refunded: MoneyView
    capture: bool
    reference: str | None
    metadata: dict[str, str]
    payment_method: PaymentMethodView
    return_url: str | None
    provider_reference: str | None
    next_action: NextAction | None
    decline: Decline | None
    attempts: list[AttemptView]
    refunds: list[RefundView]
    created_at: Timestamp
    updated_at: Timestamp


class PaymentList(_View):
    data: list[PaymentView]
    has_more: bool = Field(description="More payments follow: ask for `next_cursor`.")
    next_cursor: str | None = Field(description="`cursor` for the next page; null on the last.")


class Problem(BaseModel):
    """RFC 9457 problem details; ``code`` is the stable, machine-readable error code."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: Annotated[int, Field(ge=400, le=599)]
    code: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    detail: str
    instance: str | None = None
    request_id: str | None = None
    errors: list[FieldError] | None = None


class DeclinedProblem(Problem):
    """402 ``operation_declined``: the provider refused; the payment as it now stands."""

    decline: Decline | None
    payment: PaymentView


class WebhookReceipt(_View):
    received: Annotated[int, Field(ge=0)]
    applied: Annotated[int, Field(ge=0)]


class Health(_View):
    status: Literal["ok"]


class Readiness(_View):
    status: Literal["ready", "not_ready"]
    checks: dict[str, Literal["ok", "sealed", "unreachable", "refused"]]
