"""The amount on the wire: did a call's requests carry the request's amount exactly, as the
provider must receive it?

An echoed amount proves little on its own: a connector that converts through a float, or that
ignores the manifest's ``currency_exponents``, both ways, reads back what it sent, and a
provider that does not echo amounts (the profile removed ``amount_authorized``) hides the rest.
So the round-trip scenarios also look at what the traffic tap saw go out.

The kit cannot know where a provider's body keeps the amount (``amount``, ``amount.value``,
``Data.Initiation.InstructedAmount.Amount``, an XML attribute), so it searches the values of
every request the call sent (body and query string) for the amount in either exact form
providers use:

- the provider's minor units, an integer: ISO 4217's exponent, or the manifest's
  ``currency_exponents`` where it declares the currency (what ``CallContext.provider_minor``
  writes); a JSON integer, or a string of digits;
- a string of major units (``"10.03"``, ``"10.030"``, ``"1003"`` for JPY), as Open Banking
  and Berlin Group APIs carry them.

It compares whole values, never substrings: JSON members and array items, form values and
query parameters; in any other body (XML, text) each number in it. JSON floats never count
(they are never exact; ``request_json_floats`` names them). The answer is a fact for the
expectation, ``"exact"`` or a sentence naming the forms looked for; it never quotes the body,
which carries card data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from conformance.harness import Observation, ScenarioContext
from conformance.traffic import TappedExchange
from normalization import InvalidAmountError, Money
from sdk import Manifest, Operation

__all__ = ["EXACT", "amount_on_wire", "call_with_amount_on_wire"]

#: The ``amount_on_wire`` fact when a request carried the amount exactly.
EXACT = "exact"

_FORM = "application/x-www-form-urlencoded"
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"[0-9]+\.[0-9]+", re.ASCII)
# A number standing alone in free text: not glued to other digits, a decimal point or a letter
# (so "v1003", "1003.5" and "10030" do not count as 1003).
_NUMBER_IN_TEXT = re.compile(r"(?<![0-9.A-Za-z])[0-9]+(?:\.[0-9]+)?(?![0-9A-Za-z]|\.[0-9])")


def _json_leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _json_leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _json_leaves(item)
    else:
        yield value


def _values(exchange: TappedExchange) -> Iterator[Any]:
    """Every value the request carried: query parameters, then the body's (see the module
    docstring)."""
    for _, value in parse_qsl(exchange.url.query.decode("ascii", errors="replace")):
        yield value
    if not exchange.body:
        return
    content_type = exchange.content_type
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            yield from _json_leaves(json.loads(exchange.body))
            return
        except ValueError:
            pass  # not JSON after all: search its text like any other body
    text = exchange.body.decode("utf-8", errors="replace")
    if content_type == _FORM:
        for _, value in parse_qsl(text, keep_blank_values=True):
            yield value
        return
    yield from _NUMBER_IN_TEXT.findall(text)


def _carries(value: Any, minor: int, major: Decimal) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value == minor
    if not isinstance(value, str):
        return False  # floats, null: never an exact amount
    if _DIGITS.fullmatch(value):
        return int(value) == minor or Decimal(value) == major
    if _DECIMAL.fullmatch(value):
        try:
            return Decimal(value) == major
        except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
            return False
    return False


def amount_on_wire(manifest: Manifest, amount: Money, exchanges: Sequence[TappedExchange]) -> str:
    """``EXACT`` when a request in ``exchanges`` carried ``amount`` as the provider must
    receive it (see the module docstring); otherwise what was looked for, in one sentence."""
    declared = manifest.exponent_for(amount.currency)
    exponent = amount.exponent if declared is None else declared
    try:
        minor = amount.to_provider_minor(declared)
    except InvalidAmountError:
        return (
            f"not checked: {amount} cannot be carried at the provider's exponent {exponent} "
            "(currency_exponents)"
        )
    major = Decimal(minor).scaleb(-exponent)
    if not exchanges:
        return "not sent: the call sent no request"
    if any(_carries(v, minor, major) for exchange in exchanges for v in _values(exchange)):
        return EXACT
    source = "currency_exponents" if declared is not None else "ISO 4217"
    return (
        f"not sent: no integer or string in the request equals {minor} ({amount.currency} "
        f"minor units at the provider's exponent {exponent}, from {source}) or the major-unit "
        f"string {major:f}"
    )


async def call_with_amount_on_wire(
    ctx: ScenarioContext, step: str, operation: Operation, request: Any
) -> Observation:
    """``ctx.call`` of ``request`` (which has an ``amount``), unchecked, with the
    ``amount_on_wire`` fact added: the scenario adds any facts of its own, then checks."""
    start = len(ctx.exchanges)
    observed = await ctx.call(step, operation, request, check=False)
    observed.facts["amount_on_wire"] = amount_on_wire(
        ctx.manifest, request.amount, ctx.exchanges[start:]
    )
    return observed
