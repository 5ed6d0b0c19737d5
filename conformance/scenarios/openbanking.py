"""The open-banking profile: consent -> ``requires_action`` redirect -> the customer authorizes at
the bank -> authorization completed -> submitted -> final status; rejected and expired consents;
idempotent consent creation.

Inputs: ``open_banking.payer`` (default: a UK sort-code account as creditor), ``consent.approve``
and ``consent.reject`` (customer recipes: ``method``, ``query`` or ``form`` to send to the bank's
redirect page, which must send the customer back to the return URL with its callback
parameters), ``consent.expired`` (a payer whose consent the bank lets expire; the scenario
sends no customer to the bank, so it takes no recipe).
"""

from __future__ import annotations

from typing import Any

from conformance.harness import Observation, ScenarioContext
from conformance.scenarios.flows import (
    complete_request,
    consent_request,
    nasty_amounts,
    submit_request,
)
from conformance.scenarios.model import Requirement, scenario
from conformance.scenarios.wire import EXACT, call_with_amount_on_wire
from normalization import Money
from sdk import Category, Manifest, Operation

OB = Category.OPEN_BANKING
CONSENT = Operation.CREATE_CONSENT
REDIRECT: dict[str, Any] = {
    "status": "requires_action",
    "outcome": "succeeded",
    "next_action": {"type": "redirect", "url": "@present"},
    "provider_reference": "@present",
}


def _needs(*operations: Operation) -> Requirement:
    return Requirement(
        operations=frozenset({CONSENT, *operations}), methods=frozenset({"open_banking"})
    )


async def _authorize_at_bank(
    ctx: ScenarioContext, consent: Observation, recipe: str
) -> dict[str, str]:
    values = ctx.inputs.require(recipe)
    assert consent.result is not None and consent.result.next_action is not None
    return await ctx.customer_action(consent.result.next_action.url, values)


@scenario(
    "ob.consent.redirect",
    OB,
    "Create a consent",
    requires=_needs(),
    covers=("operation:create_consent", "method:open_banking"),
    expect={"consent": REDIRECT},
    baseline="requires_action with the bank's redirect",
)
async def consent_redirect(ctx: ScenarioContext) -> None:
    await ctx.call("consent", CONSENT, consent_request(ctx))


@scenario(
    "ob.payment.completed",
    OB,
    "Consent, authorize at the bank, complete, submit, settle",
    requires=_needs(Operation.COMPLETE_AUTHORIZATION, Operation.SUBMIT),
    covers=("operation:complete_authorization", "operation:submit"),
    inputs=("consent.approve",),
    expect={
        "consent": REDIRECT,
        "authorized": {
            "status": "authorized",
            "outcome": "succeeded",
            "provider_reference": "@step.consent.provider_reference",
        },
        "submitted": {"status": ["pending", "captured"], "outcome": "succeeded"},
        "final": {"status": "captured", "outcome": "succeeded"},
    },
    baseline="authorized after the redirect, submitted, then (polled) captured",
)
async def payment_completed(ctx: ScenarioContext) -> None:
    consent = await ctx.call("consent", CONSENT, consent_request(ctx))
    callback = await _authorize_at_bank(ctx, consent, "consent.approve")
    await ctx.call(
        "authorized", Operation.COMPLETE_AUTHORIZATION, complete_request(consent, callback)
    )
    submitted = await ctx.call("submitted", Operation.SUBMIT, submit_request(ctx, consent))
    if ctx.declares(Operation.SYNC):
        await ctx.settle("final", submitted)
    elif submitted.result is not None:
        ctx.check("final", submitted.facts)


@scenario(
    "ob.sync",
    OB,
    "Ask the bank where a consent stands",
    requires=_needs(Operation.SYNC),
    covers=("operation:sync",),
    expect={
        "consent": REDIRECT,
        "sync": {
            "status": "requires_action",
            "outcome": "succeeded",
            "provider_reference": "@step.consent.provider_reference",
        },
    },
    baseline="sync reports the consent still awaiting the customer",
)
async def consent_sync(ctx: ScenarioContext) -> None:
    consent = await ctx.call("consent", CONSENT, consent_request(ctx))
    await ctx.call("sync", Operation.SYNC, ctx.sync_request(consent))


@scenario(
    "ob.consent.rejected",
    OB,
    "The customer rejects the consent at the bank",
    requires=_needs(Operation.COMPLETE_AUTHORIZATION),
    inputs=("consent.reject",),
    expect={
        "consent": REDIRECT,
        "rejected": {"status": "declined", "decline": {"code": "consent_rejected"}},
    },
    baseline="declined with consent_rejected",
)
async def consent_rejected(ctx: ScenarioContext) -> None:
    consent = await ctx.call("consent", CONSENT, consent_request(ctx))
    callback = await _authorize_at_bank(ctx, consent, "consent.reject")
    await ctx.call(
        "rejected", Operation.COMPLETE_AUTHORIZATION, complete_request(consent, callback)
    )


@scenario(
    "ob.consent.expired",
    OB,
    "The consent expires before the customer authorizes it",
    requires=_needs(Operation.SYNC),
    inputs=("consent.expired",),
    expect={
        "consent": REDIRECT,
        "expired": {"status": "declined", "decline": {"code": "consent_expired"}},
    },
    baseline="declined with consent_expired (polled with a deadline)",
)
async def consent_expired(ctx: ScenarioContext) -> None:
    consent = await ctx.call("consent", CONSENT, consent_request(ctx, "consent.expired"))
    await ctx.settle(
        "expired", consent, until=lambda result: result.status.value != "requires_action"
    )


@scenario(
    "ob.consent.idempotent",
    OB,
    "Create a consent twice with the same idempotency key",
    requires=Requirement(operations=frozenset({CONSENT}), idempotency=True),
    covers=("idempotency",),
    expect={
        "consent": {**REDIRECT, "idempotency_key_sent": True},
        "again": {
            "provider_reference": "@step.consent.provider_reference",
            "idempotency_key_sent": True,
        },
    },
    baseline="the same consent comes back: the bank created one",
)
async def consent_idempotent(ctx: ScenarioContext) -> None:
    request = consent_request(ctx)
    await ctx.call("consent", CONSENT, request)
    await ctx.call("again", CONSENT, request)


def _currencies(manifest: Manifest) -> list[str]:
    return sorted(manifest.currencies)


@scenario(
    "ob.currency.roundtrip",
    OB,
    "Amounts round-trip exactly",
    requires=_needs(),
    covers=("currency:{param}",),
    params=_currencies,
    expect={
        "consent": {
            **REDIRECT,
            "amount_authorized": ["@request.amount", "@absent"],
            "amount_on_wire": EXACT,
            "request_json_floats": [],
        }
    },
    baseline="exact amounts sent (minor units, or a major-unit string); no JSON floats",
)
async def currency_roundtrip(ctx: ScenarioContext) -> None:
    configured = ctx.inputs.get("currency.roundtrip") or {}
    amounts = configured.get("amounts") or nasty_amounts(ctx.manifest, ctx.param)[:1]
    for index, value in enumerate(amounts):
        request = consent_request(ctx, amount=Money(int(value), ctx.param))
        observed = await call_with_amount_on_wire(ctx, f"consent_{index + 1}", CONSENT, request)
        ctx.check("consent", observed.facts, request=request)
