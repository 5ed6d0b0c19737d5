"""The card-acquirer profile (CONFORMANCE.md, "Baseline scenarios").

Inputs (sandbox profile ``inputs``): ``card.approved`` and ``card.canary`` (default: the run's
canary card; the leak probe always sends ``card.canary`` inline),
``card.declined.<code>`` for insufficient_funds, do_not_honor, expired_card and incorrect_cvc
(and for any other card decline code the profile names a magic card for: ``OPTIONAL_DECLINE_CODES``,
each an extra ``card.authorize.declined[<code>]``),
``card.requires_3ds`` (with a ``challenge`` recipe: how the customer completes the page),
``currency.roundtrip`` (``amounts`` to authorize in each currency, default: amounts floats get
wrong).
"""

from __future__ import annotations

from typing import Any

from conformance.harness import ScenarioContext
from conformance.inputs import DECLINE_CODES, OPTIONAL_DECLINE_CODES
from conformance.scenarios.flows import complete_request, half, nasty_amounts
from conformance.scenarios.model import Requirement, scenario
from conformance.scenarios.wire import EXACT, call_with_amount_on_wire
from normalization import AuthorizeRequest, BankAccountMethod, Money, VerifyRequest
from sdk import Category, Manifest, Operation

CARD = Category.CARD_ACQUIRER
AUTH = Operation.AUTHORIZE

APPROVED: dict[str, Any] = {
    "status": "authorized",
    "outcome": "succeeded",
    "provider_reference": "@present",
    "amount_authorized": "@request.amount",
    "decline": "@absent",
}


def _needs(*operations: Operation, **flags: bool) -> Requirement:
    return Requirement(operations=frozenset(operations), methods=frozenset({"card"}), **flags)


@scenario(
    "card.authorize.approved",
    CARD,
    "Authorize an approved card",
    requires=_needs(AUTH),
    covers=("operation:authorize", "method:card"),
    expect={"authorize": APPROVED},
    baseline="status authorized, amount and currency echoed, provider reference present",
)
async def authorize_approved(ctx: ScenarioContext) -> None:
    await ctx.call("authorize", AUTH, ctx.authorize_request())


@scenario(
    "card.purchase",
    CARD,
    "Authorize with capture (purchase)",
    requires=_needs(AUTH),
    covers=("operation:authorize",),
    expect={
        "purchase": {
            "status": "captured",
            "outcome": "succeeded",
            "amount_captured": "@request.amount",
            "provider_reference": "@present",
        }
    },
    baseline="status captured, the whole amount captured",
)
async def purchase(ctx: ScenarioContext) -> None:
    await ctx.call("purchase", AUTH, ctx.authorize_request(capture=True))


@scenario(
    "card.authorize.declined",
    CARD,
    "Authorize a card the issuer declines",
    requires=_needs(AUTH),
    covers=("operation:authorize",),
    inputs=("card.declined.{param}",),
    params=lambda manifest: DECLINE_CODES,
    # Any other card decline code the profile names a magic card for.
    profile_params=lambda provided: [
        code for code in OPTIONAL_DECLINE_CODES if f"card.declined.{code}" in provided
    ],
    expect={
        "authorize": {
            "status": "declined",
            "outcome": "declined",
            "decline": {"code": "{param}", "provider_code": "@present"},
            "raised": "none",
        }
    },
    baseline="status declined with the normalized decline code (a value, not an exception)",
)
async def authorize_declined(ctx: ScenarioContext) -> None:
    await ctx.call("authorize", AUTH, ctx.authorize_request(f"card.declined.{ctx.param}"))


@scenario(
    "card.authorize.requires_3ds",
    CARD,
    "Authorize a card that needs 3-D Secure",
    requires=_needs(AUTH),
    covers=("operation:authorize",),
    inputs=("card.requires_3ds",),
    expect={
        "authorize": {
            "status": "requires_action",
            "outcome": "succeeded",
            "next_action": {"type": "redirect", "url": "@present"},
            "provider_reference": "@present",
        }
    },
    baseline="status requires_action with a redirect",
)
async def authorize_requires_3ds(ctx: ScenarioContext) -> None:
    await ctx.call("authorize", AUTH, ctx.authorize_request("card.requires_3ds"))


@scenario(
    "card.3ds.complete",
    CARD,
    "Complete a 3-D Secure authorization after the customer returns",
    requires=_needs(AUTH, Operation.COMPLETE_AUTHORIZATION),
    covers=("operation:complete_authorization",),
    inputs=("card.requires_3ds",),
    expect={
        "authorize": {"status": "requires_action", "next_action": {"url": "@present"}},
        "complete": {
            "status": "authorized",
            "outcome": "succeeded",
            "provider_reference": "@step.authorize.provider_reference",
        },
    },
    baseline="the customer passes the challenge; completing gives status authorized",
)
async def complete_3ds(ctx: ScenarioContext) -> None:
    authorized = await ctx.call("authorize", AUTH, ctx.authorize_request("card.requires_3ds"))
    assert authorized.result is not None and authorized.result.next_action is not None
    recipe = ctx.inputs.get("card.requires_3ds") or {}
    callback = await ctx.customer_action(
        authorized.result.next_action.url, dict(recipe.get("challenge") or {})
    )
    await ctx.call(
        "complete", Operation.COMPLETE_AUTHORIZATION, complete_request(authorized, callback)
    )


@scenario(
    "card.capture.full",
    CARD,
    "Authorize, then capture the whole amount",
    requires=_needs(AUTH, Operation.CAPTURE),
    covers=("operation:capture",),
    expect={
        "authorize": {"status": "authorized"},
        "capture": {
            "status": "captured",
            "outcome": "succeeded",
            "amount_captured": "@request.amount",
            "provider_reference": "@step.authorize.provider_reference",
        },
    },
    baseline="status captured, the whole amount captured",
)
async def capture_full(ctx: ScenarioContext) -> None:
    authorized = await ctx.call("authorize", AUTH, ctx.authorize_request())
    captured = await ctx.call("capture", Operation.CAPTURE, ctx.capture_request(authorized))
    if captured.result is not None and captured.result.status.value == "pending":
        await ctx.settle("capture", captured)


@scenario(
    "card.capture.partial",
    CARD,
    "Capture part of an authorization",
    requires=_needs(AUTH, Operation.CAPTURE, capture_partial=True),
    covers=("capture:partial",),
    expect={
        "authorize": {"status": "authorized"},
        "capture": {
            "status": ["captured", "partially_captured"],
            "outcome": "succeeded",
            "amount_captured": "@request.amount",
        },
    },
    baseline="the part is captured, exactly",
)
async def capture_partial(ctx: ScenarioContext) -> None:
    authorized = await ctx.call("authorize", AUTH, ctx.authorize_request())
    part = half(authorized.request.amount)
    await ctx.call("capture", Operation.CAPTURE, ctx.capture_request(authorized, part))


@scenario(
    "card.capture.multiple",
    CARD,
    "Capture part, then the rest",
    requires=_needs(AUTH, Operation.CAPTURE, capture_partial=True, capture_multiple=True),
    covers=("capture:multiple", "capture:partial"),
    expect={
        "authorize": {"status": "authorized"},
        "capture_1": {"status": "partially_captured", "amount_captured": "@request.amount"},
        "capture_2": {
            "status": "captured",
            "outcome": "succeeded",
            "amount_captured": "@step.authorize.amount_authorized",
        },
    },
    baseline="partially_captured, then captured with the whole amount",
)
async def capture_multiple(ctx: ScenarioContext) -> None:
    authorized = await ctx.call("authorize", AUTH, ctx.authorize_request())
    amount = authorized.request.amount
    first = Money(amount.value // 3, amount.currency)
    rest = Money(amount.value - first.value, amount.currency)
    await ctx.call(
        "capture_1", Operation.CAPTURE, ctx.capture_request(authorized, first, final=False)
    )
    await ctx.call("capture_2", Operation.CAPTURE, ctx.capture_request(authorized, rest))


@scenario(
    "card.void",
    CARD,
    "Authorize, then void",
    requires=_needs(AUTH, Operation.VOID),
    covers=("operation:void",),
    expect={
        "authorize": {"status": "authorized"},
        "void": {
            "status": "voided",
            "outcome": "succeeded",
            "provider_reference": "@step.authorize.provider_reference",
        },
    },
    baseline="status voided",
)
async def void(ctx: ScenarioContext) -> None:
    authorized = await ctx.call("authorize", AUTH, ctx.authorize_request())
    await ctx.call("void", Operation.VOID, ctx.void_request(authorized))


@scenario(
    "card.refund.full",
    CARD,
    "Purchase, then refund everything",
    requires=_needs(AUTH, Operation.REFUND),
    covers=("operation:refund",),
    expect={
        "purchase": {"status": "captured"},
        "refund": {
            "status": "refunded",
            "outcome": "succeeded",
            "amount_refunded": "@request.amount",
        },
    },
    baseline="status refunded, the whole amount refunded",
)
async def refund_full(ctx: ScenarioContext) -> None:
    purchased = await ctx.call("purchase", AUTH, ctx.authorize_request(capture=True))
    amount = purchased.request.amount
    await ctx.call("refund", Operation.REFUND, ctx.refund_request(purchased, amount))


@scenario(
    "card.refund.partial",
    CARD,
    "Refund part of a captured payment",
    requires=_needs(AUTH, Operation.REFUND, refund_partial=True),
    covers=("refund:partial",),
    expect={
        "purchase": {"status": "captured"},
        "refund": {
            "status": "partially_refunded",
            "outcome": "succeeded",
            "amount_refunded": "@request.amount",
        },
    },
    baseline="status partially_refunded, the part refunded exactly",
)
async def refund_partial(ctx: ScenarioContext) -> None:
    purchased = await ctx.call("purchase", AUTH, ctx.authorize_request(capture=True))
    amount = purchased.request.amount
    part = Money(amount.value // 4, amount.currency)
    await ctx.call("refund", Operation.REFUND, ctx.refund_request(purchased, part))


@scenario(
    "card.refund.partial_twice",
    CARD,
    "Refund part, twice",
    requires=_needs(AUTH, Operation.REFUND, refund_partial=True, refund_multiple=True),
    covers=("refund:multiple", "refund:partial"),
    expect={
        "purchase": {"status": "captured"},
        "refund_1": {"status": "partially_refunded", "amount_refunded": "@request.amount"},
        "refund_2": {"status": "partially_refunded", "amount_refunded_is_sum": True},
    },
    baseline="two partial refunds; the refunded total is their exact sum",
)
async def refund_partial_twice(ctx: ScenarioContext) -> None:
    purchased = await ctx.call("purchase", AUTH, ctx.authorize_request(capture=True))
    amount = purchased.request.amount
    first = Money(amount.value // 4, amount.currency)
    second = Money(amount.value // 3, amount.currency)
    await ctx.call("refund_1", Operation.REFUND, ctx.refund_request(purchased, first))
    refunded = await ctx.call(
        "refund_2", Operation.REFUND, ctx.refund_request(purchased, second), check=False
    )
    total = refunded.result.amount_refunded if refunded.result is not None else None
    refunded.facts["amount_refunded_is_sum"] = total == first + second
    ctx.check("refund_2", refunded.facts, request=refunded.request)


@scenario(
    "card.refund.over_captured",
    CARD,
    "Refund more than was captured",
    requires=_needs(AUTH, Operation.REFUND),
    covers=(),
    expect={
        "purchase": {"status": "captured"},
        "refund": {"refused_cleanly": True, "outcome": ["declined", "@absent"]},
    },
    baseline="a clean refusal (declined, or an error before sending): never unknown, never a crash",
)
async def refund_over_captured(ctx: ScenarioContext) -> None:
    purchased = await ctx.call("purchase", AUTH, ctx.authorize_request(capture=True))
    amount = purchased.request.amount
    too_much = Money(amount.value + 1, amount.currency)
    await ctx.call("refund", Operation.REFUND, ctx.refund_request(purchased, too_much))


@scenario(
    "card.sync",
    CARD,
    "Authorize, then ask the provider where the payment stands",
    requires=_needs(AUTH, Operation.SYNC),
    covers=("operation:sync",),
    expect={
        "authorize": {"status": "authorized"},
        "sync": {
            "status": "authorized",
            "outcome": "succeeded",
            "provider_reference": "@step.authorize.provider_reference",
            "amount_authorized": "@step.authorize.amount_authorized",
        },
    },
    baseline="sync reports the same payment, same status and amount",
)
async def sync(ctx: ScenarioContext) -> None:
    authorized = await ctx.call("authorize", AUTH, ctx.authorize_request())
    await ctx.call("sync", Operation.SYNC, ctx.sync_request(authorized))


@scenario(
    "card.verify",
    CARD,
    "Verify a card (zero amount)",
    requires=_needs(Operation.VERIFY),
    covers=("operation:verify", "method:card"),
    expect={"verify": {"outcome": "succeeded", "decline": "@absent", "provider_requests": 1}},
    baseline="outcome succeeded, nothing declined",
)
async def verify(ctx: ScenarioContext) -> None:
    request = VerifyRequest(
        payment_method=ctx.inputs.card("card.approved"),
        currency=ctx.inputs.currency(),
        idempotency_key=ctx.inputs.key(),
    )
    await ctx.call("verify", Operation.VERIFY, request)


@scenario(
    "card.authorize.idempotent_replay",
    CARD,
    "Authorize twice with the same idempotency key",
    requires=_needs(AUTH, idempotency=True),
    covers=("idempotency",),
    expect={
        "authorize": {"status": "authorized", "idempotency_key_sent": True},
        "replay": {
            "status": "@step.authorize.status",
            "provider_reference": "@step.authorize.provider_reference",
            "idempotency_key_sent": True,
        },
    },
    baseline="the replay returns the same payment: the provider acted once",
)
async def idempotent_replay(ctx: ScenarioContext) -> None:
    request = ctx.authorize_request()
    await ctx.call("authorize", AUTH, request)
    await ctx.call("replay", AUTH, request)


def _currencies(manifest: Manifest) -> list[str]:
    return sorted(manifest.currencies)


@scenario(
    "card.currency.roundtrip",
    CARD,
    "Amounts round-trip exactly",
    requires=_needs(AUTH),
    covers=("currency:{param}",),
    params=_currencies,
    expect={
        "authorize": {
            "status": "authorized",
            "amount_authorized": "@request.amount",
            "amount_on_wire": EXACT,
            "request_json_floats": [],
        }
    },
    baseline="exact amounts (float-hostile, the largest) sent in the provider's minor units and "
    "echoed to the minor unit; no JSON floats",
)
async def currency_roundtrip(ctx: ScenarioContext) -> None:
    """Echoed amounts alone miss a connector whose two conversions are wrong the same way (a
    float, an ignored ``currency_exponents``): ``amount_on_wire`` checks what went out."""
    configured = ctx.inputs.get("currency.roundtrip") or {}
    amounts = configured.get("amounts") or nasty_amounts(ctx.manifest, ctx.param)
    for index, value in enumerate(amounts):
        request = ctx.authorize_request(amount=Money(int(value), ctx.param))
        observed = await call_with_amount_on_wire(ctx, f"authorize_{index + 1}", AUTH, request)
        ctx.check("authorize", observed.facts, request=request)


@scenario(
    "card.unsupported.currency",
    CARD,
    "Authorize in a currency the manifest does not declare",
    requires=_needs(AUTH),
    expect={"authorize": {"raised": "not_supported", "requests_sent": 0}},
    baseline="not_supported before any network call",
)
async def unsupported_currency(ctx: ScenarioContext) -> None:
    currency = ctx.inputs.unsupported_currency()
    if currency is None:
        ctx.skip("every candidate currency is declared")
    await ctx.call("authorize", AUTH, ctx.authorize_request(amount=Money(1050, currency)))


@scenario(
    "card.unsupported.method",
    CARD,
    "Authorize with a payment method the manifest does not declare",
    requires=_needs(AUTH),
    expect={"authorize": {"raised": "not_supported", "requests_sent": 0}},
    baseline="not_supported before any network call",
)
async def unsupported_method(ctx: ScenarioContext) -> None:
    if "bank_account" in {m.value for m in ctx.manifest.payment_methods}:
        ctx.skip("the manifest declares bank accounts too")
    request = AuthorizeRequest(
        amount=ctx.inputs.money(),
        payment_method=BankAccountMethod(holder_name="Conformance", iban="DE89370400440532013000"),
        reference=ctx.inputs.reference(),
        idempotency_key=ctx.inputs.key(),
    )
    await ctx.call("authorize", AUTH, request)


@scenario(
    "card.leak.inline_card",
    CARD,
    "Authorize with inline canary card data; nothing may leak",
    requires=_needs(AUTH),
    covers=("method:card",),
    expect={"authorize": {"status": "authorized", "outcome": "succeeded"}},
    baseline="approved; the canary PAN and CVC appear in no transcript, log, error or report",
)
async def leak_inline_card(ctx: ScenarioContext) -> None:
    await ctx.call("authorize", AUTH, ctx.authorize_request("card.canary", inline=True))
