"""Egress detokenization and the host policy (RELIABILITY items 4, 19, 30, 35).

The PAN placeholder reaches the loopback server as the PAN, in JSON, form (Stripe's bracketed
keys), XML and headers, while the transcript, the logs and exception texts hold only the mask;
nothing goes to undeclared hosts, to internal addresses or through a redirect.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import structlog
from aiohttp import web
from pydantic import ValidationError

from normalization import (
    CardData,
    CardMethod,
    CardNumber,
    CardSecurityCode,
    ConnectorConfigurationError,
    Outcome,
)
from sdk import (
    CallContext,
    CardPlaceholders,
    ConnectorRuntime,
    Credentials,
    Deadline,
    DestinationRefusedError,
    HostPolicy,
    HttpSettings,
    MissingCardDataError,
    ResponseTooLargeError,
    RuntimeSettings,
    UnexpectedRedirectError,
    bracketed_form,
    build_http_client,
    describe_manifest,
)
from sdk.hostpolicy import address_refusal
from sdk.testing import FakeTokenRevealer
from tests.sdk.conftest import API_KEY, TENANT, RuntimeFactory, authorize_request, context
from tests.sdk.demo_connector import MANIFEST, DemoConnector
from tests.sdk.loopback import LoopbackProvider, RawServer, raw_server, read_request, reset

GZIP = {"Content-Encoding": "gzip"}


async def test_json_body_gets_real_values_transcript_gets_masks(
    provider: LoopbackProvider, client, revealer, canary, transcript
) -> None:
    token, pan, cvc = canary
    ctx = context(client, provider.url, revealer, transcript)
    card = ctx.card(CardMethod(token=token))
    assert pan not in repr(card) and "placeholder" in repr(card.number)
    with structlog.testing.capture_logs() as logs:
        await ctx.send(
            "POST",
            "/payments",
            json={
                "card": {
                    "number": card.number,
                    "cvc": card.cvc,
                    "exp": f"{card.exp_month}/{card.exp_year_short}",
                }
            },
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    sent = json.loads(provider.requests[0].body)
    assert sent["card"] == {"number": pan, "cvc": cvc, "exp": "03/31"}
    assert revealer.reveals == [(TENANT, token, "egress:demo:authorize")]  # one reveal per token

    [exchange] = transcript.exchanges
    assert pan not in transcript.text() and API_KEY not in transcript.text()
    assert json.loads(exchange.request_body)["card"] == {
        "number": f"{pan[:6]}******{pan[-4:]}",
        "cvc": "***",
        "exp": "03/31",
    }
    headers = {name.lower(): value for name, value in exchange.request_headers}
    assert headers["authorization"] == "[REDACTED]"
    assert pan not in repr(logs) and API_KEY not in repr(logs)


async def test_form_body_with_bracketed_keys_like_stripe(
    provider: LoopbackProvider, client, revealer, canary, transcript
) -> None:
    _, pan, cvc = canary
    revealer.add(
        TENANT, pan, cvc=cvc, exp_month=3, holder_name="Zoë O'Brien & Co", token="tok_" + "a" * 20
    )
    ctx = context(client, provider.url, revealer, transcript)
    card = ctx.card(CardMethod(token="tok_" + "a" * 20))
    await ctx.send(
        "POST",
        "/v1/payment_methods",
        data=bracketed_form(
            {
                "type": "card",
                "card": {"number": card.number, "cvc": card.cvc, "exp_month": card.exp_month},
                "billing_details": {"name": card.holder_name, "email": None},
                "expand": ["customer"],
                "livemode": False,
            }
        ),
    )
    form = parse_qs(provider.requests[0].body.decode())
    assert form["card[number]"] == [pan]
    assert form["card[cvc]"] == [cvc]
    assert form["card[exp_month]"] == ["03"]
    assert form["billing_details[name]"] == ["Zoë O'Brien & Co"]
    assert form["expand[0]"] == ["customer"] and form["livemode"] == ["false"]
    assert "billing_details[email]" not in form
    text = transcript.text()
    assert pan not in text and "Brien" not in text


async def test_xml_body_and_header_placeholders(
    provider: LoopbackProvider, client, revealer, canary, transcript
) -> None:
    _, pan, cvc = canary
    named = revealer.add(TENANT, pan, cvc=cvc, holder_name='A <b>"quoted"</b> name')
    ctx = context(client, provider.url, revealer, transcript)
    card = ctx.card(CardMethod(token=named))
    xml = (
        f"<payment><pan>{card.number}</pan><cvv>{card.cvc}</cvv>"
        f"<name>{card.holder_name}</name></payment>"
    )
    await ctx.send(
        "POST",
        "/xml",
        content=xml,
        headers={"Content-Type": "application/xml", "X-Card-Last": card.exp_year},
    )
    received = provider.requests[0]
    assert received.body.decode() == (
        f"<payment><pan>{pan}</pan><cvv>{cvc}</cvv>"
        "<name>A &lt;b&gt;&quot;quoted&quot;&lt;/b&gt; name</name></payment>"
    )
    assert received.headers["X-Card-Last"] == "2030"
    assert int(received.headers["Content-Length"]) == len(received.body)
    assert pan not in transcript.text()


async def test_inline_card_needs_no_revealer(provider: LoopbackProvider, client, canary) -> None:
    _, pan, cvc = canary
    ctx = context(client, provider.url, revealer=None)
    inline = CardMethod(
        card=CardData(number=CardNumber(pan), cvc=CardSecurityCode(cvc), exp_month=1, exp_year=2032)
    )
    card = ctx.card(inline)
    await ctx.send("POST", "/p", json={"n": card.number, "y": card.exp_year})
    assert json.loads(provider.requests[0].body) == {"n": pan, "y": "2032"}


async def test_placeholder_in_url_is_refused_before_sending(
    provider: LoopbackProvider, client, revealer, canary
) -> None:
    ctx = context(client, provider.url, revealer)
    card = ctx.card(CardMethod(token=canary[0]))
    with pytest.raises(Exception, match="not allowed in URLs") as caught:
        await ctx.send("GET", "/cards", params={"pan": card.number})
    assert canary[1] not in str(caught.value)
    assert provider.requests == []
    assert revealer.reveals == []


async def test_placeholder_from_another_call_is_refused(
    provider: LoopbackProvider, client, revealer, canary
) -> None:
    first = context(client, provider.url, revealer)
    stale = first.card(CardMethod(token=canary[0]))
    second = context(client, provider.url, revealer)
    with pytest.raises(Exception, match="another call"):
        await second.send("POST", "/p", json={"number": stale.number})
    assert provider.requests == []


@pytest.mark.parametrize(
    "mangle",
    [lambda v: v[2:], lambda v: v[:-1], lambda v: v.upper(), lambda v: "20" + v[4:]],
    ids=["slice-front", "slice-end", "upper", "prefixed"],
)
@pytest.mark.parametrize("where", ["body", "header", "url"])
async def test_a_sliced_or_transformed_placeholder_is_refused_before_sending(
    provider: LoopbackProvider, client, revealer, canary, mangle, where: str
) -> None:
    """``card.exp_year[2:]`` went out as garbage (``r_<nonce>_3_``) and the provider said
    what it said; now the call fails before sending, saying why."""
    ctx = context(client, provider.url, revealer)
    card = ctx.card(CardMethod(token=canary[0]))
    mangled = mangle(str(card.exp_year))
    kwargs: dict[str, Any] = {
        "body": {"json": {"number": card.number, "year": mangled}},
        "header": {"json": {"number": card.number}, "headers": {"X-Year": mangled}},
        "url": {"params": {"year": mangled}},
    }[where]
    with pytest.raises(Exception, match="sliced or transformed") as caught:
        await ctx.send("POST", "/p", **kwargs)
    assert canary[1] not in str(caught.value)
    assert provider.requests == []
    # Whole placeholders go out as before.
    await ctx.send("POST", "/p", json={"n": card.number, "year": card.exp_year_short})
    assert json.loads(provider.requests[0].body)["n"] == canary[1]


async def test_missing_cvc_is_an_error_before_anything_is_sent(
    provider: LoopbackProvider, client, revealer, canary
) -> None:
    no_cvc = revealer.add(TENANT, canary[1])
    ctx = context(client, provider.url, revealer)
    card = ctx.card(CardMethod(token=no_cvc))
    with pytest.raises(MissingCardDataError):
        await ctx.send("POST", "/p", json={"number": card.number, "cvc": card.cvc})
    assert provider.requests == []
    assert not ctx.may_have_reached_provider


async def test_optional_and_number_placeholders_in_a_json_body(
    provider: LoopbackProvider, client, revealer, canary, transcript
) -> None:
    token, pan, cvc = canary
    no_cvc = revealer.add(TENANT, pan, exp_month=3, exp_year=2031)

    def body(card: Any) -> dict[str, Any]:
        return {
            "card": {
                "number": card.number,
                "cvc": card.cvc.optional(),
                "name": card.holder_name.optional(),
                "expiry": {"month": card.exp_month.as_number(), "year": card.exp_year.as_number()},
            },
            "checks": ["avs", card.cvc.optional()],
            "note": "kept",
        }

    for source in (token, no_cvc):
        ctx = context(client, provider.url, revealer, transcript)
        await ctx.send("POST", "/p", json=body(ctx.card(CardMethod(token=source))))
    with_cvc, without = (json.loads(r.body) for r in provider.requests)
    assert with_cvc["card"] == {"number": pan, "cvc": cvc, "expiry": {"month": 3, "year": 2031}}
    assert with_cvc["checks"] == ["avs", cvc]
    assert without["card"] == {"number": pan, "expiry": {"month": 3, "year": 2031}}
    assert without["checks"] == ["avs"] and without["note"] == "kept"
    assert all(int(r.headers["Content-Length"]) == len(r.body) for r in provider.requests)
    # The transcript shows the request as it went: no member where the CVC was left out.
    recorded = json.loads(transcript.exchanges[1].request_body)
    assert "cvc" not in recorded["card"] and recorded["checks"] == ["avs"]
    assert pan not in transcript.text() and cvc not in transcript.exchanges[0].request_body


def without_cvc(
    http: httpx.AsyncClient, provider: LoopbackProvider, revealer: FakeTokenRevealer, pan: str
) -> tuple[CallContext, CardPlaceholders]:
    """A call context and the placeholders of a token whose vault entry holds no CVC."""
    ctx = context(http, provider.url, revealer)
    return ctx, ctx.card(CardMethod(token=revealer.add(TENANT, pan)))


async def test_optional_placeholders_in_form_xml_and_headers(
    provider: LoopbackProvider, client, revealer, canary
) -> None:
    _, pan, _ = canary
    ctx, card = without_cvc(client, provider, revealer, pan)
    await ctx.send(
        "POST",
        "/form",
        data=bracketed_form(
            {"card": {"number": card.number, "cvc": card.cvc.optional()}, "kept": "yes"}
        ),
    )
    xml = (
        f'<payment><card cvv="{card.cvc.optional()}" pan="{card.number}"/>'
        f'<cvv type="x">{card.cvc.optional()}</cvv><name>{card.holder_name.optional()}</name>'
        "<kept>1</kept></payment>"
    )
    await ctx.send(
        "POST",
        "/xml",
        content=xml,
        headers={"Content-Type": "application/xml", "X-Cvc": card.cvc.optional(), "X-K": "v"},
    )
    form, received = provider.requests
    assert parse_qs(form.body.decode()) == {"card[number]": [pan], "kept": ["yes"]}
    assert received.body.decode() == f'<payment><card pan="{pan}"/><kept>1</kept></payment>'
    assert "X-Cvc" not in received.headers and received.headers["X-K"] == "v"
    assert int(received.headers["Content-Length"]) == len(received.body)


async def test_an_inline_card_without_the_optional_fields(
    provider: LoopbackProvider, client, canary
) -> None:
    _, pan, _ = canary
    ctx = context(client, provider.url, None)
    card = ctx.card(CardMethod(card=CardData(number=CardNumber(pan), exp_month=3, exp_year=2031)))
    await ctx.send("POST", "/p", json={"number": card.number, "cvc": card.cvc.optional(), "n": [1]})
    assert json.loads(provider.requests[0].body) == {"number": pan, "n": [1]}


async def test_what_cannot_be_left_out_or_be_a_number_fails_before_sending(
    provider: LoopbackProvider, client, revealer, canary
) -> None:
    _, pan, _ = canary
    ctx, card = without_cvc(client, provider, revealer, pan)
    # Part of a larger value: it cannot be left out whole.
    with pytest.raises(MissingCardDataError):
        await ctx.send("POST", "/p", json={"check": f"cvc={card.cvc.optional()}"})
    with pytest.raises(MissingCardDataError):
        await ctx.send(
            "POST", "/p", json={"n": card.number}, headers={"X": f"c {card.cvc.optional()}"}
        )
    with pytest.raises(MissingCardDataError):
        await ctx.send(
            "POST",
            "/p",
            content=f"cvc={card.cvc.optional()}".encode(),
            headers={"Content-Type": "text/plain"},
        )
    # A number inside a larger JSON string, or a field that must stay text.
    with pytest.raises(ConnectorConfigurationError, match="whole JSON value"):
        await ctx.send("POST", "/p", json={"exp": f"{card.exp_month.as_number()}/30"})
    for field in (card.cvc, card.number, card.holder_name):
        with pytest.raises(ConnectorConfigurationError, match="cannot be sent as a number"):
            field.as_number()
    assert provider.requests == []
    assert not ctx.may_have_reached_provider
    # Variants combine, and say what they are; a plain string has none.
    both = card.exp_month.as_number().optional()
    assert both.is_number and both.is_optional and "optional number" in repr(both)
    assert str(both) != str(card.exp_month)


async def test_failure_after_reveal_leaks_nothing_into_exceptions_or_logs(
    make_runtime: RuntimeFactory, canary, transcript
) -> None:
    token, pan, cvc = canary

    async def read_then_reset(state: RawServer, reader, writer) -> None:
        state.bodies.append(await read_request(reader))
        reset(writer)

    server = await raw_server(read_then_reset)
    try:
        runtime = make_runtime(server.url)
        with structlog.testing.capture_logs() as logs:
            result = await runtime.invoke(
                "authorize", authorize_request(token), deadline=Deadline.after(5), tenant=TENANT
            )
    finally:
        await server.close()
    assert pan.encode() in server.bodies[0]  # the server did get the card
    assert result.outcome is Outcome.UNKNOWN
    assert pan not in repr(logs) and pan not in transcript.text()
    [exchange] = transcript.exchanges
    assert exchange.error == "OutcomeUnknownError"
    assert pan not in repr(result) and cvc not in repr(result)


async def test_redirect_to_another_host_sends_nothing_there(
    provider: LoopbackProvider, make_runtime: RuntimeFactory, canary
) -> None:
    elsewhere = await LoopbackProvider().start()
    try:

        async def redirect(request: web.Request) -> web.StreamResponse:
            raise web.HTTPTemporaryRedirect(f"{elsewhere.url}/payments")

        provider.handler = redirect
        runtime = make_runtime(provider.url)
        result = await runtime.invoke(
            "authorize", authorize_request(canary[0]), deadline=Deadline.after(5), tenant=TENANT
        )
        assert elsewhere.requests == []
        assert len(provider.requests) == 1
        assert result.outcome is Outcome.UNKNOWN  # the provider got the request; no redirect
    finally:
        await elsewhere.close()


async def test_redirect_surfaces_as_an_error_at_the_context(
    provider: LoopbackProvider, client, revealer
) -> None:
    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("https://evil.example/steal")

    provider.handler = redirect
    with pytest.raises(UnexpectedRedirectError):
        await context(client, provider.url, revealer).send("POST", "/p", json={})


async def test_undeclared_host_is_refused_before_a_socket_opens(
    provider: LoopbackProvider, revealer
) -> None:
    http = build_http_client(HostPolicy(frozenset({"api.demo-acquirer.example"}), test_mode=True))
    try:
        with pytest.raises(DestinationRefusedError, match="not among"):
            await context(http, provider.url, revealer).send("POST", "/p", json={})
    finally:
        await http.aclose()
    assert provider.requests == []


async def test_outside_test_mode_loopback_names_http_and_ip_literals_are_refused(
    provider: LoopbackProvider, revealer
) -> None:
    # "localhost" is allowlisted, but resolves to loopback: refused by the guarded backend.
    http = build_http_client(HostPolicy(frozenset({"localhost"}), test_mode=False))
    try:
        with pytest.raises(DestinationRefusedError, match="loopback"):
            await http.get(f"https://localhost:{provider.port}/p")
        with pytest.raises(DestinationRefusedError, match="https"):
            await http.get(f"http://localhost:{provider.port}/p")
    finally:
        await http.aclose()
    policy = HostPolicy(frozenset({"127.0.0.1"}), test_mode=False)
    with pytest.raises(DestinationRefusedError, match="IP-literal"):
        policy.check_url(httpx.URL("https://127.0.0.1/p"))
    with pytest.raises(DestinationRefusedError, match="credentials"):
        HostPolicy(frozenset({"a.example"})).check_url(httpx.URL("https://u:p@a.example/"))
    assert provider.requests == []


def test_runtime_refuses_http_base_url_outside_test_mode() -> None:
    with pytest.raises(Exception, match="must be https"):
        ConnectorRuntime(DemoConnector(), settings=RuntimeSettings(base_url="http://127.0.0.1:1"))


@pytest.mark.parametrize(
    ("address", "test_mode", "refused"),
    [
        ("169.254.169.254", True, True),
        ("fd00:ec2::254", True, True),
        ("100.100.100.200", False, True),
        ("169.254.1.1", True, True),
        ("10.1.2.3", False, True),
        ("192.168.1.1", False, True),
        ("127.0.0.1", False, True),
        ("::1", False, True),
        ("::ffff:127.0.0.1", False, True),
        # IPv6 forms that carry an IPv4 address to it (NAT64, 6to4, IPv4-compatible)
        ("64:ff9b::7f00:1", False, True),
        ("64:ff9b::a9fe:a9fe", True, True),  # the metadata address through NAT64
        ("64:ff9b::a01:203", False, True),
        ("2002:7f00:1::1", False, True),
        ("2002:a9fe:a9fe::1", True, True),
        ("::127.0.0.1", False, True),
        ("::10.1.2.3", False, True),
        ("64:ff9b:1::5db8:d822", False, True),  # local-use NAT64
        ("64:ff9b::5db8:d822", False, False),  # NAT64 of a public address
        ("2002:5db8:d822::1", False, False),  # 6to4 of a public address
        ("0.0.0.0", True, True),  # noqa: S104 - the address under test
        ("224.0.0.1", False, True),
        ("127.0.0.1", True, False),
        ("10.1.2.3", True, False),
        ("93.184.216.34", False, False),
        ("2606:4700::6810:84e5", False, False),
    ],
)
def test_address_policy(address: str, test_mode: bool, refused: bool) -> None:
    reason = address_refusal(ipaddress.ip_address(address), test_mode=test_mode)
    assert (reason is not None) is refused


async def test_oversized_and_bomb_replies_are_refused(provider: LoopbackProvider, revealer) -> None:
    http = build_http_client(
        HostPolicy(frozenset({"127.0.0.1"}), test_mode=True), HttpSettings(max_response_bytes=1000)
    )
    replies = iter(
        [
            web.Response(body=b"x" * 5000),
            web.Response(
                body=gzip.compress(b"0" * 1_000_000), headers={"Content-Encoding": "gzip"}
            ),
            web.Response(body=gzip.compress(b'{"ok": true}'), headers={"Content-Encoding": "gzip"}),
        ]
    )

    async def reply(request: web.Request) -> web.StreamResponse:
        return next(replies)

    provider.handler = reply
    try:
        ctx = context(http, provider.url, revealer)
        with pytest.raises(ResponseTooLargeError):
            await ctx.send("GET", "/big")
        with pytest.raises(ResponseTooLargeError):
            await ctx.send("GET", "/bomb")
        response = await ctx.send("GET", "/small")
        assert response.json() == {"ok": True}
    finally:
        await http.aclose()


async def test_a_reply_echoing_the_security_code_under_another_name_loses_it(
    provider: LoopbackProvider, client, revealer, canary, transcript
) -> None:
    token, pan, cvc = canary

    async def echo(request: web.Request) -> web.Response:
        # An unnamed echo of the code, next to numbers that must survive (amounts, ids).
        return web.json_response({"id": "ch_1", "amount": 1050, "check": cvc, "note": "ok"})

    provider.handler = echo
    ctx = context(client, provider.url, revealer, transcript)
    card = ctx.card(CardMethod(token=token))
    await ctx.send("POST", "/payments", json={"number": card.number, "cvc": card.cvc})
    [exchange] = transcript.exchanges
    assert json.loads(exchange.response_body) == {
        "id": "ch_1",
        "amount": 1050,
        "check": "***",
        "note": "ok",
    }
    # (A random 3-digit code may occur inside other numbers, e.g. the amount: quoted only.)
    assert f'"{cvc}"' not in transcript.text() and pan not in transcript.text()


async def test_a_reply_echoing_the_card_and_code_in_prose_or_as_numbers_loses_both(
    provider: LoopbackProvider, client, revealer, canary, transcript
) -> None:
    """A security review's provider: the code after the card number in a message, as an
    unquoted number under ActiveMerchant's name, and the card split by no-break spaces."""
    token, pan, cvc = canary
    spaced = "\u00a0".join(pan[i : i + 4] for i in range(0, len(pan), 4))

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "message": f"Card {pan} {cvc} declined",
                "card": {"verification_value": int(cvc), "display": spaced},
                "amount": 1050,
            }
        )

    provider.handler = echo
    ctx = context(client, provider.url, revealer, transcript)
    card = ctx.card(CardMethod(token=token))
    await ctx.send("POST", "/payments", json={"number": card.number, "cvc": card.cvc})
    text = transcript.text()
    assert pan not in text and pan[6:12] not in text.replace("\\u00a0", "")
    body = json.loads(transcript.exchanges[0].response_body)
    assert cvc not in body["message"] and body["card"]["verification_value"] == "***"
    assert body["amount"] == 1050


async def test_declared_secret_headers_and_run_time_secrets_are_redacted(
    provider: LoopbackProvider, client, transcript
) -> None:
    """A provider's own credential header (declared in the manifest) and a secret the connector
    got at run time (``ctx.secret``: an OAuth access token) never reach a transcript, in
    requests or replies; an undeclared header stays readable."""
    session = "sess_" + "9f8e7d6c5b4a" * 3
    access = "at_" + "0a1b2c3d4e5f" * 3

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", "echo": request.headers["X-Acme-Session"]},
            headers={"X-Acme-Session": session, "X-Request-Id": "req_42"},
        )

    provider.handler = echo
    manifest = MANIFEST.model_copy(update={"sensitive_headers": frozenset({"x-acme-session"})})
    ctx = CallContext(
        manifest=manifest,
        operation="authorize",
        tenant=TENANT,
        deadline=Deadline.after(5),
        http=client,
        base_url=provider.url,
        credentials=Credentials({"api_key": API_KEY}),
        transcript=transcript,
    )
    await ctx.send(
        "POST",
        "/payments",
        json={"note": f"token {access} inside"},
        headers={
            "X-Acme-Session": session,
            "X-Acme-Token": ctx.secret(access),
            "X-Request-Id": "req_41",
        },
    )
    assert provider.requests[0].headers["X-Acme-Token"] == access  # sent as is
    [exchange] = transcript.exchanges
    text = transcript.text()
    assert session not in text and access not in text
    sent = {name.lower(): value for name, value in exchange.request_headers}
    got = {name.lower(): value for name, value in exchange.response_headers}
    assert sent["x-acme-session"] == got["x-acme-session"] == "[REDACTED]"
    assert sent["x-acme-token"] == "[REDACTED]"
    assert json.loads(exchange.request_body) == {"note": "token [REDACTED] inside"}
    assert (sent["x-request-id"], got["x-request-id"]) == ("req_41", "req_42")


def test_secret_headers_are_header_names_kept_in_lower_case() -> None:
    manifest = MANIFEST.model_copy(update={"sensitive_headers": frozenset()})
    checked = type(manifest).model_validate(
        {**manifest.model_dump(), "sensitive_headers": ["X-Acme-Session"]}
    )
    assert checked.sensitive_headers == frozenset({"x-acme-session"})
    assert "secret headers:   x-acme-session" in describe_manifest(checked)
    with pytest.raises(ValidationError):
        type(manifest).model_validate(
            {**manifest.model_dump(), "sensitive_headers": ["X-Acme Session: 1"]}
        )


async def test_a_reply_echoing_the_code_and_an_escaped_card_number_keeps_neither(
    provider: LoopbackProvider, client, revealer, canary, transcript
) -> None:
    """Hiding the revealed security code decodes the JSON reply and writes it again: a card
    number the provider escaped (``\\u0034...``, which the first pass cannot read) came out as
    plain digits in the transcript, and so in a cassette."""
    token, pan, cvc = canary
    escaped = pan[:8] + "\\u00" + format(ord(pan[8]), "x") + pan[9:]

    async def echo(request: web.Request) -> web.Response:
        body = f'{{"card": "{escaped}", "message": "CVC {cvc} does not match", "code": {cvc}}}'
        return web.Response(text=body, content_type="application/json")

    provider.handler = echo
    ctx = context(client, provider.url, revealer, transcript)
    card = ctx.card(CardMethod(token=token))
    await ctx.send("POST", "/payments", json={"number": card.number, "cvc": card.cvc})
    [exchange] = transcript.exchanges
    reply = json.loads(exchange.response_body)
    assert reply["card"] == "[REDACTED]"  # the revealed card number, hidden by value
    assert cvc not in exchange.response_body and pan not in transcript.text()


async def test_a_reply_with_an_escaped_card_number_and_no_code_loses_it(
    provider: LoopbackProvider, client, revealer, canary, transcript
) -> None:
    """Without the security code in the reply, nothing decoded the JSON again: a card number
    the provider escaped went into the transcript (and a cassette) as it came. The scrubber
    reads escaped digits of any script itself now."""
    token, pan, _ = canary
    other = "4000056655665556"  # another card, not the revealed one: only the sweep finds it
    escaped = "".join(f"\\u{ord(d):04x}" for d in pan[:6]) + pan[6:]
    wide = "".join(f"\\u{ord(d) + 0xFEE0:04x}" for d in other)

    async def echo(request: web.Request) -> web.Response:
        body = f'{{"card": "{escaped}", "other": "{wide}", "status": "declined"}}'
        return web.Response(text=body, content_type="application/json")

    provider.handler = echo
    ctx = context(client, provider.url, revealer, transcript)
    card = ctx.card(CardMethod(token=token))
    await ctx.send("POST", "/payments", json={"number": card.number})
    [exchange] = transcript.exchanges
    reply = json.loads(exchange.response_body)
    assert reply["status"] == "declined"
    assert reply["card"] == "[REDACTED]" and reply["other"] == "400005******5556"
    assert pan not in transcript.text() and other not in transcript.text()
    assert "\\u" not in exchange.response_body
