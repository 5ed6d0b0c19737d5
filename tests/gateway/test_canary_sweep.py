"""Canary sweep of the running gateway (RELIABILITY 4, 26, 27; PCI DSS 3.3.1.2, 3.4.1).

A fresh Luhn-valid canary PAN and CVV go through everything a merchant can do with card data:
tokenize (single and batch), pay with an inline card and with a token, capture, refund; and
through malformed requests that carry them in odd places (unknown fields, wrong types, an
invalid expiry next to a valid number, the cvc field, headers, query strings, paths, a broken
JSON document, a wrong content type, a webhook). Logs are captured from structlog and stdlib
logging (rendered with exception texts) and from the process's stdout/stderr.

Then every place the data could have stayed is searched for the canary in every encoding
(raw, spaced, dashed, base64 at each alignment, hex, URL-encoded; ``tests/vault/canary.py``):
every column of every table of the gateway's SQLite database and the database files themselves
(freed pages included), every HTTP response body and header, the metrics, the logs and
stdout/stderr, and the sandbox provider's request log (which must show masks only), its books
and its webhooks. Zero hits. Positive controls prove the search could have found something:
the provider received the real PAN and CVV (egress detokenization), its log shows the canary's
mask, and a canary planted in the database is found.

Smaller tests pin the places found leaking while this was written (all fixed since): the
X-Request-Id echo, the production access log with a query string, the Idempotency-Key stored
verbatim, and card numbers in return_url or description.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import structlog

from gateway.observability import configure_logging
from gateway.simulators import load_simulator
from normalization import mask_pan
from tests.vault.canary import Canary, find_leaks, leak_forms, new_canary

from .conftest import (
    SANDBOX_API_KEY,
    SANDBOX_WEBHOOK_SECRET,
    Gateway,
    MakeGateway,
    sandbox_connector,
)

EXP = {"exp_month": 12, "exp_year": 2031}
_MASK_RE = re.compile(r"^[0-9]{6}\*+[0-9]{4}$")


def _fresh_canary() -> Canary:
    """A canary whose CVV cannot be mistaken for a year, an amount this test writes, or the
    first/last four digits that masks legitimately show."""
    while True:
        canary = new_canary()
        shown = {canary.pan[:4], canary.pan[-4:], "5000", "1000", "2500"}
        if not 1900 <= int(canary.cvc) <= 2199 and canary.cvc not in shown:
            return canary


def _luhn_broken(canary: Canary) -> str:
    """The canary with a wrong check digit: always fails Luhn."""
    return canary.pan[:-1] + str((int(canary.pan[-1]) + 1) % 10)


#: Headers the server computes (sizes, clock): numbers a 4-digit CVV could match by chance.
_COMPUTED_HEADERS = frozenset({"content-length", "date"})
#: A Prometheus sample's value at the end of its line (names and labels are kept).
_SAMPLE_VALUE_RE = re.compile(r" [0-9.e+-]+$", re.MULTILINE)


@dataclass
class Transcript:
    """Every HTTP response of the gateway: status, headers and body."""

    responses: list[str] = field(default_factory=list)

    def add(self, status: int, headers: Any, body: bytes, *, metrics: bool = False) -> None:
        head = "\n".join(
            f"{k}: {v}" for k, v in headers.items() if k.lower() not in _COMPUTED_HEADERS
        )
        text = body.decode("utf-8", "replace")
        if metrics:  # counters and sizes, not data; a CVV-sized number is a coincidence
            text = _SAMPLE_VALUE_RE.sub("", text)
        self.responses.append(f"{status}\n{head}\n\n{text}")


class Client:
    def __init__(self, gw: Gateway, transcript: Transcript) -> None:
        self.gw = gw
        self.transcript = transcript

    async def request(
        self, method: str, path: str, *, auth: bool = True, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = {**(self.gw.auth if auth else {}), **kwargs.pop("headers", {})}
        resp = await self.gw.client.request(method, path, headers=headers, **kwargs)
        body = await resp.read()
        self.transcript.add(resp.status, resp.headers, body, metrics=path == "/metrics")
        try:
            return resp.status, orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            return resp.status, body


#: Loggers of this project: their records must be clean before any redaction.
_OWN_LOGGERS = ("tessera", "gateway", "vault", "sdk", "connectors", "normalization")


@dataclass
class Logs:
    production: io.StringIO = field(default_factory=io.StringIO)
    access: io.StringIO = field(default_factory=io.StringIO)
    #: structlog's own rendering (unredacted), on a stream of its own so that the order in
    #: which pytest sets up its capture fixtures cannot send it elsewhere.
    structlog_out: io.StringIO = field(default_factory=io.StringIO)


@pytest.fixture
def captured_logs(caplog: pytest.LogCaptureFixture) -> Iterator[Logs]:
    """Logs, three ways, all at DEBUG:

    - structlog (the gateway's own log lines): rendered as JSON with exception texts to stdout,
      **without** the production redaction processor, so a PAN the code logs is not masked;
    - stdlib records as operators see them: through the production handler and formatter of
      ``configure_logging`` (which redacts), into ``Logs.production`` (``Logs.access`` for
      the access log, off in production by default);
    - stdlib records as emitted (caplog), searched for this project's loggers.

    Everything is restored afterwards (structlog config, root handlers and levels, warnings)."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    saved_structlog = structlog.get_config()
    logs = Logs()
    configure_logging("DEBUG", stream=logs.production)
    production_handler = root.handlers[0]
    # The test server logs every request line (aiohttp.access); the gateway's does not unless
    # ``server.access_log`` is on: those lines go to a stream of their own, same formatter
    # (see test_access_log_keeps_card_data_out).
    production_handler.addFilter(lambda record: record.name != "aiohttp.access")
    access_handler = logging.StreamHandler(logs.access)
    access_handler.setFormatter(production_handler.formatter)
    access_handler.addFilter(lambda record: record.name == "aiohttp.access")
    root.handlers[:] = [*saved_handlers, production_handler, access_handler]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(logs.structlog_out),
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=False,
    )
    caplog.set_level(logging.DEBUG)
    try:
        yield logs
    finally:
        structlog.configure(**saved_structlog)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)
        logging.captureWarnings(False)  # configure_logging routes warnings to logging


def _own_records(caplog: pytest.LogCaptureFixture) -> str:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(
        formatter.format(r) + " " + repr(r.__dict__)
        for r in caplog.records
        if r.name.split(".")[0] in _OWN_LOGGERS
    )


def _explain(hits: dict[str, list[str]], texts: dict[str, str], canary: Canary) -> str:
    """Where each hit is, with some context; the canary itself is replaced by a marker so that
    the failure report does not spread it further."""
    lines = []
    for name, found in hits.items():
        text = texts[name]
        for form_name, form in {
            **{f"pan:{k}": v for k, v in leak_forms(canary.pan).items()},
            **{f"cvc:{k}": v for k, v in leak_forms(canary.cvc, grouped=False).items()},
        }.items():
            if form_name in found and (at := text.find(form)) >= 0:
                context = text[max(0, at - 160) : at + len(form) + 60].replace(form, "<CANARY>")
                lines.append(f"{name} [{form_name}]: ...{context}...")
    return "\n".join(lines)


async def _table_dump(db: Any) -> dict[str, str]:
    """Every column of every row of every table, as text (bytes as latin-1: digits stay)."""
    tables = [
        r["name"] for r in await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
    ]
    assert tables, "no tables"
    dump: dict[str, str] = {}
    for table in tables:
        rows = await db.fetchall(f'SELECT * FROM "{table}"')  # noqa: S608 - catalogue names
        dump[table] = "\n".join(
            bytes(v).decode("latin-1") if isinstance(v, bytes | bytearray | memoryview) else str(v)
            for row in rows
            for v in row.values()
        )
    return dump


def _database_files(url: str) -> dict[str, str]:
    path = Path(url.removeprefix("sqlite:///"))
    files = [p for p in path.parent.glob(path.name + "*") if p.is_file()]
    assert path in files
    return {f"file:{p.name}": p.read_bytes().decode("latin-1") for p in files}


async def _get_json(url: Any) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.json()


@pytest.fixture
async def sandbox_seen(aiohttp_server: Any) -> tuple[Any, list[bytes]]:
    """The sandbox simulator, keeping the raw bodies it received (the positive control: the
    provider, and only the provider, gets the real card data)."""
    seen: list[bytes] = []
    app = load_simulator("sandbox")(
        api_key=SANDBOX_API_KEY,
        webhook_secret=SANDBOX_WEBHOOK_SECRET,
        settle_delay=0.2,
        hang_seconds=5,
        request_observer=lambda method, path, body: seen.append(body),
    )
    return await aiohttp_server(app), seen


async def _lifecycle(c: Client, canary: Canary) -> dict[str, Any]:
    """The legitimate uses of the card data; returns ids for the rest of the test."""
    card = {"number": canary.pan, "cvc": canary.cvc, "holder_name": "Canary Holder", **EXP}
    status, token = await c.request("POST", "/v1/tokens", json={"card": card})
    assert status == 201, token
    assert token["card"]["last4"] == canary.pan[-4:]
    status, batch = await c.request(
        "POST",
        "/v1/tokens/batch",
        json={"cards": [card, {**card, "exp_month": 13}, {**card, "number": _luhn_broken(canary)}]},
    )
    assert status == 200, batch
    assert ["id" in r for r in batch["results"]] == [True, False, False]

    # Paid with the token (its CVV is consumed by this authorization), captured, refunded.
    status, pay = await c.request(
        "POST",
        "/v1/payments",
        json={
            "amount": {"value": 5000, "currency": "EUR"},
            "payment_method": {"type": "card", "token": token["id"]},
            "reference": "canary-order-1",
        },
        headers={"Idempotency-Key": "canary-token-payment"},
    )
    assert status == 201 and pay["status"] == "authorized", pay
    status, pay = await c.request("POST", f"/v1/payments/{pay['id']}/capture")
    assert status == 200 and pay["status"] == "captured", pay
    status, pay = await c.request(
        "POST",
        f"/v1/payments/{pay['id']}/refunds",
        json={"amount": {"value": 2500, "currency": "EUR"}},
        headers={"Idempotency-Key": "canary-refund"},
    )
    assert status == 201 and pay["status"] == "partially_refunded", pay

    # Paid with the inline card (tokenized on the fly) under an idempotency key, then replayed.
    inline = {
        "amount": {"value": 1000, "currency": "EUR"},
        "payment_method": {"type": "card", "card": card},
        "capture": True,
        "reference": "canary-order-2",
    }
    for _ in range(2):
        status, pay2 = await c.request(
            "POST", "/v1/payments", json=inline, headers={"Idempotency-Key": "canary-inline"}
        )
        assert status == 201 and pay2["status"] == "captured", pay2
    status, _ = await c.request("POST", f"/v1/payments/{pay2['id']}/refunds")
    assert status == 201
    return {"token": token["id"], "payment": pay["id"], "inline_payment": pay2["id"]}


def _malformed(canary: Canary) -> list[dict[str, Any]]:
    """Requests carrying the canary where it does not belong; each is refused (4xx) unless
    marked ``ok`` (a search that finds nothing)."""
    pan, cvc = canary.pan, canary.cvc
    card = {"number": pan, "cvc": cvc, **EXP}
    spaced = " ".join(pan[i : i + 4] for i in range(0, len(pan), 4))
    fullwidth = "".join(chr(0xFF10 + int(d)) for d in pan)  # FULLWIDTH DIGIT ZERO..NINE
    pay = {"amount": {"value": 1000, "currency": "EUR"}}
    json_cases: list[tuple[str, Any]] = [
        # unknown fields, at the top and inside the card
        ("/v1/tokens", {"card": card, "pan": pan}),
        ("/v1/tokens", {"card": {**card, "track2": f";{pan}={cvc}?"}}),
        # wrong types
        ("/v1/tokens", {"card": {**card, "number": int(pan)}}),
        ("/v1/tokens", {"card": {**card, "number": [pan]}}),
        ("/v1/tokens", {"card": {**card, "number": {"value": pan}}}),
        ("/v1/tokens", {"card": {**card, "cvc": int(cvc)}}),
        ("/v1/tokens", {"card": pan}),
        ("/v1/tokens", [pan, cvc]),
        # an invalid expiry (and other invalid fields) next to a valid number and CVV
        ("/v1/tokens", {"card": {**card, "exp_month": 13}}),
        ("/v1/tokens", {"card": {**card, "exp_year": 2001}}),
        ("/v1/tokens", {"card": {**card, "exp_month": "12"}}),
        ("/v1/tokens", {"card": {**card, "format": "numeric"}, "ttl_seconds": 1}),
        # the card data in the wrong fields: cvc, holder name, number variants
        ("/v1/tokens", {"card": {**card, "cvc": pan}}),
        ("/v1/tokens", {"card": {**card, "cvc": cvc + "0"}}),
        ("/v1/tokens", {"card": {**card, "holder_name": f"Card {pan}"}}),
        ("/v1/tokens", {"card": {**card, "number": spaced}}),
        ("/v1/tokens", {"card": {**card, "number": _luhn_broken(canary)}}),
        ("/v1/tokens", {"card": {**card, "number": pan + "0000"}}),  # 20 digits
        ("/v1/tokens", {"card": {**card, "number": fullwidth}}),
        ("/v1/tokens", {"card": {**card, "number": f" {pan} "}}),
        ("/v1/tokens/batch", {"cards": [{**card, "exp_month": 0}], "extra": pan}),
        ("/v1/tokens/batch", {"cards": pan}),
        # payments: PAN as a token, in a bad inline card, next to an invalid amount
        ("/v1/payments", {**pay, "payment_method": {"type": "card", "token": pan}}),
        (
            "/v1/payments",
            {**pay, "payment_method": {"type": "card", "card": {**card, "exp_month": 0}}},
        ),
        (
            "/v1/payments",
            {
                "amount": {"value": -1, "currency": "EUR"},
                "payment_method": {"type": "card", "card": card},
            },
        ),
        (
            "/v1/payments",
            {**pay, "payment_method": {"type": "card", "card": card, "token": "tok_x" * 4}},
        ),
        ("/v1/payments", {**pay, "payment_method": {"type": "card", "card": card}, "pan": pan}),
        ("/v1/payments", {**pay, "payment_method": {"type": "bank_account", "iban": pan}}),
    ]
    cases: list[dict[str, Any]] = [
        {"method": "POST", "path": path, "json": body} for path, body in json_cases
    ]
    raw = orjson.dumps({"card": card})
    cases += [
        # broken JSON, a wrong content type, a body in the query string
        {"method": "POST", "path": "/v1/tokens", "data": raw[:-2], "ctype": "application/json"},
        {"method": "POST", "path": "/v1/tokens", "data": raw, "ctype": "text/plain"},
        {
            "method": "POST",
            "path": "/v1/tokens",
            "data": raw + b"\xff",
            "ctype": "application/json",
        },
        {"method": "POST", "path": "/v1/tokens", "params": {"number": pan, "cvc": cvc}, "json": {}},
        # well-formed searches for what is not there: an empty list
        {"method": "GET", "path": "/v1/tokens", "params": {"fingerprint": pan}, "ok": True},
        {"method": "GET", "path": "/v1/payments", "params": {"reference": pan}, "ok": True},
        {"method": "GET", "path": f"/v1/tokens/{pan}"},
        {"method": "DELETE", "path": f"/v1/tokens/{pan}"},
        {"method": "GET", "path": f"/v1/payments/{pan}"},
        {"method": "POST", "path": f"/v1/payments/{pan}/capture"},
        # headers: an unknown one, the request id, a card number as the API key
        {"method": "POST", "path": "/v1/tokens", "json": {}, "headers": {"X-Request-Id": pan}},
        {"method": "POST", "path": "/v1/tokens", "json": {"card": {}}, "headers": {"X-Card": pan}},
        {
            "method": "GET",
            "path": "/v1/tokens/tok_x",
            "auth": False,
            "headers": {"Authorization": f"Bearer {pan}"},
        },
        # a webhook with card data that fails verification
        {
            "method": "POST",
            "path": "/v1/webhooks/sandbox",
            "auth": False,
            "json": {"card": card},
            "headers": {"Sandbox-Signature": f"t=1,v1={pan}"},
        },
        {"method": "POST", "path": f"/v1/webhooks/{pan}", "auth": False, "json": {"card": card}},
    ]
    return cases


async def _send_malformed(c: Client, canary: Canary) -> None:
    for case in _malformed(canary):
        kwargs: dict[str, Any] = {
            k: case[k] for k in ("json", "data", "params", "headers") if k in case
        }
        if "ctype" in case:
            kwargs.setdefault("headers", {})["Content-Type"] = case["ctype"]
        status, body = await c.request(
            case["method"], case["path"], auth=case.get("auth", True), **kwargs
        )
        low = 200 if case.get("ok") else 400
        assert low <= status < 500, (case, status, body)


async def test_no_canary_anywhere(
    make_gateway: MakeGateway,
    sandbox_seen: tuple[Any, list[bytes]],
    captured_logs: Logs,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    sandbox, provider_bodies = sandbox_seen
    canary = _fresh_canary()
    gw = await make_gateway(connectors={"sandbox": sandbox_connector(sandbox)})
    transcript = Transcript()
    c = Client(gw, transcript)

    ids = await _lifecycle(c, canary)
    await _send_malformed(c, canary)
    status, _ = await c.request("GET", "/metrics", auth=False)  # recorded in the transcript
    assert status == 200

    # Positive controls: the provider got the real card data, and only masks were logged there.
    received = b"\n".join(provider_bodies).decode()
    assert canary.pan in received and canary.cvc in received
    provider_log = await _get_json(sandbox.make_url("/__sandbox/requests"))
    cards = [r.get("card") for r in provider_log["requests"] if r.get("card")]
    assert mask_pan(canary.pan) in cards
    assert all(_MASK_RE.fullmatch(card) or card == "[malformed]" for card in cards), cards

    logging.getLogger("thirdparty.sql").debug("executing with parameters (%r,)", canary.pan)

    resources = gw.resources
    tables = await _table_dump(resources.db)
    assert {"vault_tokens", "payments", "idempotency_keys", "vault_audit_log"} <= set(tables)
    out, err = capfd.readouterr()
    out += captured_logs.structlog_out.getvalue()
    texts: dict[str, str] = {
        **{f"table:{name}": text for name, text in tables.items()},
        **_database_files(gw.settings.database.url),
        **{f"response#{i}": text for i, text in enumerate(transcript.responses)},
        "stdlib:production": captured_logs.production.getvalue(),
        "stdlib:own-records": _own_records(caplog),
        "stdout": out,
        "stderr": err,
        "sandbox:requests": orjson.dumps(provider_log).decode(),
        "sandbox:charges": orjson.dumps(
            await _get_json(sandbox.make_url("/__sandbox/charges"))
        ).decode(),
        "sandbox:events": orjson.dumps(
            await _get_json(sandbox.make_url("/__sandbox/events"))
        ).decode(),
    }
    # The captures are wired: the gateway's structlog lines, the production stdlib stream,
    # and raw records (a third-party library echoing a PAN among its parameters at DEBUG, as
    # database drivers do: the production formatter must have masked it).
    assert '"event"' in out, "structlog wrote nothing: the log capture is not wired"
    assert any(canary.pan in r.getMessage() for r in caplog.records if r.name == "thirdparty.sql")
    assert mask_pan(canary.pan) in captured_logs.production.getvalue()
    hits = {name: found for name, text in texts.items() if (found := find_leaks(text, canary))}
    assert not hits, _explain(hits, texts, canary)

    # RELIABILITY 27: the CVV is in no idempotency record, though the records are there.
    rows = await resources.db.fetchall("SELECT * FROM idempotency_keys")
    stored = "\n".join(bytes(r["response_body"] or b"").decode() for r in rows)
    assert len(rows) >= 3 and ids["inline_payment"] in stored  # the inline card's record
    for row in rows:
        text = " ".join(
            bytes(v).decode("latin-1") if isinstance(v, bytes | memoryview) else str(v)
            for v in row.values()
        )
        assert not [h for h in find_leaks(text, canary) if h.startswith("cvc")], row["key"]

    # Self-check: the sweep finds a canary that is there (a dashed PAN planted in a new table).
    dashed = leak_forms(canary.pan)["dashed"]
    await resources.db.execute("CREATE TABLE canary_self_check (note TEXT)")
    await resources.db.execute("INSERT INTO canary_self_check VALUES ($1)", f"x{dashed}x")
    planted = await _table_dump(resources.db)
    assert find_leaks(planted["canary_self_check"], canary) == ["pan:dashed"]


async def test_access_log_keeps_card_data_out(
    openbao: Any, tmp_path: Path, captured_logs: Logs, capfd: pytest.CaptureFixture[str]
) -> None:
    """With ``server.access_log`` on (the production server, not the test harness): card data
    in a query string or a path never reaches the access log."""
    from gateway.app import create_app
    from gateway.config import DatabaseSettings, ServerSettings, Settings, VaultSettings
    from gateway.observability import GatewayMetrics
    from gateway.server import start_site

    canary = _fresh_canary()
    settings = Settings(
        server=ServerSettings(port=0, access_log=True),
        database=DatabaseSettings(url=f"sqlite:///{tmp_path / 'access.db'}"),
        vault=VaultSettings(addr=openbao.addr, token=openbao.root_token),  # type: ignore[arg-type]
    )
    runner, url = await start_site(create_app(settings, metrics=GatewayMetrics()), settings)
    try:
        encoded = leak_forms(canary.pan)["base64_0"]
        async with aiohttp.ClientSession() as session:
            query = {"number": canary.pan, "cvc": canary.cvc, "blob": encoded}
            async with session.get(f"{url}/v1/tokens", params=query) as resp:
                assert resp.status == 401
            async with session.get(f"{url}/v1/tokens/{canary.pan}") as resp:
                assert resp.status == 401
                request_id = resp.headers["X-Request-Id"]
    finally:
        await runner.cleanup()
    out, err = capfd.readouterr()
    out += captured_logs.structlog_out.getvalue()
    logged = "\n".join(
        [out, err, captured_logs.access.getvalue(), captured_logs.production.getvalue()]
    )
    assert logged.count("http_access") >= 2  # the requests were logged (paths masked)
    assert find_leaks(logged, canary) == []
    # An access line joins the request's other lines by its id.
    assert any(request_id in line for line in logged.splitlines() if "http_access" in line)


async def test_request_id_header_is_not_echoed_with_card_data(
    make_gateway: MakeGateway, captured_logs: Logs, capfd: pytest.CaptureFixture[str]
) -> None:
    """A client's X-Request-Id is echoed (header, problem, log lines): card data there is not."""
    canary = _fresh_canary()
    gw = await make_gateway()
    transcript = Transcript()
    c = Client(gw, transcript)
    encoded = leak_forms(canary.pan)["base64_0"]
    for request_id in (canary.pan, encoded):
        status, _ = await c.request(
            "POST", "/v1/tokens", json={"card": {}}, headers={"X-Request-Id": request_id}
        )
        assert status == 422
    out, _ = capfd.readouterr()
    out += captured_logs.structlog_out.getvalue()
    texts = [*transcript.responses, out, captured_logs.production.getvalue()]
    assert [hit for text in texts for hit in find_leaks(text, canary)] == []


async def test_idempotency_key_with_card_data_is_not_stored(
    make_gateway: MakeGateway, sandbox: Any
) -> None:
    """A card number sent as the Idempotency-Key is refused or kept only as a keyed digest."""
    canary = _fresh_canary()
    gw = await make_gateway(connectors={"sandbox": sandbox_connector(sandbox)})
    c = Client(gw, Transcript())
    status, token = await c.request("POST", "/v1/tokens", json={"card": {"number": "4242424242424242", **EXP}})  # fmt: skip
    assert status == 201
    body = {
        "amount": {"value": 1000, "currency": "EUR"},
        "payment_method": {"type": "card", "token": token["id"]},
    }
    status, _ = await c.request(
        "POST", "/v1/payments", json=body, headers={"Idempotency-Key": canary.pan}
    )
    assert status in (201, 400)
    tables = await _table_dump(gw.resources.db)
    assert {name: hits for name, t in tables.items() if (hits := find_leaks(t, canary))} == {}


@pytest.mark.parametrize("field_name", ["return_url", "description"])
async def test_free_text_with_card_data_is_refused(
    make_gateway: MakeGateway, sandbox: Any, field_name: str
) -> None:
    """Free-text payment fields are stored, echoed or forwarded: a card number there is
    refused, as in reference and metadata."""
    canary = _fresh_canary()
    gw = await make_gateway(connectors={"sandbox": sandbox_connector(sandbox)})
    c = Client(gw, Transcript())
    status, token = await c.request("POST", "/v1/tokens", json={"card": {"number": "4242424242424242", **EXP}})  # fmt: skip
    assert status == 201
    body = {
        "amount": {"value": 1000, "currency": "EUR"},
        "payment_method": {"type": "card", "token": token["id"]},
        field_name: f"https://shop.example/back?card={canary.pan}",
    }
    status, problem = await c.request("POST", "/v1/payments", json=body)
    assert status == 422, problem
    assert find_leaks(c.transcript.responses[-1], canary) == []
    tables = await _table_dump(gw.resources.db)
    assert {name: hits for name, t in tables.items() if (hits := find_leaks(t, canary))} == {}
