"""The bank-rail profile: credit, debit, pending -> settled, returns, invalid accounts,
idempotent resubmission, exact amounts.

Inputs: ``bank.account.valid`` (default: a well-known valid test IBAN), ``bank.account.returned``
(an account the provider returns debits from, with a reason code), ``bank.account.invalid``
(default: an IBAN with wrong check digits).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from conformance.harness import ScenarioContext
from conformance.scenarios.flows import (
    ACCEPTED_FIRST_STATUSES,
    debit_request,
    first_call,
    first_operation,
    nasty_amounts,
    payout_request,
)
from conformance.scenarios.model import Requirement, scenario
from conformance.scenarios.wire import EXACT, call_with_amount_on_wire
from normalization import InvalidRequestError, Money, PaymentStatus
from sdk import Category, Manifest, Operation

BANK = Category.BANK_RAIL
SETTLED = [PaymentStatus.CAPTURED.value]
ACCEPTED: dict[str, Any] = {
    "status": ["pending", "captured"],
    "outcome": "succeeded",
    "provider_reference": "@present",
    "decline": "@absent",
}


def _needs(*operations: Operation, **flags: bool) -> Requirement:
    return Requirement(
        operations=frozenset(operations), methods=frozenset({"bank_account"}), **flags
    )


@scenario(
    "bank.credit",
    BANK,
    "Pay out to a bank account",
    requires=_needs(Operation.CREDIT),
    covers=("operation:credit", "method:bank_account"),
    expect={"credit": {**ACCEPTED, "amount_captured": ["@request.amount", "@absent"]}},
    baseline="accepted (pending or settled), provider reference present",
)
async def credit(ctx: ScenarioContext) -> None:
    await ctx.call("credit", Operation.CREDIT, payout_request(ctx))


@scenario(
    "bank.debit",
    BANK,
    "Pull from a bank account",
    requires=_needs(Operation.DEBIT),
    covers=("operation:debit", "method:bank_account"),
    expect={"debit": ACCEPTED},
    baseline="accepted (pending or settled), provider reference present",
)
async def debit(ctx: ScenarioContext) -> None:
    await ctx.call("debit", Operation.DEBIT, debit_request(ctx))


@scenario(
    "bank.settlement",
    BANK,
    "A pending transfer settles",
    requires=Requirement(operations=frozenset({Operation.SYNC})),
    covers=("operation:sync",),
    expect={
        "first": {"status": ["pending", "captured"], "outcome": "succeeded"},
        "settled": {
            "status": "captured",
            "outcome": "succeeded",
            "provider_reference": "@step.first.provider_reference",
        },
    },
    baseline="pending, then (polled with a deadline) settled",
)
async def settlement(ctx: ScenarioContext) -> None:
    operation, request = first_call(ctx)
    first = await ctx.call("first", operation, request)
    await ctx.settle("settled", first)


@scenario(
    "bank.return",
    BANK,
    "A debit is returned with a reason code",
    requires=_needs(Operation.DEBIT, Operation.SYNC),
    inputs=("bank.account.returned",),
    expect={
        "debit": {"status": ["pending", "captured"], "outcome": "succeeded"},
        "returned": {
            "status": ["failed", "declined"],
            "decline": {"code": "payment_returned", "provider_code": "@present"},
        },
    },
    baseline="pending, then returned: payment_returned with the rail's reason code",
)
async def returned(ctx: ScenarioContext) -> None:
    first = await ctx.call("debit", Operation.DEBIT, debit_request(ctx, "bank.account.returned"))
    await ctx.settle(
        "returned", first, until=lambda result: result.status.value not in ("pending", "captured")
    )


@scenario(
    "bank.invalid_account",
    BANK,
    "An invalid IBAN or routing number is rejected before sending",
    requires=Requirement(),
    expect={"payout": {"raised": ["invalid_bank_account", "invalid_request"], "requests_sent": 0}},
    baseline="invalid_bank_account, and nothing reaches the provider",
)
async def invalid_account(ctx: ScenarioContext) -> None:
    operation = first_operation(ctx.manifest, BANK)
    if operation is None:
        ctx.skip("the manifest declares neither credit nor debit")
    window = ctx.window()
    error: InvalidRequestError | None = None
    try:
        builder = payout_request if operation is Operation.CREDIT else debit_request
        request = builder(ctx, "bank.account.invalid")
    except (InvalidRequestError, ValidationError) as exc:
        error = exc if isinstance(exc, InvalidRequestError) else InvalidRequestError(str(exc))
        request = None
    if request is not None:
        result, raised = await ctx.invoke(operation, request)
        facts = ctx.facts(result, raised, request, window)
    else:
        facts = ctx.facts(None, error, None, window)
    ctx.check("payout", facts)


@scenario(
    "bank.idempotent_resubmission",
    BANK,
    "Resubmit a transfer with the same idempotency key",
    requires=Requirement(idempotency=True),
    covers=("idempotency",),
    expect={
        "first": {"status": ACCEPTED_FIRST_STATUSES, "idempotency_key_sent": True},
        "resubmitted": {
            "provider_reference": "@step.first.provider_reference",
            "idempotency_key_sent": True,
        },
    },
    baseline="the resubmission returns the same transfer: the rail moved money once",
)
async def idempotent_resubmission(ctx: ScenarioContext) -> None:
    operation, request = first_call(ctx)
    await ctx.call("first", operation, request)
    await ctx.call("resubmitted", operation, request)


def _currencies(manifest: Manifest) -> list[str]:
    return sorted(manifest.currencies)


@scenario(
    "bank.currency.roundtrip",
    BANK,
    "Amounts round-trip exactly",
    covers=("currency:{param}",),
    params=_currencies,
    expect={
        "transfer": {
            "outcome": "succeeded",
            "request_json_floats": [],
            "amount_exact": True,
            "amount_on_wire": EXACT,
        }
    },
    baseline="exact amounts sent in the provider's minor units and echoed to the minor unit; no "
    "JSON floats",
)
async def currency_roundtrip(ctx: ScenarioContext) -> None:
    configured = ctx.inputs.get("currency.roundtrip") or {}
    amounts = configured.get("amounts") or nasty_amounts(ctx.manifest, ctx.param)[:1]
    for index, value in enumerate(amounts):
        operation, request = first_call(ctx, amount=Money(int(value), ctx.param))
        observed = await call_with_amount_on_wire(ctx, f"transfer_{index + 1}", operation, request)
        result = observed.result
        echoed = [
            amount
            for amount in (
                (result.amount_captured, result.amount_authorized) if result is not None else ()
            )
            if amount is not None
        ]
        observed.facts["amount_exact"] = bool(echoed) and all(a == request.amount for a in echoed)
        ctx.check("transfer", observed.facts, request=request)
