"""What several scenarios share: each profile's first money-moving call, bank and open-banking
request builders, the half of an amount a partial capture or refund moves, amounts that break
float arithmetic, and how a scenario makes webhooks happen.

``first_call(ctx)`` is the operation and request a profile starts every payment with (card:
authorize an approved card; bank rail: a credit, or a debit; open banking: a consent). Fault,
breaker, bulkhead and currency scenarios are written once against it.
"""

from __future__ import annotations

from typing import Any

from conformance.harness import Observation, ScenarioContext
from conformance.inputs import RETURN_URL
from normalization import (
    MAX_AMOUNT_MINOR,
    ConsentRequest,
    DebitRequest,
    Money,
    PaymentStatus,
    PayoutRequest,
    currency_exponent,
)
from sdk import Category, CompleteAuthorizationRequest, Manifest, Operation, SubmitRequest

__all__ = [
    "FIRST_OPERATIONS",
    "complete_request",
    "consent_request",
    "debit_request",
    "first_call",
    "first_operation",
    "half",
    "nasty_amounts",
    "payout_request",
    "submit_request",
]

#: The operation a profile's payments start with, in order of preference.
FIRST_OPERATIONS: dict[Category, tuple[Operation, ...]] = {
    Category.CARD_ACQUIRER: (Operation.AUTHORIZE,),
    Category.BANK_RAIL: (Operation.CREDIT, Operation.DEBIT),
    Category.OPEN_BANKING: (Operation.CREATE_CONSENT,),
}


def first_operation(manifest: Manifest, profile: Category) -> Operation | None:
    return next((op for op in FIRST_OPERATIONS[profile] if op in manifest.operations), None)


def payout_request(
    ctx: ScenarioContext,
    account: str = "bank.account.valid",
    *,
    amount: Money | None = None,
    key: str | None = None,
) -> PayoutRequest:
    destination = ctx.inputs.bank_account(account)
    money = amount or ctx.inputs.money(account)
    return PayoutRequest(
        amount=money,
        destination=destination,
        reference=ctx.inputs.reference(),
        idempotency_key=key or ctx.inputs.key(),
        description="Conformance payout",
    )


def debit_request(
    ctx: ScenarioContext,
    account: str = "bank.account.valid",
    *,
    amount: Money | None = None,
    key: str | None = None,
) -> DebitRequest:
    source = ctx.inputs.bank_account(account)
    money = amount or ctx.inputs.money(account)
    return DebitRequest(
        amount=money,
        source=source,
        reference=ctx.inputs.reference(),
        idempotency_key=key or ctx.inputs.key(),
        description="Conformance debit",
    )


def consent_request(
    ctx: ScenarioContext,
    payer: str = "open_banking.payer",
    *,
    amount: Money | None = None,
    key: str | None = None,
) -> ConsentRequest:
    method = ctx.inputs.payer(payer)
    money = amount or ctx.inputs.money(payer)
    return ConsentRequest(
        amount=money,
        payer=method,
        return_url=RETURN_URL,
        reference=ctx.inputs.reference(),
        idempotency_key=key or ctx.inputs.key(),
    )


def complete_request(about: Observation, callback: dict[str, str]) -> CompleteAuthorizationRequest:
    return CompleteAuthorizationRequest(
        payment_id=about.payment_id or about.reference or "payment",
        provider_reference=about.provider_reference,
        callback_parameters=callback,
        reference=about.reference,
    )


def submit_request(
    ctx: ScenarioContext, consent: Observation, key: str | None = None
) -> SubmitRequest:
    return SubmitRequest(
        payment_id=consent.payment_id or consent.reference or "payment",
        provider_reference=consent.provider_reference,
        consent_reference=consent.provider_reference or "",
        reference=consent.reference,
        idempotency_key=key or ctx.inputs.key(),
    )


def first_call(
    ctx: ScenarioContext, *, amount: Money | None = None, key: str | None = None
) -> tuple[Operation, Any]:
    """The profile's first call with an approved input; skips when the manifest has none."""
    operation = first_operation(ctx.manifest, ctx.instance.scenario.profile)
    if operation is None:
        ctx.skip("the manifest declares none of this profile's first operations")
    if operation is Operation.AUTHORIZE:
        return operation, ctx.authorize_request(amount=amount, key=key)
    if operation is Operation.CREDIT:
        return operation, payout_request(ctx, amount=amount, key=key)
    if operation is Operation.DEBIT:
        return operation, debit_request(ctx, amount=amount, key=key)
    return operation, consent_request(ctx, amount=amount, key=key)


def half(amount: Money) -> Money:
    """Half of ``amount`` (rounded down) for a partial capture or refund, and never less than
    one minor unit: half of 1 would be 0, which no capture or refund request takes."""
    return Money(max(amount.value // 2, 1), amount.currency)


#: First answers that mean the provider accepted a first call (before any settlement).
ACCEPTED_FIRST_STATUSES = [
    PaymentStatus.AUTHORIZED.value,
    PaymentStatus.CAPTURED.value,
    PaymentStatus.PENDING.value,
    PaymentStatus.REQUIRES_ACTION.value,
]


def nasty_amounts(manifest: Manifest, currency: str) -> list[int]:
    """Amounts (ISO 4217 minor units, what ``Money`` takes) that float arithmetic gets wrong at
    the provider's exponent for ``currency`` (the manifest's ``currency_exponents``, else ISO's):
    ``int(float(major) * 10**e)`` truncates them, and the largest exact amount loses digits in
    any binary float. Each can be carried exactly at the provider's exponent."""
    iso = currency_exponent(currency)
    exponent = manifest.exponent_for(currency)
    if exponent is None:
        exponent = iso
    # Found by search: int(float("10.03") * 100) == 1002; round() fails on the large ones.
    small = {2: 1003, 3: 1005, 4: 1020}.get(exponent, 1005)
    large = {3: 9_007_199_254_740_989}.get(exponent, 9_007_199_254_740_987)
    if exponent >= iso:
        # A finer provider exponent carries every ISO amount exactly.
        return [small, large]
    # A coarser one ({"HUF": 0}) carries only whole multiples of 10**(iso - exponent) ISO minor
    # units: anything else is refused before sending (InvalidAmountError), so the amounts are
    # taken in the provider's units and scaled up, the largest capped at what Money can hold.
    factor = 10 ** (iso - exponent)
    return [small * factor, min(large * factor, MAX_AMOUNT_MINOR // factor * factor)]
