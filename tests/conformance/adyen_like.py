"""A small Adyen-shaped card connector and its simulator, for contract validation against the
official Checkout v71 description (``adyen-CheckoutService-v71.json``).

``AdyenLikeConnector`` sends what v71 ``POST /payments`` requires; ``NoReturnUrlConnector``
forgets ``returnUrl`` (which v71 requires), which only the contract check can notice: the
simulator, like many sandboxes, is lenient.
"""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web

from normalization import (
    AuthorizeRequest,
    CardMethod,
    Money,
    Outcome,
    PaymentMethodType,
    PaymentResult,
    PaymentStatus,
    ProviderError,
)
from sdk import (
    BaseUrls,
    CallContext,
    Category,
    Connector,
    CredentialField,
    IdempotencySupport,
    Manifest,
    Operation,
)


def adyen_manifest(connector_id: str) -> Manifest:
    return Manifest(
        id=connector_id,
        display_name="Adyen-shaped test acquirer",
        category=Category.CARD_ACQUIRER,
        operations=frozenset({Operation.AUTHORIZE}),
        payment_methods=frozenset({PaymentMethodType.CARD}),
        currencies=frozenset({"EUR"}),
        idempotency=IdempotencySupport(header="Idempotency-Key"),
        base_urls=BaseUrls(sandbox="https://checkout-test.adyen.com/v71"),
        credentials=(CredentialField(name="api_key"),),
    )


class AdyenLikeConnector(Connector):
    manifest = adyen_manifest("adyen_like")
    include_return_url = True

    async def authorize(self, request: AuthorizeRequest, ctx: CallContext) -> PaymentResult:
        assert isinstance(request.payment_method, CardMethod)
        card = ctx.card(request.payment_method)
        body: dict[str, Any] = {
            "amount": {"value": request.amount.value, "currency": request.amount.currency},
            "reference": request.reference,
            "merchantAccount": "TesseraConformance",
            "paymentMethod": {
                "type": "scheme",
                "number": card.number,
                "expiryMonth": card.exp_month,
                "expiryYear": card.exp_year,
                "cvc": card.cvc,
            },
            "captureDelayHours": 0 if request.capture else None,
        }
        body = {k: v for k, v in body.items() if v is not None}
        if self.include_return_url:
            body["returnUrl"] = request.return_url or "https://merchant.example/return"
        response = await ctx.send(
            "POST", "/payments", json=body, headers={"X-API-Key": ctx.credentials.reveal("api_key")}
        )
        try:
            data = response.json()
        except ValueError:
            raise ProviderError("Not JSON.") from None
        if data.get("resultCode") == "Refused":
            return ctx.decline(data.get("refusalReasonCode"), data.get("refusalReason", ""))
        amount = data["amount"]
        status = PaymentStatus.CAPTURED if request.capture else PaymentStatus.AUTHORIZED
        money = Money(amount["value"], amount["currency"])
        return PaymentResult(
            status=status,
            outcome=Outcome.SUCCEEDED,
            provider_reference=data["pspReference"],
            amount_authorized=money,
            amount_captured=money if request.capture else None,
            raw_status=data["resultCode"],
        )


class NoReturnUrlConnector(AdyenLikeConnector):
    manifest = adyen_manifest("adyen_no_return_url")
    include_return_url = False


def create_app() -> web.Application:
    """A lenient Adyen-like simulator: authorises every payment (replays idempotent ones)."""
    replies: dict[str, dict[str, Any]] = {}

    async def payments(request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key")
        if key and key in replies:
            return web.json_response(replies[key])
        body = await request.json()
        reply = {
            "pspReference": secrets.token_hex(8).upper(),
            "resultCode": "Authorised",
            "amount": body["amount"],
            "merchantReference": body.get("reference"),
        }
        if key:
            replies[key] = reply
        return web.json_response(reply)

    app = web.Application()
    app.router.add_post("/v71/payments", payments)
    return app
