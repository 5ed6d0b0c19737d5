"""The kit's parts on their own: merge patches and sandbox profiles (removals need reasons, and
the reasons reach the report), the leak scanner's encodings, polling with a deadline, form
bodies, contract validation of Stripe's form-encoded requests, and the fault proxy's record of
what reached the provider."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
from aiohttp import web

from conformance.contract import ContractValidator
from conformance.expectations import check_block, merge_patch
from conformance.formbody import decode_form
from conformance.leaks import REDACTION, LeakScanner, transcript_items
from conformance.polling import PollPolicy, PollTimeoutError, poll
from conformance.proxy import Fault, FaultProxy
from conformance.reports import render_html
from conformance.results import Verdict
from conformance.sandboxes import SandboxProfileError, load_sandbox_profile
from conformance.scenarios.faults import _names, _reply_values
from conformance.scenarios.flows import half
from conformance.simulators import bound_port
from conformance.traffic import TappedExchange
from normalization import Money
from sdk.transcript import Exchange, TranscriptRecorder
from tests.conformance.conftest import by_id, run_kit, specs_dir, write_profile

KNOWN = frozenset({"card.authorize.approved"})


def test_half_an_amount_is_rounded_down_and_never_below_one_unit() -> None:
    """What a partial capture or refund moves (card, fault and webhook scenarios alike)."""
    assert half(Money(1050, "EUR")) == Money(525, "EUR")
    assert half(Money(1051, "JPY")) == Money(525, "JPY")
    assert half(Money(2, "EUR")) == Money(1, "EUR")
    assert half(Money(1, "EUR")) == Money(1, "EUR")  # not 0: no capture or refund takes 0


def test_merge_patch_follows_rfc_7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}}
    assert merge_patch(target, {"a": "z", "c": {"f": None}}) == {"a": "z", "c": {"d": "e"}}
    assert merge_patch({"a": ["b"]}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": {"c": None}}) == {"a": "b", "b": {}}
    assert target == {"a": "b", "c": {"d": "e", "f": "g"}}  # not modified


def test_expectation_markers() -> None:
    outcomes = check_block(
        "authorize",
        {
            "status": ["authorized", "captured"],
            "decline": "@absent",
            "provider_reference": "@present",
            "amount_authorized": "@request.amount",
            "elapsed_ms": {"@lte": 10},
            "request_json_floats": [],
        },
        {
            "status": "captured",
            "provider_reference": "p_1",
            "amount_authorized": {"value": 1050, "currency": "EUR"},
            "elapsed_ms": 12.5,
            "request_json_floats": [],
        },
        request={"amount": {"value": 1050, "currency": "EUR"}},
    )
    assert [(o.path, o.passed) for o in outcomes] == [
        ("status", True),
        ("decline", True),
        ("provider_reference", True),
        ("amount_authorized", True),
        ("elapsed_ms", False),
        ("request_json_floats", True),
    ]


def test_removing_an_assertion_needs_a_reason(tmp_path: Path) -> None:
    base = {"connector": "sandbox", "environment": "simulator"}
    no_reason = write_profile(
        tmp_path,
        {
            **base,
            "scenarios": {"card.authorize.approved": {"patch": {"authorize": {"decline": None}}}},
        },
    )
    with pytest.raises(SandboxProfileError, match=r"removes authorize\.decline without a reason"):
        load_sandbox_profile(
            "sandbox", "simulator", [no_reason], known_scenarios=KNOWN, builtin=False
        )
    stray = write_profile(
        tmp_path,
        {**base, "scenarios": {"card.authorize.approved": {"reasons": {"authorize.x": "why"}}}},
        "stray.json",
    )
    with pytest.raises(SandboxProfileError, match="which its patch does not remove"):
        load_sandbox_profile("sandbox", "simulator", [stray], known_scenarios=KNOWN, builtin=False)
    typo = write_profile(tmp_path, {**base, "scenarios": {"card.authorise": {}}}, "typo.json")
    with pytest.raises(SandboxProfileError, match=r"no scenario 'card\.authorise'"):
        load_sandbox_profile("sandbox", "simulator", [typo], known_scenarios=KNOWN, builtin=False)
    other = write_profile(tmp_path, {"connector": "stripe", "environment": "live"}, "other.json")
    with pytest.raises(SandboxProfileError, match="written for connector 'stripe'"):
        load_sandbox_profile("sandbox", "simulator", [other], known_scenarios=KNOWN, builtin=False)


def test_toml_profiles_remove_with_reasons(tmp_path: Path) -> None:
    path = tmp_path / "live.toml"
    path.write_text(
        'connector = "sandbox"\nenvironment = "live"\n'
        '[inputs."card.declined.do_not_honor"]\nnumber = "4000000000000002"\n'
        '[scenarios."card.authorize.approved".remove]\n'
        '"authorize.amount_authorized" = "this acquirer does not echo amounts"\n'
    )
    profile = load_sandbox_profile("sandbox", "live", [path], known_scenarios=KNOWN, builtin=False)
    expectation, skip, removed = profile.patched(
        "card.authorize.approved",
        "card.authorize.approved",
        {"authorize": {"status": "authorized", "amount_authorized": "@request.amount"}},
    )
    assert expectation == {"authorize": {"status": "authorized"}} and skip is None
    assert [(r.path, r.reason) for r in removed] == [
        ("authorize.amount_authorized", "this acquirer does not echo amounts")
    ]
    assert profile.input("card.declined.do_not_honor") == {"number": "4000000000000002"}


async def test_removed_assertions_and_their_reasons_reach_the_report(tmp_path: Path) -> None:
    override = write_profile(
        tmp_path,
        {
            "connector": "sandbox",
            "environment": "simulator",
            "scenarios": {
                "card.authorize.approved": {
                    "patch": {
                        "authorize": {
                            "provider_reference": None,
                            "status": ["authorized", "pending"],
                        }
                    },
                    "reasons": {
                        "authorize.provider_reference": "references arrive by webhook here"
                    },
                },
                "card.verify": {"skip": "verification is switched off on this account"},
            },
        },
    )
    report = await run_kit(
        "sandbox", overrides=(override,), select=("card.authorize.approved", "card.verify")
    )
    approved, verify = by_id(report)["card.authorize.approved"], by_id(report)["card.verify"]
    assert approved.verdict is Verdict.PASSED
    assert "provider_reference" not in {a.path for a in approved.assertions}
    assert [r.reason for r in approved.removed] == ["references arrive by webhook here"]
    assert verify.verdict is Verdict.SKIPPED
    assert (
        verify.reason
        == "skipped by the sandbox profile: verification is switched off on this account"
    )
    page = render_html(report)
    assert "references arrive by webhook here" in page and "switched off on this account" in page


def test_a_transcript_leak_names_the_exchange_and_the_part_never_the_url() -> None:
    """A leak in a transcript used to be reported "at <scenario>" only: which of a scenario's
    exchanges, and where in it, was for the reader to find. Names that could hold card data
    (a run of digits) are not printed."""
    pan = "4111111145551142"
    scanner = LeakScanner()
    scanner.add("canary PAN", pan, "pan")
    encoded = base64.b64encode(pan.encode()).decode()
    transcript = TranscriptRecorder()
    transcript.record(
        Exchange("demo", "authorize", "POST", "http://p/pay", (("X-Id", "1"),), "{}", 200)
    )
    transcript.record(
        Exchange(
            "demo",
            "sync",
            "GET",
            f"http://p/cards/{encoded}",
            (("X-Card", encoded), (f"X-{pan[-4:]}{pan[:3]}", encoded)),
            "",
            200,
            (),
            f'{{"card": "{encoded}"}}',
        )
    )
    found = scanner.scan("transcript", transcript_items("card.sync", transcript))
    where = "card.sync, exchange 2 (sync GET)"
    assert [f.location for f in found] == [
        f"{where}, URL",
        f"{where}, request header 'X-Card'",
        f"{where}, request header (a name not shown)",
        f"{where}, response body",
    ]
    assert all(encoded not in f.location and pan not in f.location for f in found)


def test_leak_scanner_finds_every_encoding_and_redacts() -> None:
    pan, cvc, key = "4111111145551142", "737", "sk_test_Zq81kLm20x"
    scanner = LeakScanner()
    scanner.add("canary PAN", pan, "pan")
    scanner.add("canary CVC", cvc, "cvc")
    scanner.add("credential api_key", key, "credential")
    spaced = " ".join(pan[i : i + 4] for i in range(0, 16, 4))
    forms = {
        "raw": f"card {pan} ok",
        "spaced": spaced,
        "dashed": spaced.replace(" ", "-"),
        "url": quote(spaced),
        "form": quote_plus(spaced),
        "base64": base64.b64encode(f'{{"n":"{pan}"}}'.encode()).decode(),
        "base64-urlsafe": base64.urlsafe_b64encode(f"x{pan}".encode()).decode(),
        "hex": pan.encode().hex().upper(),
        "json-escaped": '{"n": "' + pan[:4] + "\\u0031" + pan[5:] + '"}',  # pan[4] is 1
        "json-escaped-any": "".join(f"\\u{ord(d) + 0xFEE0:04x}" for d in pan),
        "cvc-json": json.dumps({"card": {"cvc": cvc}}),
        "cvc-form": f"card%5Bcvc%5D={cvc}",
        "cav2-form": f"cav2={cvc}",  # the scan had no cav2, which the redaction knows
        "key": f"Authorization: Bearer {key}",
        "key-url": quote(f"k={key}"),
    }
    for name, text in forms.items():
        assert list(scanner.find(text)), name
        assert not list(scanner.find(scanner.redact(text))), name
        assert REDACTION in scanner.redact(text)
    for clean in ("411111******1142", "amount 737", f"{pan}9", "4111 1111 4555 1143"):
        assert not list(scanner.find(clean)), clean


async def test_polling_waits_with_a_deadline_not_a_fixed_sleep() -> None:
    calls: list[float] = []

    async def fetch() -> int:
        calls.append(time.monotonic())
        return len(calls)

    assert await poll(fetch, until=lambda n: n >= 3, policy=PollPolicy(within=2.0)) == 3
    started = time.monotonic()
    with pytest.raises(PollTimeoutError) as caught:
        await poll(fetch, until=lambda n: False, policy=PollPolicy(within=0.5, maximum=0.05))
    assert time.monotonic() - started < 2.0  # gave up near its deadline, not a fixed long wait
    assert caught.value.last == len(calls) and caught.value.attempts >= 3
    await asyncio.sleep(0)


def test_form_bodies_decode_to_nested_objects() -> None:
    body = (
        b"amount=1050&card[number]=4242&card[exp][month]=12&types[0]=card&types[1]=sepa&expand[]=x"
    )
    assert decode_form(body) == {
        "amount": "1050",
        "card": {"number": "4242", "exp": {"month": "12"}},
        "types": ["card", "sepa"],
        "expand": ["x"],
    }


def test_stripe_form_requests_are_validated_by_json_path() -> None:
    validator = ContractValidator.load(specs_dir() / "stripe-spec3-2023-09.json")
    headers = [("content-type", "application/x-www-form-urlencoded"), ("authorization", "Bearer k")]

    def exchange(body: bytes) -> TappedExchange:
        return TappedExchange(
            "POST", httpx.URL("http://127.0.0.1:9/v1/payment_intents"), headers, body
        )

    good = exchange(
        b"amount=1050&currency=eur&capture_method=manual&confirm=true&metadata[order]=42"
    )
    assert validator.validate(good, "http://127.0.0.1:9") == []
    bad = exchange(b"amount=ten&currency=eur&confirm=maybe&surprise=1")
    assert [(v.json_path, v.message) for v in validator.validate(bad, "http://127.0.0.1:9")] == [
        ("$", "Additional properties are not allowed ('surprise' was unexpected)"),
        ("$.amount", 'violates type "integer"'),
        ("$.confirm", 'violates type "boolean"'),
    ]
    unknown = TappedExchange("POST", httpx.URL("http://127.0.0.1:9/v1/nowhere"), headers, b"")
    assert [v.json_path for v in validator.validate(unknown, "http://127.0.0.1:9")] == ["path"]


def test_log_capture_leaves_nothing_changed_whatever_the_order_of_stops() -> None:
    """Two captures (the pytest plugin runs one per connector) stopped in start order: the
    root logger's level, its handlers' filters and ``sys.stdout``/``sys.stderr`` are as they
    were; a handler already on the root keeps printing what it printed (a logger with a level
    of its own included); a stream someone put back (pytest, between items) is wrapped again
    at the next scenario."""
    import io
    import logging
    import sys

    from conformance.logcapture import LogCapture

    root = logging.getLogger()
    before = (root.level, sys.stdout, sys.stderr, [list(h.filters) for h in root.handlers])
    printed = io.StringIO()
    existing = logging.StreamHandler(printed)
    root.addHandler(existing)
    chatty = logging.getLogger("tessera_test_chatty")
    chatty.setLevel(logging.DEBUG)
    try:
        first, second = LogCapture(), LogCapture()
        first.start()
        second.start()
        first.current = second.current = "card.x"
        logging.getLogger("tessera_test_quiet").info("quiet info")
        chatty.debug("chatty debug")
        replaced = io.StringIO()
        sys.stdout = replaced  # as pytest does between items
        second.current = "card.y"
        print("printed line")  # noqa: T201 - what a connector might do
        first.stop()
        second.stop()
        assert "quiet info" not in printed.getvalue()  # the root's WARNING held for it
        assert "chatty debug" in printed.getvalue()  # its own DEBUG level still did
        for capture in (first, second):
            texts = [line.text for line in capture.lines]
            assert any("quiet info" in t for t in texts) and any("chatty debug" in t for t in texts)
        assert [(line.scenario, line.text) for line in second.lines if line.source == "stdout"] == [
            ("card.y", "printed line")
        ]
        assert replaced.getvalue() == "printed line\n"
        assert sys.stdout is replaced  # put back as it was found at the wrap
        sys.stdout = before[1]
    finally:
        root.removeHandler(existing)
        chatty.setLevel(logging.NOTSET)
        sys.stdout = before[1]
    assert (root.level, sys.stdout, sys.stderr, [list(h.filters) for h in root.handlers]) == before


def test_what_reaches_the_console_is_redacted_what_is_scanned_is_not() -> None:
    """A connector that prints or logs the canary card: the leak scan sees the number (and fails
    the run), while the console, a root handler's output, pytest's log report and structlog's
    renderer show ``[CANARY]``."""
    import io
    import logging
    import sys

    import structlog

    from conformance.leaks import LeakScanner
    from conformance.logcapture import LogCapture
    from sdk.testing import canary_pan

    pan = canary_pan()
    scanner = LeakScanner()
    scanner.add("canary PAN", pan, "pan")
    root = logging.getLogger()
    printed, console = io.StringIO(), io.StringIO()
    existing = logging.StreamHandler(printed)
    existing.setLevel(logging.DEBUG)
    root.addHandler(existing)
    loud = logging.getLogger("tessera_test_loud")
    loud.setLevel(logging.DEBUG)
    rendered: list[str] = []
    old_stdout, old_config = sys.stdout, structlog.get_config()
    structlog.configure(
        processors=[lambda _, __, event: rendered.append(repr(event)) or event,
                    structlog.processors.KeyValueRenderer()],
        logger_factory=structlog.PrintLoggerFactory(console),
    )  # fmt: skip
    capture = LogCapture(redact=scanner.redact)
    try:
        sys.stdout = console
        capture.start()
        print("reply", pan)  # noqa: T201 - the defect under test
        loud.info("card %s", pan)
        spaced = " ".join(pan)
        structlog.get_logger().info("body", card=spaced)
        capture.stop()
    finally:
        sys.stdout = old_stdout
        root.removeHandler(existing)
        loud.setLevel(logging.NOTSET)
        structlog.configure(**old_config)
    scanned = "\n".join(text for _, text in capture.items())
    assert pan in scanned and spaced in scanned  # the scan sees what was written
    assert {s.label for s, _ in scanner.find(scanned)} == {"canary PAN"}
    shown = console.getvalue() + printed.getvalue() + "".join(rendered)
    assert pan not in shown and spaced not in shown, shown
    assert shown.count("[CANARY]") >= 3, shown


async def test_the_fault_proxy_keeps_the_providers_reply_to_what_it_forwarded() -> None:
    """A 503 ``after_forwarding`` reaches the provider (which acts) and keeps its reply,
    decompressed, with its ``Location``: from them the fault scenarios tell the object the
    provider made. A plain 503 reaches nothing."""
    made: list[str] = []

    async def create(request: web.Request) -> web.StreamResponse:
        made.append(f"obj_{len(made) + 1}")
        response = web.json_response({"id": made[-1]}, status=201)
        response.headers["Location"] = f"/objects/{made[-1]}"
        response.enable_compression()  # gzip: the client asked for it
        return response

    async with _proxy_in_front_of(create) as proxy:
        async with httpx.AsyncClient(base_url=proxy.url, trust_env=False) as client:
            proxy.inject(Fault.server_error(503))
            assert (await client.post("/objects", json={})).status_code == 503
            assert made == [] and proxy.faulted_reply() is None
            assert (await client.post("/objects", json={})).json() == {"id": "obj_1"}
            proxy.inject(Fault.server_error(503, after_forwarding=True))
            assert (await client.post("/objects", json={})).status_code == 503
            assert made == ["obj_1", "obj_2"]
        assert [r.forwarded for r in proxy.requests] == [False, True, True]
        faulted = proxy.faulted_reply()
        assert faulted is proxy.requests[2]  # the faulted one, not the first forwarded
        assert json.loads(faulted.reply or b"") == {"id": "obj_2"}
        assert faulted.reply_location == "/objects/obj_2"


async def test_the_non_json_fault_drops_a_compressed_replys_encoding_with_its_body() -> None:
    """The HTML page replaces the body as sent: the reply's ``Content-Encoding`` must go too,
    or a client that asked for gzip fails to decode the page (a ``DecodingError``, not the
    non-JSON reply the fault is for). The provider's own reply is still kept, decompressed."""

    async def create(request: web.Request) -> web.StreamResponse:
        response = web.json_response({"id": "obj_1", "padding": "x" * 200}, status=201)
        response.enable_compression()  # gzip: the client asked for it
        return response

    async with _proxy_in_front_of(create) as proxy:
        async with httpx.AsyncClient(base_url=proxy.url, trust_env=False) as client:
            proxy.inject(Fault.non_json())
            response = await client.post("/objects", json={})
        assert response.status_code == 201
        assert response.headers["content-type"] == "text/html"
        assert "content-encoding" not in response.headers
        assert response.text.startswith("<html>")
        faulted = proxy.faulted_reply()
        assert faulted is not None and json.loads(faulted.reply or b"")["id"] == "obj_1"


@contextlib.asynccontextmanager
async def _proxy_in_front_of(handler: Any) -> AsyncIterator[FaultProxy]:
    """A loopback provider answering ``POST /objects`` with ``handler``, behind a FaultProxy."""
    app = web.Application()
    app.router.add_post("/objects", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    proxy = await FaultProxy("127.0.0.1", bound_port(site)).start()
    try:
        yield proxy
    finally:
        await proxy.close()
        await runner.cleanup()


def test_provider_object_reads_the_reply_as_json_not_as_bytes() -> None:
    """Escaped, composite, short-numbered and Location-only references are found where they
    are, and a second object is still told from the first."""

    def names(reference: str, reply: bytes, location: str | None = None) -> bool:
        values = _reply_values(reply)
        if location:
            values.append(("location", location))
        return _names(reference, values)

    assert names("pay_abc123", b'{"id": "pay\\u005fabc123"}')  # JSON escape of "_"
    assert names("acct-1:psp_9f8e7d6c", b'{"pspReference": "psp_9f8e7d6c"}')  # composite
    assert names("pay_abc123", b"", "https://p.example/v1/payments/pay_abc123")  # Location
    assert names("42", b'{"payment": {"id": 42}, "api_version": 2}')
    assert not names("2", b'{"payment": {"id": 42}, "api_version": 2}')  # not object 2
    assert not names("pay_abc124", b'{"id": "pay_abc123", "previous": "pay_abc1245"}')
    assert names("pay_abc123", b"id=pay_abc123&status=ok")  # not JSON: its text
