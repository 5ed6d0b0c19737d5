"""The sandbox connector's wire side: credentials, wire models, builders, parsers, status and
decline maps.

Plumbing (URLs, headers, the one ``_send``) lives in ``connector.py``; everything here is pure:
normalized requests in, pydantic wire models out, and provider replies back into
``PaymentResult`` values. The simulator (``server.py``) validates incoming requests with the
same wire models, so the two sides cannot drift apart.

Rules this module keeps:

- card data only as SDK placeholders (``ctx.card(...)``): no PAN or CVV ever passes through it;
- amounts as integer minor units (``Money.to_provider_minor`` / ``Money.from_provider_minor``),
  never a float;
- payment methods matched exhaustively: anything but a card raises ``NotSupportedError`` before
  a request exists;
- declines (and provider refusals of follow-up operations) become declined results through
  ``ERROR_MAP``, a data table; they are never exceptions.

Imports ``sdk`` and ``normalization`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self, assert_never

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictBool, StrictInt, ValidationError

from normalization import (
    BankAccountMethod,
    CardMethod,
    DeclineCode,
    Money,
    NextAction,
    NotSupportedError,
    OpenBankingMethod,
    Outcome,
    PaymentMethod,
    PaymentResult,
    PaymentStatus,
    ProviderError,
)
from sdk import (
    CardPlaceholders,
    Credentials,
    ErrorMap,
    ErrorMapping,
    Manifest,
    TimestampedHmacScheme,
    WebhookVerificationError,
)

__all__ = [
    "DECLINED_STATUSES",
    "ERROR_MAP",
    "EVENT_TYPES",
    "STATUS_MAP",
    "WEBHOOK_SCHEME",
    "AuthorizationCreate",
    "CaptureCreate",
    "DeclineFn",
    "RefundCreate",
    "SandboxCredentials",
    "VerificationCreate",
    "WireAuthorization",
    "WireCard",
    "WireError",
    "WireErrorEnvelope",
    "WireEvent",
    "WireVerification",
    "build_authorization",
    "build_capture",
    "build_refund",
    "build_verification",
    "card_method_of",
    "check_currency",
    "occurred_at",
    "parse_authorization_list",
    "parse_authorization_reply",
    "parse_event",
    "parse_verification_reply",
    "result_of",
    "webhook_secrets",
]

# -- credentials ----------------------------------------------------------------------------------


class SandboxCredentials(BaseModel):
    """What the sandbox needs: the API key (``Authorization: Bearer``) and, to verify webhooks,
    the signing secret (a previous one too while a rotation is under way)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_key: SecretStr
    webhook_secrets: tuple[SecretStr, ...] = ()

    @classmethod
    def of(cls, credentials: Credentials) -> Self:
        return cls(
            api_key=SecretStr(credentials.reveal("api_key")),
            webhook_secrets=tuple(SecretStr(s) for s in webhook_secrets(credentials)),
        )


def webhook_secrets(credentials: Credentials) -> list[str]:
    """The webhook signing secrets configured (the current one, then a previous one)."""
    return [
        credentials[name].get_secret_value()
        for name in ("webhook_secret", "webhook_secret_previous")
        if name in credentials and credentials[name].get_secret_value()
    ]


#: How the sandbox signs webhooks: ``Sandbox-Signature: t=<unix>,v1=<hex HMAC-SHA256 of
#: "{t}.{body}">``, accepted for five minutes either side of the receiving clock.
WEBHOOK_SCHEME = TimestampedHmacScheme(header="Sandbox-Signature", tolerance_seconds=300.0)

#: Every event the sandbox sends: ``authorization.<new status>`` after a change that did not come
#: from the reply to the request that made it (settlement, 3-D Secure, captures, refunds, voids).
EVENT_TYPES = frozenset(
    {
        "authorization.authorized",
        "authorization.declined",
        "authorization.partially_captured",
        "authorization.captured",
        "authorization.voided",
        "authorization.partially_refunded",
        "authorization.refunded",
    }
)


# -- wire models: requests ------------------------------------------------------------------------

# Requests are strict (the simulator refuses what the connector should never send) and never
# echo their input in validation errors: the simulator validates bodies that hold real PANs.
_REQUEST_CONFIG = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)
# Replies tolerate fields a newer sandbox may add.
_REPLY_CONFIG = ConfigDict(frozen=True, extra="ignore", hide_input_in_errors=True)

Digits = Annotated[str, Field(pattern=r"^[0-9]+$", max_length=19)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
Minor = Annotated[StrictInt, Field(ge=0)]


class WireCard(BaseModel):
    """Card fields as sent: strings, so placeholders (and then the real digits) fit."""

    model_config = _REQUEST_CONFIG

    number: Annotated[str, Field(min_length=1, max_length=64)]
    exp_month: Annotated[str, Field(min_length=1, max_length=64)]
    exp_year: Annotated[str, Field(min_length=1, max_length=64)]
    cvc: Annotated[str | None, Field(max_length=64)] = None
    holder_name: Annotated[str | None, Field(max_length=200)] = None


class AuthorizationCreate(BaseModel):
    """``POST /v1/authorizations``."""

    model_config = _REQUEST_CONFIG

    amount: StrictInt
    currency: Currency
    capture: StrictBool = False
    card: WireCard
    reference: Annotated[str | None, Field(max_length=128)] = None
    description: Annotated[str | None, Field(max_length=500)] = None
    return_url: Annotated[str | None, Field(max_length=2048)] = None
    metadata: dict[str, str] = Field(default_factory=dict)


class CaptureCreate(BaseModel):
    """``POST /v1/authorizations/{id}/captures``; ``final`` releases what is left."""

    model_config = _REQUEST_CONFIG

    amount: StrictInt
    currency: Currency
    final: StrictBool = True


class RefundCreate(BaseModel):
    """``POST /v1/authorizations/{id}/refunds``."""

    model_config = _REQUEST_CONFIG

    amount: StrictInt
    currency: Currency
    reason: Annotated[str | None, Field(max_length=200)] = None


class VerificationCreate(BaseModel):
    """``POST /v1/verifications``: a zero-amount check of a card."""

    model_config = _REQUEST_CONFIG

    currency: Currency
    card: WireCard


# -- wire models: replies -------------------------------------------------------------------------


class WireDecline(BaseModel):
    model_config = _REPLY_CONFIG

    code: Annotated[str, Field(max_length=100)]
    message: Annotated[str, Field(max_length=500)] = ""


class WireNextAction(BaseModel):
    model_config = _REPLY_CONFIG

    type: Literal["redirect"] = "redirect"
    url: Annotated[str, Field(max_length=4096)]
    method: Literal["GET", "POST"] = "GET"


class WireMovement(BaseModel):
    """One capture or refund of an authorization."""

    model_config = _REPLY_CONFIG

    id: str
    amount: Minor
    created_at: int


class WireCardSummary(BaseModel):
    model_config = _REPLY_CONFIG

    masked: str
    last4: str


class WireAuthorization(BaseModel):
    """The sandbox's one payment object; every authorization endpoint answers with it."""

    model_config = _REPLY_CONFIG

    id: Annotated[str, Field(min_length=1, max_length=200)]
    object: Literal["authorization"] = "authorization"
    status: str
    amount: Minor
    currency: Currency
    amount_captured: Minor = 0
    amount_refunded: Minor = 0
    capture: bool = False
    reference: str | None = None
    decline: WireDecline | None = None
    next_action: WireNextAction | None = None
    captures: list[WireMovement] = Field(default_factory=list)
    refunds: list[WireMovement] = Field(default_factory=list)
    card: WireCardSummary | None = None
    created_at: int = 0


class WireAuthorizationList(BaseModel):
    model_config = _REPLY_CONFIG

    data: list[WireAuthorization]


class WireVerification(BaseModel):
    model_config = _REPLY_CONFIG

    id: str
    object: Literal["verification"] = "verification"
    status: Literal["verified", "declined"]
    currency: Currency
    decline: WireDecline | None = None


class WireError(BaseModel):
    model_config = _REPLY_CONFIG

    code: Annotated[str, Field(max_length=100)]
    message: Annotated[str, Field(max_length=500)] = ""
    authorization: str | None = None


class WireErrorEnvelope(BaseModel):
    """Every 4xx reply other than a card decline: ``{"error": {"code", "message"}}``."""

    model_config = _REPLY_CONFIG

    error: WireError


class WireEvent(BaseModel):
    """A webhook: one event about one authorization."""

    model_config = _REPLY_CONFIG

    id: Annotated[str, Field(min_length=1, max_length=200)]
    type: Annotated[str, Field(min_length=1, max_length=100)]
    created: StrictInt
    data: WireAuthorization


# -- maps -----------------------------------------------------------------------------------------

#: Sandbox status -> normalized status. ``declined`` is handled through the error map.
STATUS_MAP: dict[str, PaymentStatus] = {
    "requires_action": PaymentStatus.REQUIRES_ACTION,
    "pending": PaymentStatus.PENDING,
    "authorized": PaymentStatus.AUTHORIZED,
    "partially_captured": PaymentStatus.PARTIALLY_CAPTURED,
    "captured": PaymentStatus.CAPTURED,
    "voided": PaymentStatus.VOIDED,
    "partially_refunded": PaymentStatus.PARTIALLY_REFUNDED,
    "refunded": PaymentStatus.REFUNDED,
    "failed": PaymentStatus.FAILED,
}
DECLINED_STATUSES = frozenset({"declined"})

#: Sandbox decline and error codes -> normalized codes. Card declines first, then the refusals
#: of follow-up operations (which the gateway should have prevented; kept as clean declined
#: results with the provider code, because an exception raised after a request was sent is
#: read by the runtime as ``unknown``).
ERROR_MAP = ErrorMap(
    {
        "insufficient_funds": DeclineCode.INSUFFICIENT_FUNDS,
        "do_not_honor": DeclineCode.DO_NOT_HONOR,
        "expired_card": DeclineCode.EXPIRED_CARD,
        "incorrect_cvc": DeclineCode.INCORRECT_CVC,
        "invalid_card_number": DeclineCode.INVALID_CARD_NUMBER,
        "fraud_suspected": DeclineCode.FRAUD_SUSPECTED,
        "lost_card": DeclineCode.LOST_OR_STOLEN,
        "stolen_card": DeclineCode.LOST_OR_STOLEN,
        "card_not_supported": DeclineCode.CARD_NOT_SUPPORTED,
        "limit_exceeded": DeclineCode.LIMIT_EXCEEDED,
        "authentication_required": DeclineCode.AUTHENTICATION_REQUIRED,
        "authentication_failed": DeclineCode.AUTHENTICATION_FAILED,
        "restricted_card": DeclineCode.RESTRICTED_CARD,
        "processing_error": DeclineCode.PROCESSING_ERROR,
        # The issuer did not answer: nothing happened, ask again (the runtime retries).
        "try_again_later": ErrorMapping(DeclineCode.PROCESSING_ERROR, retryable=True),
        # Request errors and refused follow-up operations.
        "invalid_amount": DeclineCode.INVALID_AMOUNT,
        "amount_exceeds_capturable": DeclineCode.INVALID_AMOUNT,
        "amount_exceeds_refundable": DeclineCode.INVALID_AMOUNT,
        "currency_mismatch": DeclineCode.INVALID_AMOUNT,
        "currency_not_supported": DeclineCode.CURRENCY_NOT_SUPPORTED,
        "invalid_state": DeclineCode.INVALID_REQUEST,
        "invalid_request": DeclineCode.INVALID_REQUEST,
        "not_found": DeclineCode.INVALID_REQUEST,
        "idempotency_key_reused": DeclineCode.INVALID_REQUEST,
        # A wrong API key: the provider refused before acting. Configuration, not the card.
        "unauthorized": DeclineCode.PROCESSING_ERROR,
    }
)

#: How a parser turns a provider code into a declined result: ``ctx.decline`` during a call,
#: ``ERROR_MAP.result`` for webhooks (no call context there).
DeclineFn = Callable[..., PaymentResult]


def _map_decline(code: str | None, message: str = "", **kwargs: Any) -> PaymentResult:
    return ERROR_MAP.result(code, message, **kwargs)


# -- builders -------------------------------------------------------------------------------------


def card_method_of(method: PaymentMethod) -> CardMethod:
    """The card of ``method``; every other method is refused here, before any request."""
    match method:
        case CardMethod():
            return method
        case BankAccountMethod():
            raise NotSupportedError("The sandbox connector does not support bank accounts.")
        case OpenBankingMethod():
            raise NotSupportedError("The sandbox connector does not support open banking.")
        case _:  # pragma: no cover - the union is closed
            assert_never(method)


def check_currency(manifest: Manifest, currency: str) -> None:
    """Refuse a currency the manifest does not declare (before any request)."""
    if currency not in manifest.currencies:
        raise NotSupportedError(f"The sandbox connector does not support {currency}.")


def _minor(amount: Money, manifest: Manifest) -> int:
    check_currency(manifest, amount.currency)
    return amount.to_provider_minor(manifest.exponent_for(amount.currency))


def _wire_card(card: CardPlaceholders, *, with_holder: bool) -> WireCard:
    """The card as sent. The CVC is optional: a token whose CVC has expired or was used (a
    card-on-file payment), or an inline card without one, goes without it (``sdk.placeholders``)."""
    return WireCard(
        number=card.number,
        exp_month=card.exp_month,
        exp_year=card.exp_year,
        cvc=card.cvc.optional(),
        holder_name=card.holder_name.optional() if with_holder else None,
    )


def build_authorization(
    *,
    amount: Money,
    capture: bool,
    card: CardPlaceholders,
    manifest: Manifest,
    reference: str | None,
    description: str | None,
    return_url: str | None,
    metadata: dict[str, str],
) -> AuthorizationCreate:
    return AuthorizationCreate(
        amount=_minor(amount, manifest),
        currency=amount.currency,
        capture=capture,
        card=_wire_card(card, with_holder=True),
        reference=reference,
        description=description,
        return_url=return_url,
        metadata=metadata,
    )


def build_capture(amount: Money, *, final: bool, manifest: Manifest) -> CaptureCreate:
    return CaptureCreate(amount=_minor(amount, manifest), currency=amount.currency, final=final)


def build_refund(amount: Money, *, reason: str | None, manifest: Manifest) -> RefundCreate:
    return RefundCreate(amount=_minor(amount, manifest), currency=amount.currency, reason=reason)


def build_verification(
    currency: str, card: CardPlaceholders, *, manifest: Manifest
) -> VerificationCreate:
    check_currency(manifest, currency)
    return VerificationCreate(currency=currency, card=_wire_card(card, with_holder=False))


# -- parsers --------------------------------------------------------------------------------------


def _money(value: int, currency: str, manifest: Manifest) -> Money:
    exponent = manifest.exponent_for(currency)
    if exponent is None:
        return Money(value, currency)
    return Money.from_provider_minor(value, currency, exponent)


def result_of(
    auth: WireAuthorization,
    manifest: Manifest,
    decline: DeclineFn = _map_decline,
    movement: tuple[str, str] | None = None,
) -> PaymentResult:
    """The normalized result an authorization object reports.

    ``movement`` names the capture or refund this reply is about (``("capture", "cap_...")``);
    it is kept in ``provider_references``.
    """
    if auth.status in DECLINED_STATUSES:
        code = auth.decline.code if auth.decline else None
        message = auth.decline.message if auth.decline else ""
        return decline(code, message, provider_reference=auth.id)
    status = STATUS_MAP.get(auth.status)
    if status is None:
        raise ProviderError("The sandbox reported a status this connector does not know.")
    next_action = None
    if auth.next_action is not None:
        next_action = NextAction(url=auth.next_action.url, method=auth.next_action.method)
    return PaymentResult(
        status=status,
        outcome=Outcome.SUCCEEDED,
        provider_reference=auth.id,
        provider_references=dict([movement]) if movement else {},
        amount_authorized=_money(auth.amount, auth.currency, manifest),
        amount_captured=_money(auth.amount_captured, auth.currency, manifest),
        amount_refunded=_money(auth.amount_refunded, auth.currency, manifest),
        next_action=next_action,
        raw_status=auth.status,
    )


def _json(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        raise ProviderError("The sandbox's reply is not JSON.") from None


def _is_refusal(response: httpx.Response) -> bool:
    """4xx replies carry an error envelope, except card declines (402), which carry the declined
    object; a 402 without one (a decline that created nothing) carries the envelope too."""
    if response.status_code < 400:
        return False
    if response.status_code != 402:
        return True
    body = _json(response)
    return isinstance(body, dict) and "error" in body


def _refusal(response: httpx.Response, decline: DeclineFn) -> PaymentResult:
    """A 4xx other than a card decline: an error envelope, through the error map."""
    try:
        envelope = WireErrorEnvelope.model_validate(_json(response))
    except ValidationError:
        raise ProviderError(f"The sandbox answered HTTP {response.status_code}.") from None
    error = envelope.error
    return decline(error.code, error.message, provider_reference=error.authorization)


def parse_authorization_reply(
    response: httpx.Response,
    manifest: Manifest,
    decline: DeclineFn,
    movement_kind: str | None = None,
) -> PaymentResult:
    """A reply carrying an authorization (2xx, or 402 for a card decline), or a refusal."""
    if _is_refusal(response):
        return _refusal(response, decline)
    try:
        auth = WireAuthorization.model_validate(_json(response))
    except ValidationError:
        raise ProviderError("The sandbox's reply does not match its schema.") from None
    movement = None
    if movement_kind is not None:
        movements = auth.captures if movement_kind == "capture" else auth.refunds
        if movements:
            movement = (movement_kind, movements[-1].id)
    return result_of(auth, manifest, decline, movement)


def parse_authorization_list(
    response: httpx.Response, manifest: Manifest, decline: DeclineFn
) -> PaymentResult:
    """The newest authorization of a lookup by reference; ``failed`` when there is none (the
    sandbox never created it, so nothing is left to reconcile)."""
    if response.status_code >= 400:
        return _refusal(response, decline)
    try:
        listing = WireAuthorizationList.model_validate(_json(response))
    except ValidationError:
        raise ProviderError("The sandbox's reply does not match its schema.") from None
    if not listing.data:
        return PaymentResult(
            status=PaymentStatus.FAILED, outcome=Outcome.SUCCEEDED, raw_status="not_found"
        )
    # Listed oldest first; a stable sort keeps that order within one second.
    newest = sorted(listing.data, key=lambda auth: auth.created_at)[-1]
    return result_of(newest, manifest, decline)


def parse_verification_reply(
    response: httpx.Response, manifest: Manifest, decline: DeclineFn
) -> PaymentResult:
    if _is_refusal(response):
        return _refusal(response, decline)
    try:
        verification = WireVerification.model_validate(_json(response))
    except ValidationError:
        raise ProviderError("The sandbox's reply does not match its schema.") from None
    if verification.status == "declined":
        code = verification.decline.code if verification.decline else None
        message = verification.decline.message if verification.decline else ""
        return decline(code, message, provider_reference=verification.id)
    # A verified card: authorized for nothing (PaymentStatus has no "verified").
    return PaymentResult(
        status=PaymentStatus.AUTHORIZED,
        outcome=Outcome.SUCCEEDED,
        provider_reference=verification.id,
        amount_authorized=Money.zero(verification.currency),
        raw_status="verified",
    )


def parse_event(body: bytes, manifest: Manifest) -> tuple[WireEvent, PaymentResult]:
    """A verified webhook body: the event and the state it reports."""
    try:
        event = WireEvent.model_validate_json(body)
    except ValidationError:
        raise WebhookVerificationError("The sandbox webhook body is malformed.") from None
    return event, result_of(event.data, manifest)


def occurred_at(event: WireEvent) -> datetime:
    return datetime.fromtimestamp(event.created, UTC)
