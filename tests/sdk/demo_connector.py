"""A small card-acquirer connector the SDK tests drive against loopback providers."""

from __future__ import annotations

from typing import Any

import httpx

from normalization import (
    AuthorizeRequest,
    CaptureRequest,
    CardMethod,
    DeclineCode,
    Money,
    Outcome,
    PaymentMethodType,
    PaymentResult,
    PaymentStatus,
    ProviderError,
    RefundRequest,
    SyncRequest,
    VoidRequest,
)
from sdk import (
    BaseUrls,
    CallContext,
    Category,
    Connector,
    CredentialField,
    ErrorMap,
    ErrorMapping,
    IdempotencySupport,
    Manifest,
    MultiSupport,
    Operation,
)

MANIFEST = Manifest(
    id="demo",
    display_name="Demo Acquirer",
    category=Category.CARD_ACQUIRER,
    operations=frozenset(
        {Operation.AUTHORIZE, Operation.CAPTURE, Operation.VOID, Operation.REFUND, Operation.SYNC}
    ),
    capture=MultiSupport(partial=True),
    refund=MultiSupport(partial=True, multiple=True),
    payment_methods=frozenset({PaymentMethodType.CARD}),
    currencies=frozenset({"EUR", "USD", "JPY"}),
    idempotency=IdempotencySupport(header="Idempotency-Key", retention_seconds=86400),
    retry_safe=frozenset({Operation.CAPTURE, Operation.VOID, Operation.REFUND, Operation.SYNC}),
    base_urls=BaseUrls(sandbox="https://sandbox.demo-acquirer.example"),
    credentials=(CredentialField(name="api_key", description="Secret API key"),),
)

ERROR_MAP = ErrorMap(
    {
        "insufficient_funds": DeclineCode.INSUFFICIENT_FUNDS,
        "do_not_honor": DeclineCode.DO_NOT_HONOR,
        "try_again": ErrorMapping(DeclineCode.PROCESSING_ERROR, retryable=True),
    }
)

_STATUSES = {
    "authorized": PaymentStatus.AUTHORIZED,
    "captured": PaymentStatus.CAPTURED,
    "voided": PaymentStatus.VOIDED,
    "refunded": PaymentStatus.REFUNDED,
}


def parse_payment(response: httpx.Response, ctx: CallContext) -> PaymentResult:
    try:
        data: dict[str, Any] = response.json()
    except ValueError:
        raise ProviderError("The provider's reply is not JSON.") from None
    if response.status_code >= 400:
        error = data.get("error", {})
        return ctx.decline(error.get("code"), error.get("message", ""))
    amount = data.get("amount")
    return PaymentResult(
        status=_STATUSES[data["status"]],
        outcome=Outcome.SUCCEEDED,
        provider_reference=data["id"],
        amount_authorized=Money(amount, data["currency"]) if amount is not None else None,
        raw_status=data["status"],
    )


class DemoConnector(Connector):
    manifest = MANIFEST
    error_map = ERROR_MAP

    def _headers(self, ctx: CallContext) -> dict[str, str]:
        return {"Authorization": f"Bearer {ctx.credentials.reveal('api_key')}"}

    async def authorize(self, request: AuthorizeRequest, ctx: CallContext) -> PaymentResult:
        assert isinstance(request.payment_method, CardMethod)
        card = ctx.card(request.payment_method)
        body = {
            "amount": request.amount.to_provider_minor(),
            "currency": request.amount.currency,
            "capture": request.capture,
            "reference": request.reference,
            "card": {
                "number": card.number,
                "cvc": card.cvc,
                "exp_month": card.exp_month,
                "exp_year": card.exp_year,
            },
        }
        response = await ctx.send("POST", "/payments", json=body, headers=self._headers(ctx))
        return parse_payment(response, ctx)

    async def capture(self, request: CaptureRequest, ctx: CallContext) -> PaymentResult:
        body = {"amount": request.amount.to_provider_minor()}
        path = f"/payments/{request.provider_reference}/capture"
        return parse_payment(
            await ctx.send("POST", path, json=body, headers=self._headers(ctx)), ctx
        )

    async def void(self, request: VoidRequest, ctx: CallContext) -> PaymentResult:
        path = f"/payments/{request.provider_reference}/void"
        return parse_payment(await ctx.send("POST", path, headers=self._headers(ctx)), ctx)

    async def refund(self, request: RefundRequest, ctx: CallContext) -> PaymentResult:
        body = {"amount": request.amount.to_provider_minor()}
        path = f"/payments/{request.provider_reference}/refunds"
        return parse_payment(
            await ctx.send("POST", path, json=body, headers=self._headers(ctx)), ctx
        )

    async def sync(self, request: SyncRequest, ctx: CallContext) -> PaymentResult:
        path = f"/payments/{request.provider_reference}"
        return parse_payment(await ctx.send("GET", path, headers=self._headers(ctx)), ctx)
