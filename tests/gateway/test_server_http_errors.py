"""Requests aiohttp's HTTP parser refuses are answered as problem+json, quoting nothing.

aiohttp answers a request it cannot parse itself (the application never sees it) with a
``text/plain`` 400 whose body is the parser's message: the offending request line or header,
verbatim, a card number included; its log line carried the same text. ``gateway.server`` replaces
that answer (``GatewayRunner``): a fixed problem+json body, code ``http_error``, and a log line
naming the exception class only.

Real processes on 127.0.0.1, talked to over a raw socket (an HTTP client would refuse to send
these requests): ``tessera serve`` with one worker and with two, ``tessera dev``, and one
``tessera serve`` with aiohttp's pure-Python parser (``AIOHTTP_NO_EXTENSIONS=1``), whose
refusals differ. Each request carries a fresh Luhn-valid canary PAN, looked for in the response
and in everything the processes logged.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.vault.canary import new_canary
from vault.devserver import free_port

from .procs import Proc, Processes, _tessera_cli, gateway_config, wait_http

PROBLEM = "application/problem+json"


@dataclass(frozen=True)
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("latin-1")


async def raw_request(url: str, payload: bytes, *, within: float = 10.0) -> RawReply:
    """Send ``payload`` as it is, read until the server closes; the parsed reply."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(payload)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), within)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawReply(status, headers, body)


def bad_requests(pan: str) -> dict[str, bytes]:
    """Requests the C (llhttp) parser refuses, each quoting ``pan`` where the parser looks."""
    long = "a" * 9000
    # Connection: close, so that one the parser accepts is answered and closed too.
    end = "Host: x\r\nConnection: close\r\n\r\n"
    requests = {
        "control character in a header value": f"GET /healthz HTTP/1.1\r\nX-Card: {pan}\x01\r\n",
        "control character in the path": f"GET /v1/tokens/{pan}\x01 HTTP/1.1\r\n",
        "method token": f"FOO{pan} / HTTP/1.1\r\n",
        "request line over 8 KB": f"GET /v1/tokens/{pan}{long} HTTP/1.1\r\n",
        "header line over 8 KB": f"GET / HTTP/1.1\r\nX-Card: {pan}{long}\r\n",
        "bad HTTP version": f"GET / HTTP/{pan}\r\n",
        "header name with a space": f"GET / HTTP/1.1\r\nX {pan}: 1\r\n",
    }
    return {what: (start + end).encode("latin-1") for what, start in requests.items()}


def assert_fixed_problem(reply: RawReply, pan: str, what: str) -> None:
    assert pan not in reply.text, (what, reply)
    assert reply.status == 400, (what, reply)
    assert reply.headers.get("content-type", "").startswith(PROBLEM), (what, reply)
    body = json.loads(reply.body)
    assert body["status"] == 400 and body["code"] == "http_error", (what, body)
    assert body["title"] == "Bad Request"
    assert body["detail"] == "The request is not valid HTTP/1.1 and was not processed."
    # raw_request read until the server closed the connection: aiohttp's answer did too.
    assert body["request_id"] == reply.headers["x-request-id"]
    assert re.fullmatch("[0-9a-f]{32}", body["request_id"]), body  # as every request id is


def assert_not_logged(proc: Proc, pan: str) -> str:
    output = proc.output()
    assert pan not in output, output
    return output


def _config(tmp_path: Path, vault: Any, **server: Any) -> str:
    return gateway_config(
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
        vault_addr=vault.addr,
        vault_token=vault.root_token,
        server=server,
        # Never called: the requests here do not reach the application.
        connectors={
            "sandbox": {
                "base_url": "http://127.0.0.1:9",
                "test_mode": True,
                "credentials": {"api_key": "sk_unused", "webhook_secret": "whsec_unused"},
            }
        },
    )


async def _check_refusals(gateway: Proc) -> None:
    canary = new_canary()
    for what, payload in bad_requests(canary.pan).items():
        assert_fixed_problem(await raw_request(gateway.url, payload), canary.pan, what)
    # A body that does not decode, on a request answered before its body is read (no API
    # key): aiohttp drains it afterwards, through the same decoder; its failure is logged by
    # class at info level, not as an unhandled error with a traceback any client could cause.
    reply = await raw_request(
        gateway.url,
        b"POST /v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello",
    )
    assert reply.status == 401, reply
    # A good request on a new connection is still answered as usual.
    reply = await raw_request(
        gateway.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert reply.status == 200, reply
    await asyncio.sleep(0.2)  # let the log lines reach the file
    output = assert_not_logged(gateway, canary.pan)
    assert '"event": "http_request_rejected"' in output, output
    assert '"error": "BadHttpMessage"' in output or '"error": "InvalidHeader"' in output, output
    assert '"error": "LineTooLong"' in output, output
    assert '"event": "http_request_body_unreadable"' in output, output
    assert "Traceback" not in output and "Unhandled exception" not in output, output


@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_answers_unparsable_requests_with_a_fixed_problem(
    tmp_path: Path, provisioned_vault: Any, workers: int
) -> None:
    port = free_port()
    async with Processes(tmp_path) as procs:
        gateway = await procs.gateway(
            _config(tmp_path, provisioned_vault, port=port, workers=workers, access_log=True)
        )
        await _check_refusals(gateway)
        gateway.signal(signal.SIGTERM)
        assert await gateway.wait(15) == 0, gateway.output()


async def test_pure_python_parser_refusals_quote_nothing_either(
    tmp_path: Path, provisioned_vault: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``AIOHTTP_NO_EXTENSIONS=1``: aiohttp's own parser, whose messages quote the input too.

    It accepts some of what llhttp refuses (any token as a method, for one): those requests
    reach the application, which answers them without the input (404/405 problem+json).
    """
    monkeypatch.setenv("AIOHTTP_NO_EXTENSIONS", "1")
    canary = new_canary()
    async with Processes(tmp_path) as procs:
        gateway = await procs.gateway(_config(tmp_path, provisioned_vault))
        probe = [
            sys.executable,
            "-c",
            "import aiohttp.http_parser as p; print(p.HttpRequestParser is p.HttpRequestParserPy)",
        ]
        assert (await _run(probe)).strip() == "True"  # the variable does select the parser
        refused = 0
        for what, payload in bad_requests(canary.pan).items():
            reply = await raw_request(gateway.url, payload)
            assert canary.pan not in reply.text, (what, reply)
            assert reply.headers.get("content-type", "").startswith(PROBLEM), (what, reply)
            assert 400 <= reply.status < 500, (what, reply)
            if json.loads(reply.body)["code"] == "http_error":
                assert_fixed_problem(reply, canary.pan, what)
                refused += 1
        assert refused >= 4, refused
        await asyncio.sleep(0.2)
        output = assert_not_logged(gateway, canary.pan)
        assert '"event": "http_request_rejected"' in output, output


async def _run(argv: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return out.decode()


@pytest.mark.slow
async def test_dev_answers_unparsable_requests_with_a_fixed_problem(tmp_path: Path) -> None:
    """``tessera dev`` (its own OpenBao, AppRole login) runs the gateway the same way."""
    port = free_port()
    data_dir = tmp_path / "dev"
    cli = _tessera_cli()
    async with Processes(tmp_path) as procs:
        dev = procs.spawn(
            "dev",
            [*cli, "--log-level", "INFO", "dev", "--port", str(port), "--data-dir", str(data_dir)],
        )
        dev.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while not (data_dir / "dev.json").exists():
            assert dev.alive, dev.output()
            assert time.monotonic() < deadline, dev.output()
            await asyncio.sleep(0.1)
        await wait_http(dev, "/readyz")
        await _check_refusals(dev)
        dev.signal(signal.SIGTERM)
        assert await dev.wait(30) == 0, dev.output()


@pytest.mark.parametrize("raised", [ValueError, TimeoutError])
async def test_an_exception_past_the_middleware_is_a_fixed_500(raised: type[Exception]) -> None:
    """aiohttp answered these itself in text/plain (a traceback in debug mode): now problem+json."""
    from aiohttp import web

    from gateway.server import GatewayRunner

    canary = new_canary()

    async def fail(request: web.Request) -> web.Response:
        raise raised(f"card {canary.pan}")

    app = web.Application()
    app.router.add_get("/fail", fail)
    runner = GatewayRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        reply = await raw_request(
            f"http://127.0.0.1:{port}",
            b"GET /fail HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n\r\n",
        )
    finally:
        await runner.cleanup()
    assert canary.pan not in reply.text
    assert reply.status == 500
    assert reply.headers["content-type"].startswith(PROBLEM)
    body = json.loads(reply.body)
    assert (body["code"], body["detail"]) == ("internal_error", "An unexpected error occurred.")
