"""The round-trip scenarios check the amount on the wire, not only the amount echoed back.

``amount_on_wire`` is tested on request bodies of each kind (JSON, form, XML, query), and the
card round trip end to end against small connectors of one simulator: correct ones (JSON and
form, minor units and major-unit strings, with ``currency_exponents``) pass, while a connector
that ignores its declared exponents both ways, or sends a float-mangled amount and reports the
requested one, is caught although every echoed amount matches.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from aiohttp import web

from conformance.environment import Mode, RunConfig
from conformance.results import Verdict
from conformance.runner import ConformanceRun
from conformance.scenarios.flows import nasty_amounts
from conformance.scenarios.wire import EXACT, amount_on_wire
from conformance.traffic import TappedExchange
from normalization import (
    AuthorizeRequest,
    CardMethod,
    Money,
    Outcome,
    PaymentMethodType,
    PaymentResult,
    PaymentStatus,
)
from sdk import BaseUrls, CallContext, Category, Connector, Manifest, Operation
from sdk.testing import canary_pan
from tests.conformance.conftest import Register, by_id, write_profile

JSON = [("content-type", "application/json")]
FORM = [("content-type", "application/x-www-form-urlencoded")]
XML = [("content-type", "application/xml")]


def manifest(connector_id: str, **update: Any) -> Manifest:
    return Manifest(
        id=connector_id,
        display_name="Wire amount test acquirer",
        category=Category.CARD_ACQUIRER,
        operations=frozenset({Operation.AUTHORIZE}),
        payment_methods=frozenset({PaymentMethodType.CARD}),
        currencies=frozenset({"EUR", "USD", "GBP"}),
        base_urls=BaseUrls(sandbox="https://amounts.tessera.invalid/v1"),
        **update,
    )


#: EUR with a finer exponent than ISO's, USD with a coarser one, GBP as ISO.
EXPONENTS = {"EUR": 3, "USD": 0}
PLAIN = manifest("wire_plain")
SCALED = manifest("wire_scaled", currency_exponents=EXPONENTS)


def exchange(body: bytes, headers: list[tuple[str, str]], url: str = "/v1/pay") -> TappedExchange:
    return TappedExchange("POST", httpx.URL(f"http://127.0.0.1:9{url}"), headers, body)


# -- amount_on_wire -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"amount": 1003, "currency": "EUR"}', JSON),
        (b'{"payment": {"amount": {"value": 1003, "currency": "EUR"}}}', JSON),
        (b'{"amount": "1003"}', JSON),
        (b'{"Data": {"InstructedAmount": {"Amount": "10.03", "Currency": "EUR"}}}', JSON),
        (b'{"lines": [{"sku": "x"}, {"amount": "10.030"}]}', JSON),
        (b"amount=1003&currency=eur&card[number]=4111", FORM),
        (b"amount=10.03&currency=eur", FORM),
        (b'<payment><amount currency="EUR" exponent="2">1003</amount></payment>', XML),
        (b'<payment value="10.03"/>', XML),
        (b'{"amount": 1003}', []),  # no content type: searched as text
    ],
    ids=[
        "json-int",
        "json-nested",
        "json-digit-string",
        "json-major-string",
        "json-in-array",
        "form",
        "form-major",
        "xml-text",
        "xml-attribute",
        "untyped",
    ],
)
def test_the_amount_is_found_in_each_kind_of_body(
    body: bytes, headers: list[tuple[str, str]]
) -> None:
    assert amount_on_wire(PLAIN, Money(1003, "EUR"), [exchange(body, headers)]) == EXACT


def test_the_amount_is_found_in_the_query_string_and_in_any_request_of_the_call() -> None:
    query = exchange(b"", [], "/v1/pay?amount=1003&currency=EUR")
    assert amount_on_wire(PLAIN, Money(1003, "EUR"), [query]) == EXACT
    lookup = exchange(b"", [], "/v1/sessions?reference=r1")
    create = exchange(b'{"amount": 1003}', JSON)
    assert amount_on_wire(PLAIN, Money(1003, "EUR"), [lookup, create]) == EXACT


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"amount": 1002}', JSON),  # int(float("10.03") * 100)
        (b'{"amount": 10.03}', JSON),  # a JSON float is never exact
        (b'{"amount": 1003.0}', JSON),
        (b'{"amount": true, "reference": "order-1003", "id": "1003a"}', JSON),  # substrings
        (b'{"amount": "10.02"}', JSON),
        (b"amount=100300&currency=eur", FORM),  # ISO units where the provider wants others
        (b"amount=1003.5", FORM),
        (b"<amount>10030</amount><ref>v1003</ref><n>1003.5</n>", XML),
        (b"", JSON),
    ],
    ids=[
        "float-mangled",
        "json-float",
        "json-whole-float",
        "substrings-and-bool",
        "wrong-major",
        "wrong-exponent",
        "form-not-whole",
        "xml-neighbours",
        "empty",
    ],
)
def test_what_is_not_the_amount_exactly_is_not_found(
    body: bytes, headers: list[tuple[str, str]]
) -> None:
    found = amount_on_wire(PLAIN, Money(1003, "EUR"), [exchange(body, headers)])
    assert found == (
        "not sent: no integer or string in the request equals 1003 (EUR minor units at the "
        "provider's exponent 2, from ISO 4217) or the major-unit string 10.03"
    )


def test_the_manifests_currency_exponents_decide_the_wire_amount() -> None:
    """EUR at exponent 3: 10.03 EUR goes out as 10030 (or "10.030"), never as ISO's 1003."""
    eur = Money(1003, "EUR")
    assert amount_on_wire(SCALED, eur, [exchange(b'{"amount": 10030}', JSON)]) == EXACT
    assert amount_on_wire(SCALED, eur, [exchange(b'{"amount": "10.030"}', JSON)]) == EXACT
    ignored = amount_on_wire(SCALED, eur, [exchange(b'{"amount": 1003}', JSON)])
    assert ignored.startswith("not sent: no integer or string in the request equals 10030 (EUR")
    assert "exponent 3, from currency_exponents" in ignored
    # USD at exponent 0: $1,005.00 goes out as 1005.
    usd = Money(100500, "USD")
    assert amount_on_wire(SCALED, usd, [exchange(b"amount=1005", FORM)]) == EXACT
    assert amount_on_wire(SCALED, usd, [exchange(b"amount=100500", FORM)]).startswith("not sent")
    # An amount the provider's form cannot carry is refused before sending: nothing to find.
    cents = amount_on_wire(SCALED, Money(1005, "USD"), [])
    assert cents == (
        "not checked: 10.05 USD cannot be carried at the provider's exponent 0 (currency_exponents)"
    )
    assert amount_on_wire(PLAIN, eur, []) == "not sent: the call sent no request"


def test_the_answer_never_quotes_the_body() -> None:
    """Bodies carry card data: a miss names the forms looked for, not what was there."""
    pan = canary_pan()
    body = json.dumps({"card": {"number": pan, "cvc": "737"}, "amount": 999}).encode()
    found = amount_on_wire(PLAIN, Money(1003, "EUR"), [exchange(body, JSON)])
    assert found.startswith("not sent")
    for secret in (pan, "737", "999"):
        assert secret not in found


def test_the_largest_amounts_are_compared_exactly() -> None:
    """The largest amounts lose their last digits through a float: the search compares
    integers and decimals, never floats."""
    largest = nasty_amounts(PLAIN, "EUR")[1]
    money = Money(largest, "EUR")
    sent = exchange(json.dumps({"amount": largest}).encode(), JSON)
    floated = int(float(money.to_major_string()) * 100)
    assert floated != largest
    rounded = exchange(json.dumps({"amount": floated}).encode(), JSON)
    assert amount_on_wire(PLAIN, money, [sent]) == EXACT
    assert amount_on_wire(PLAIN, money, [rounded]).startswith("not sent")
    major = exchange(json.dumps({"amount": money.to_major_string()}).encode(), JSON)
    assert amount_on_wire(PLAIN, money, [major]) == EXACT


@pytest.mark.parametrize("currency", ["EUR", "USD", "GBP"])
def test_round_trip_amounts_can_be_carried_at_the_providers_exponent(currency: str) -> None:
    """{"USD": 0}: the default amounts were ISO cents a provider without cents cannot carry,
    so a correct connector failed the round trip with invalid_amount."""
    for value in nasty_amounts(SCALED, currency):
        provider_minor = Money(value, currency).to_provider_minor(SCALED.exponent_for(currency))
        assert provider_minor > 0


def test_round_trip_amounts_at_a_coarser_exponent_are_scaled_and_others_unchanged() -> None:
    # $1,005.00 and the largest whole-dollar amount Money holds.
    assert nasty_amounts(SCALED, "USD") == [100500, 9_007_199_254_740_900]
    # A finer exponent carries every ISO amount: those amounts are as they were.
    assert nasty_amounts(SCALED, "EUR") == [1005, 9_007_199_254_740_989]
    assert nasty_amounts(PLAIN, "EUR") == [1003, 9_007_199_254_740_987]


# -- the card round trip, end to end --------------------------------------------------------------


def create_app() -> web.Application:
    """A lenient acquirer: authorizes anything, echoing the amount field as it arrived."""

    async def payments(request: web.Request) -> web.Response:
        if request.content_type == "application/json":
            body: dict[str, Any] = await request.json()
        else:
            body = dict(parse_qsl(await request.text()))
        reply = {
            "id": secrets.token_hex(6),
            "status": "authorized",
            "amount": body["amount"],
            "currency": body["currency"],
        }
        return web.json_response(reply)

    app = web.Application()
    app.router.add_post("/v1/payments", payments)
    return app


class WireConnector(Connector):
    """Sends the provider's minor units as JSON and reads them back (``CallContext`` applies
    the manifest's ``currency_exponents`` both ways). Subclasses change one thing."""

    manifest = manifest("wire_json", currency_exponents=EXPONENTS)

    def wire_amount(self, amount: Money, ctx: CallContext) -> int | str:
        return ctx.provider_minor(amount)

    def read_amount(self, value: Any, currency: str, ctx: CallContext, request: Money) -> Money:
        return ctx.provider_money(int(value), currency)

    async def send(self, ctx: CallContext, body: dict[str, Any]) -> httpx.Response:
        return await ctx.send("POST", "/payments", json=body)

    async def authorize(self, request: AuthorizeRequest, ctx: CallContext) -> PaymentResult:
        assert isinstance(request.payment_method, CardMethod)
        card = ctx.card(request.payment_method)
        body = {
            "amount": self.wire_amount(request.amount, ctx),
            "currency": request.amount.currency,
            "card": {"number": card.number, "exp_month": card.exp_month},
        }
        data = (await self.send(ctx, body)).json()
        money = self.read_amount(data["amount"], data["currency"], ctx, request.amount)
        return PaymentResult(
            status=PaymentStatus.AUTHORIZED,
            outcome=Outcome.SUCCEEDED,
            provider_reference=data["id"],
            amount_authorized=money,
            raw_status=data["status"],
        )


class WireFormConnector(WireConnector):
    """The same, as a form body (Stripe's shape: bracketed keys for the card)."""

    manifest = manifest("wire_form", currency_exponents=EXPONENTS)

    async def send(self, ctx: CallContext, body: dict[str, Any]) -> httpx.Response:
        card = body.pop("card")
        form = {**body, **{f"card[{k}]": v for k, v in card.items()}}
        return await ctx.send("POST", "/payments", data=form)


class WireMajorConnector(WireConnector):
    """Major units as a decimal string, Open Banking's way ("10.03")."""

    manifest = manifest("wire_major")

    def wire_amount(self, amount: Money, ctx: CallContext) -> int | str:
        return amount.to_major_string()

    def read_amount(self, value: Any, currency: str, ctx: CallContext, request: Money) -> Money:
        return Money.from_major(str(value), currency)


class IgnoresExponentsConnector(WireConnector):
    """Declares ``currency_exponents`` but sends and reads ISO minor units: its echo always
    matches, while the provider charges 1003 "EUR thousandths" for 10.03 EUR."""

    manifest = manifest("wire_ignores_exponents", currency_exponents=EXPONENTS)

    def wire_amount(self, amount: Money, ctx: CallContext) -> int | str:
        return amount.value

    def read_amount(self, value: Any, currency: str, ctx: CallContext, request: Money) -> Money:
        return Money(int(value), currency)


class ReportsRequestedAmountConnector(WireFormConnector):
    """Converts through a float (10.03 EUR goes out as 1002 cents, form-encoded) and reports
    the amount it was asked for instead of reading the provider's."""

    manifest = manifest("wire_float_form")

    def wire_amount(self, amount: Money, ctx: CallContext) -> int | str:
        return int(float(amount.to_major_string()) * 10**amount.exponent)

    def read_amount(self, value: Any, currency: str, ctx: CallContext, request: Money) -> Money:
        return request


ROUNDTRIP = ("card.currency.roundtrip",)


async def _roundtrip(register: Register, connector: type[Connector]) -> ConformanceRun:
    register(connector, create_app)
    run = ConformanceRun(
        RunConfig(connector=connector.manifest.id, mode=Mode.SIMULATOR, select=ROUNDTRIP)
    )
    await run.run_all()
    return run


@pytest.mark.parametrize(
    "connector",
    [WireConnector, WireFormConnector, WireMajorConnector],
    ids=["json-minor-units", "form-minor-units", "major-unit-strings"],
)
async def test_connectors_sending_the_exact_amount_pass(
    register: Register, connector: type[Connector]
) -> None:
    results = by_id((await _roundtrip(register, connector)).report)
    assert set(results) == {f"card.currency.roundtrip[{c}]" for c in ("EUR", "GBP", "USD")}
    for scenario_id, result in results.items():
        assert result.verdict is Verdict.PASSED, (scenario_id, result.reason)
        wire = [a for a in result.assertions if a.path == "amount_on_wire"]
        assert len(wire) == 2 and all(a.passed for a in wire)  # both default amounts


@pytest.mark.parametrize(
    ("connector", "caught"),
    [
        (
            IgnoresExponentsConnector,
            {
                "EUR": "equals 10050 (EUR minor units at the provider's exponent 3, from "
                "currency_exponents) or the major-unit string 10.050",
                "USD": "equals 1005 (USD minor units at the provider's exponent 0, from "
                "currency_exponents) or the major-unit string 1005",
            },
        ),
        (
            ReportsRequestedAmountConnector,
            {
                currency: f"equals 1003 ({currency} minor units at the provider's exponent 2, "
                "from ISO 4217) or the major-unit string 10.03"
                for currency in ("EUR", "GBP", "USD")
            },
        ),
    ],
    ids=["ignores-currency-exponents", "float-on-the-wire-requested-amount-reported"],
)
async def test_a_wrong_amount_on_the_wire_fails_though_the_echo_matches(
    register: Register, connector: type[Connector], caught: dict[str, str]
) -> None:
    run = await _roundtrip(register, connector)
    results = by_id(run.report)
    for currency in ("EUR", "GBP", "USD"):
        result = results[f"card.currency.roundtrip[{currency}]"]
        if currency not in caught:
            assert result.verdict is Verdict.PASSED, (currency, result.reason)
            continue
        assert result.verdict is Verdict.FAILED, currency
        # Only the wire check sees it: the echoed amount matched the request.
        failed = [a.path for a in result.assertions if not a.passed]
        assert failed == ["amount_on_wire"], (currency, result.reason)
        assert result.reason.startswith('authorize.amount_on_wire: expected "exact", got "not sent')
        assert caught[currency] in result.reason
        assert run.env.canary.pan not in result.reason


async def test_a_sandbox_profile_can_remove_the_wire_check_with_a_reason(
    register: Register, tmp_path: Path
) -> None:
    """As writing-a-connector.md shows, for a provider whose amount no search can see."""
    profile = {
        "connector": "wire_ignores_exponents",
        "environment": "simulator",
        "scenarios": {
            "card.currency.roundtrip": {
                "patch": {"authorize": {"amount_on_wire": None}},
                "reasons": {"authorize.amount_on_wire": "the amount travels inside a JWE payload"},
            }
        },
    }
    register(IgnoresExponentsConnector, create_app)
    config = RunConfig(
        connector="wire_ignores_exponents",
        mode=Mode.SIMULATOR,
        select=ROUNDTRIP,
        overrides=(write_profile(tmp_path, profile),),
    )
    results = by_id(await ConformanceRun(config).run_all())
    for scenario_id, result in results.items():
        assert result.verdict is Verdict.PASSED, (scenario_id, result.reason)
        assert "amount_on_wire" not in {a.path for a in result.assertions}
        assert any("JWE payload" in str(removed) for removed in result.removed), result.removed
