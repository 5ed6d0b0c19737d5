"""Small bank-rail and open-banking connectors with stateful simulators, to run the kit's
``bank-rail`` and ``open-banking`` profiles end to end (the reference connectors for those
categories are still to come).

Bank rail (``rail_bank``): ``POST /transfers`` (credit or debit) is pending until it settles
after ``SETTLE_SECONDS``; a debit from ``RETURNED_IBAN`` is returned with ACH-style code R01.

Open banking (``rail_ob``): ``POST /consents`` -> redirect to ``/bank/authorize/{id}`` where
``?decision=approve|reject`` sends the customer back with ``code`` or ``error``; ``POST
/consents/{id}/authorisation`` completes; ``POST /consents/{id}/payments`` submits; a consent
for ``EXPIRING_AMOUNT`` expires after ``SETTLE_SECONDS``.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
from aiohttp import web
from yarl import URL

from normalization import (
    ConsentRequest,
    DebitRequest,
    DeclineCode,
    Money,
    NextAction,
    Outcome,
    PaymentMethodType,
    PaymentResult,
    PaymentStatus,
    PayoutRequest,
    ProviderError,
    SyncRequest,
)
from sdk import (
    BaseUrls,
    CallContext,
    Category,
    CompleteAuthorizationRequest,
    Connector,
    ErrorMap,
    IdempotencySupport,
    Manifest,
    Operation,
    SubmitRequest,
)

SETTLE_SECONDS = 0.15
RETURNED_IBAN = "GB82WEST12345698765432"
EXPIRING_AMOUNT = 4041


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data: dict[str, Any] = response.json()
    except ValueError:
        raise ProviderError("Not JSON.") from None
    return data


def _idempotent(store: dict[str, Any], request: web.Request) -> Any:
    key = request.headers.get("Idempotency-Key")
    return (store.get(key) if key else None), key


# -- bank rail ------------------------------------------------------------------------------------

BANK_ERRORS = ErrorMap({"R01": DeclineCode.PAYMENT_RETURNED, "R03": DeclineCode.INVALID_ACCOUNT})


class RailBankConnector(Connector):
    manifest = Manifest(
        id="rail_bank",
        display_name="Test bank rail",
        category=Category.BANK_RAIL,
        operations=frozenset({Operation.CREDIT, Operation.DEBIT, Operation.SYNC}),
        payment_methods=frozenset({PaymentMethodType.BANK_ACCOUNT}),
        currencies=frozenset({"EUR", "GBP"}),
        idempotency=IdempotencySupport(header="Idempotency-Key"),
        retry_safe=frozenset({Operation.SYNC, Operation.CREDIT, Operation.DEBIT}),
        base_urls=BaseUrls(sandbox="https://bank-rail.example"),
    )
    error_map = BANK_ERRORS

    def _result(self, data: dict[str, Any], ctx: CallContext) -> PaymentResult:
        if data["status"] == "returned":
            return ctx.decline(data["return_code"], "Returned.", provider_reference=data["id"])
        money = Money(data["amount"], data["currency"])
        settled = data["status"] == "settled"
        return PaymentResult(
            status=PaymentStatus.CAPTURED if settled else PaymentStatus.PENDING,
            outcome=Outcome.SUCCEEDED,
            provider_reference=data["id"],
            amount_authorized=money,
            amount_captured=money if settled else None,
            raw_status=data["status"],
        )

    async def _transfer(
        self, direction: str, request: PayoutRequest | DebitRequest, ctx: CallContext
    ) -> PaymentResult:
        account = request.destination if isinstance(request, PayoutRequest) else request.source
        body = {
            "direction": direction,
            "amount": request.amount.value,
            "currency": request.amount.currency,
            "iban": account.iban,
            "reference": request.reference,
        }
        return self._result(_json(await ctx.send("POST", "/transfers", json=body)), ctx)

    async def credit(self, request: PayoutRequest, ctx: CallContext) -> PaymentResult:
        return await self._transfer("credit", request, ctx)

    async def debit(self, request: DebitRequest, ctx: CallContext) -> PaymentResult:
        return await self._transfer("debit", request, ctx)

    async def sync(self, request: SyncRequest, ctx: CallContext) -> PaymentResult:
        if request.provider_reference:
            response = await ctx.send("GET", f"/transfers/{request.provider_reference}")
            return self._result(_json(response), ctx)
        found = _json(
            await ctx.send("GET", "/transfers", params={"reference": request.reference or ""})
        )
        if not found["data"]:
            return PaymentResult(status=PaymentStatus.FAILED, outcome=Outcome.SUCCEEDED)
        return self._result(found["data"][-1], ctx)


def create_bank_app() -> web.Application:
    transfers: dict[str, dict[str, Any]] = {}
    replies: dict[str, Any] = {}

    def view(transfer: dict[str, Any]) -> dict[str, Any]:
        if transfer["status"] == "pending" and time.monotonic() >= transfer["settles_at"]:
            returned = transfer["direction"] == "debit" and transfer["iban"] == RETURNED_IBAN
            transfer["status"] = "returned" if returned else "settled"
            if returned:
                transfer["return_code"] = "R01"
        return {k: v for k, v in transfer.items() if k != "settles_at"}

    async def create(request: web.Request) -> web.Response:
        stored, key = _idempotent(replies, request)
        if stored is not None:
            return web.json_response(stored, status=201)
        body = await request.json()
        transfer = {
            "id": f"tr_{secrets.token_hex(8)}",
            "status": "pending",
            "settles_at": time.monotonic() + SETTLE_SECONDS,
            **{k: body[k] for k in ("direction", "amount", "currency", "iban", "reference")},
        }
        transfers[transfer["id"]] = transfer
        reply = view(transfer)
        if key:
            replies[key] = reply
        return web.json_response(reply, status=201)

    async def get(request: web.Request) -> web.Response:
        transfer = transfers.get(request.match_info["id"])
        if transfer is None:
            return web.json_response({"error": "not_found"}, status=404)
        return web.json_response(view(transfer))

    async def find(request: web.Request) -> web.Response:
        reference = request.query.get("reference")
        data = [view(t) for t in transfers.values() if t["reference"] == reference]
        return web.json_response({"data": data})

    app = web.Application()
    app.router.add_post("/transfers", create)
    app.router.add_get("/transfers", find)
    app.router.add_get("/transfers/{id}", get)
    return app


# -- open banking ---------------------------------------------------------------------------------

OB_ERRORS = ErrorMap(
    {"rejected": DeclineCode.CONSENT_REJECTED, "expired": DeclineCode.CONSENT_EXPIRED}
)


class RailOpenBankingConnector(Connector):
    manifest = Manifest(
        id="rail_ob",
        display_name="Test open-banking bank",
        category=Category.OPEN_BANKING,
        operations=frozenset(
            {
                Operation.CREATE_CONSENT,
                Operation.COMPLETE_AUTHORIZATION,
                Operation.SUBMIT,
                Operation.SYNC,
            }
        ),
        payment_methods=frozenset({PaymentMethodType.OPEN_BANKING}),
        currencies=frozenset({"GBP"}),
        idempotency=IdempotencySupport(header="Idempotency-Key"),
        base_urls=BaseUrls(sandbox="https://open-banking.example"),
    )
    error_map = OB_ERRORS

    def _result(self, data: dict[str, Any], ctx: CallContext) -> PaymentResult:
        status = data["status"]
        if status in ("rejected", "expired"):
            return ctx.decline(status, f"Consent {status}.", provider_reference=data["id"])
        money = Money(data["amount"], data["currency"])
        mapped = {
            "awaiting_authorisation": PaymentStatus.REQUIRES_ACTION,
            "authorised": PaymentStatus.AUTHORIZED,
            "payment_pending": PaymentStatus.PENDING,
            "payment_completed": PaymentStatus.CAPTURED,
        }[status]
        return PaymentResult(
            status=mapped,
            outcome=Outcome.SUCCEEDED,
            provider_reference=data["id"],
            amount_authorized=money,
            amount_captured=money if mapped is PaymentStatus.CAPTURED else None,
            next_action=NextAction(url=data["redirect"])
            if mapped is PaymentStatus.REQUIRES_ACTION
            else None,
            raw_status=status,
        )

    async def create_consent(self, request: ConsentRequest, ctx: CallContext) -> PaymentResult:
        body = {
            "amount": request.amount.value,
            "currency": request.amount.currency,
            "creditor": request.payer.creditor_account.identification,
            "return_url": request.return_url,
            "reference": request.reference,
        }
        return self._result(_json(await ctx.send("POST", "/consents", json=body)), ctx)

    async def complete_authorization(
        self, request: CompleteAuthorizationRequest, ctx: CallContext
    ) -> PaymentResult:
        consent = request.provider_reference or request.callback_parameters.get("consent")
        body = {k: v for k, v in request.callback_parameters.items() if k in ("code", "error")}
        response = await ctx.send("POST", f"/consents/{consent}/authorisation", json=body)
        return self._result(_json(response), ctx)

    async def submit(self, request: SubmitRequest, ctx: CallContext) -> PaymentResult:
        response = await ctx.send(
            "POST", f"/consents/{request.consent_reference}/payments", json={}
        )
        return self._result(_json(response), ctx)

    async def sync(self, request: SyncRequest, ctx: CallContext) -> PaymentResult:
        if request.provider_reference:
            response = await ctx.send("GET", f"/consents/{request.provider_reference}")
            return self._result(_json(response), ctx)
        found = _json(
            await ctx.send("GET", "/consents", params={"reference": request.reference or ""})
        )
        if not found["data"]:
            return PaymentResult(status=PaymentStatus.FAILED, outcome=Outcome.SUCCEEDED)
        return self._result(found["data"][-1], ctx)


def create_ob_app() -> web.Application:
    consents: dict[str, dict[str, Any]] = {}
    replies: dict[str, Any] = {}

    def view(consent: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        if consent["status"] == "awaiting_authorisation" and consent["expires_at"] <= now:
            consent["status"] = "expired"
        if consent["status"] == "payment_pending" and consent["settles_at"] <= now:
            consent["status"] = "payment_completed"
        return {k: v for k, v in consent.items() if not k.endswith("_at") and k != "code"}

    async def create(request: web.Request) -> web.Response:
        stored, key = _idempotent(replies, request)
        if stored is not None:
            return web.json_response(stored, status=201)
        body = await request.json()
        consent_id = f"cons_{secrets.token_hex(8)}"
        expiring = body["amount"] == EXPIRING_AMOUNT
        consent = {
            "id": consent_id,
            "status": "awaiting_authorisation",
            "amount": body["amount"],
            "currency": body["currency"],
            "return_url": body["return_url"],
            "redirect": f"{request.scheme}://{request.host}/bank/authorize/{consent_id}",
            "expires_at": time.monotonic() + (SETTLE_SECONDS if expiring else 3600),
            "settles_at": 0.0,
            "code": secrets.token_hex(6),
            "reference": body.get("reference"),
        }
        consents[consent_id] = consent
        reply = view(consent)
        if key:
            replies[key] = reply
        return web.json_response(reply, status=201)

    async def bank_page(request: web.Request) -> web.Response:
        consent = consents[request.match_info["id"]]
        decision = request.query.get("decision", "approve")
        if decision == "approve":
            query = {"consent": consent["id"], "code": consent["code"]}
        else:
            query = {"consent": consent["id"], "error": "access_denied"}
        raise web.HTTPFound(location=str(URL(consent["return_url"]).update_query(query)))

    async def authorise(request: web.Request) -> web.Response:
        consent = consents[request.match_info["id"]]
        body = await request.json()
        view(consent)
        if consent["status"] == "awaiting_authorisation":
            ok = body.get("code") == consent["code"]
            consent["status"] = "authorised" if ok else "rejected"
        return web.json_response(view(consent))

    async def pay(request: web.Request) -> web.Response:
        consent = consents[request.match_info["id"]]
        if consent["status"] == "authorised":
            consent["status"] = "payment_pending"
            consent["settles_at"] = time.monotonic() + SETTLE_SECONDS
        return web.json_response(view(consent), status=201)

    async def get(request: web.Request) -> web.Response:
        return web.json_response(view(consents[request.match_info["id"]]))

    async def find(request: web.Request) -> web.Response:
        reference = request.query.get("reference")
        data = [view(c) for c in consents.values() if c["reference"] == reference]
        return web.json_response({"data": data})

    app = web.Application()
    app.router.add_post("/consents", create)
    app.router.add_get("/consents", find)
    app.router.add_get("/consents/{id}", get)
    app.router.add_post("/consents/{id}/authorisation", authorise)
    app.router.add_post("/consents/{id}/payments", pay)
    app.router.add_get("/bank/authorize/{id}", bank_page)
    return app


BANK_PROFILE: dict[str, Any] = {
    "connector": "rail_bank",
    "environment": "simulator",
    "inputs": {"bank.account.returned": {"iban": RETURNED_IBAN}},
    "polling": {"within": 5},
}
OB_PROFILE: dict[str, Any] = {
    "connector": "rail_ob",
    "environment": "simulator",
    "inputs": {
        "consent.approve": {"method": "GET", "query": {"decision": "approve"}},
        "consent.reject": {"method": "GET", "query": {"decision": "reject"}},
        "consent.expired": {"amount": EXPIRING_AMOUNT},
    },
    "polling": {"within": 5},
}
