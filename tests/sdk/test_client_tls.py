"""Mutual TLS (``sdk.client_tls``): a connector whose manifest says ``client_tls`` presents the
certificate from its credentials on every https call, through either network transport, to a
loopback server that refuses connections without one. Bad certificates and keys are refused
before anything is sent, with errors that name the credential and never quote it."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import socket
import ssl
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import httpx
import pytest
import respx
from aiohttp import web

from normalization import ConnectorConfigurationError, Outcome
from sdk import ConnectorRuntime, Credentials, Deadline, HttpSettings, Manifest
from sdk.client_tls import client_identity
from sdk.outcomes import (
    ClientCertificateRefusedError,
    classify_transport_error,
    transport_fault,
)
from sdk.registry import describe_manifest
from tests.sdk.conftest import API_KEY, TENANT, RuntimeFactory, authorize_request
from tests.sdk.demo_connector import MANIFEST, DemoConnector
from tests.sdk.loopback import LoopbackProvider
from tests.sdk.pki import NOW, Pki, make_pki, server_context

TLS_MANIFEST = Manifest.model_validate(
    {
        **MANIFEST.model_dump(),
        "id": "demo_mtls",
        "client_tls": True,
        "credentials": [
            *MANIFEST.model_dump()["credentials"],
            {"name": "tls_client_certificate"},
            {"name": "tls_client_key"},
            {"name": "tls_client_key_password", "required": False},
        ],
    }
)


class MutualTlsDemo(DemoConnector):
    manifest = TLS_MANIFEST


def _credentials(cert: str, key: str, password: str | None = None) -> Credentials:
    values = {"api_key": API_KEY, "tls_client_certificate": cert, "tls_client_key": key}
    if password is not None:
        values["tls_client_key_password"] = password
    return Credentials(values)


class MutualTlsServer:
    """A loopback provider that completes a handshake only with a client certificate from the
    test CA, and records each request's client certificate subject."""

    def __init__(self) -> None:
        self.subjects: list[str] = []
        self.provider = LoopbackProvider(handler=self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        peer = transport.get_extra_info("peercert") if transport is not None else None
        names = dict(pair[0] for pair in (peer or {}).get("subject", ()))
        self.subjects.append(str(names.get("commonName")))
        return web.json_response(
            {"id": "pay_123", "status": "authorized", "amount": 1050, "currency": "EUR"}
        )

    async def start(self, pki: Pki) -> MutualTlsServer:
        cert, key = pki.leaf("mtls-server", ["localhost"])
        context = server_context(cert, key)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(pki.ca_file))
        await self.provider.start(context)
        return self

    @property
    def url(self) -> str:
        return f"https://localhost:{self.provider.port}"


@pytest.fixture
async def server(pki: Pki) -> AsyncIterator[MutualTlsServer]:
    server = await MutualTlsServer().start(pki)
    yield server
    await server.provider.close()


def _runtime(make_runtime: RuntimeFactory, pki: Pki, url: str, network: str, connector=None):
    return make_runtime(
        url,
        connector=connector or MutualTlsDemo(),
        http=HttpSettings(ca_bundle=pki.ca_file, network=network),
        max_attempts=1,
    )


async def _authorize(runtime, token: str, key: str = "idem-1"):
    return await runtime.invoke(
        "authorize", authorize_request(token, key=key), deadline=Deadline.after(5), tenant=TENANT
    )


@pytest.mark.parametrize("network", ["aiohttp", "httpcore"])
async def test_the_certificate_is_presented_and_a_rotation_takes_the_next_call(
    make_runtime: RuntimeFactory, pki: Pki, server: MutualTlsServer, canary, network: str
) -> None:
    runtime = _runtime(make_runtime, pki, server.url, network)
    runtime.credentials = _credentials(*pki.client("merchant-transport-1"))
    first = await _authorize(runtime, canary[0], "k1")
    second = await _authorize(runtime, canary[0], "k2")
    assert (first.outcome, second.outcome) == (Outcome.SUCCEEDED, Outcome.SUCCEEDED)

    # A rotated certificate (Vault re-read): the next call presents it, on a new connection.
    cert, key = pki.client("merchant-transport-2", password="s3cret-pw")
    runtime.credentials = _credentials(cert, key, "s3cret-pw")
    rotated = await _authorize(runtime, canary[0], "k3")
    assert rotated.outcome is Outcome.SUCCEEDED
    assert server.subjects == ["merchant-transport-1"] * 2 + ["merchant-transport-2"]


class RefusingTlsServer:
    """A TLS server (blocking, in a thread) that demands a client certificate from the test CA
    and, refusing one, sends the TLS alert, lets the client read it, then closes: what a
    provider's front end does. Counts the handshakes it completed (none may)."""

    def __init__(self, pki: Pki) -> None:
        cert, key = pki.leaf("refusing-server", ["localhost"])
        self.context = server_context(cert, key)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_verify_locations(cafile=str(pki.ca_file))
        # TLS 1.2: the refusal comes within the handshake, before the request is written (with
        # TLS 1.3 it comes after, in place of the reply: see the test of the classification).
        self.context.maximum_version = ssl.TLSVersion.TLSv1_2
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.alerts: list[str] = []
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                tls = self.context.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                self.alerts.append(type(exc).__name__)
                with contextlib.suppress(OSError):  # a lingering close: the alert is read
                    conn.shutdown(socket.SHUT_WR)
                    while conn.recv(4096):
                        pass
                conn.close()
            else:
                self.accepted += 1
                tls.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()


@pytest.mark.parametrize("network", ["aiohttp", "httpcore"])
@pytest.mark.parametrize("presented", ["none", "another_ca"])
async def test_a_certificate_the_provider_refuses_is_not_sent_and_not_retried(
    make_runtime: RuntimeFactory, pki: Pki, tmp_path: Path, canary, network: str, presented: str
) -> None:
    """Refused in the handshake: ``not_sent`` (failover may go on); an alert that names the
    certificate is not retried (it would be refused again)."""
    server = RefusingTlsServer(pki)
    try:
        runtime = make_runtime(
            f"https://localhost:{server.port}",
            connector=DemoConnector() if presented == "none" else MutualTlsDemo(),
            http=HttpSettings(ca_bundle=pki.ca_file, network=network),
            max_attempts=3,
        )
        if presented == "another_ca":
            runtime.credentials = _credentials(*make_pki(tmp_path).client("stranger"))
        result = await _authorize(runtime, canary[0])
    finally:
        server.close()
    assert result.outcome is Outcome.NOT_SENT and server.accepted == 0
    if presented == "another_ca":  # the alert names the certificate: refused once, no retry
        assert result.raw_status == "tls_client_certificate_refused"
        assert len(server.alerts) == 1
    else:  # TLS 1.2 says only "handshake failure" (a cipher mismatch says the same): retried
        assert result.raw_status is None and len(server.alerts) == 3


async def test_plain_http_needs_no_certificate(
    make_runtime: RuntimeFactory, provider: LoopbackProvider, canary
) -> None:
    """A simulator on loopback (test mode, http): nothing to present, and the kit's made-up
    credential values are never read as PEM."""
    runtime = make_runtime(provider.url, connector=MutualTlsDemo(), max_attempts=1)
    runtime.credentials = Credentials(
        {"api_key": API_KEY, "tls_client_certificate": "made-up", "tls_client_key": "made-up"}
    )
    assert (await _authorize(runtime, canary[0])).outcome is Outcome.SUCCEEDED


def _bad_credentials(pki: Pki) -> dict[str, tuple[Credentials, str]]:
    cert, key = pki.client("bad")
    other_cert, _ = pki.client("other")
    locked_cert, locked_key = pki.client("locked", password="right-password")
    expired = pki.client(
        "old", not_before=NOW - dt.timedelta(days=90), not_after=NOW - dt.timedelta(days=1)
    )
    future = pki.client("early", not_before=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    return {
        "not_pem": (_credentials("MIIB-not-a-pem", key), "tls_client_certificate is not a PEM"),
        "key_not_pem": (_credentials(cert, "MIIE-not-a-key"), "tls_client_key is not a PEM"),
        "other_key": (_credentials(other_cert, key), "is not the key of the first certificate"),
        "wrong_password": (
            _credentials(locked_cert, locked_key, "wrong"),
            "tls_client_key_password does not open it",
        ),
        "no_password": (_credentials(locked_cert, locked_key), "does not open it"),
        "expired": (_credentials(*expired), "expired on"),
        "not_yet_valid": (_credentials(*future), "is not valid before"),
        "missing": (
            Credentials({"api_key": API_KEY, "tls_client_certificate": cert}),
            "tls_client_key",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "not_pem",
        "key_not_pem",
        "other_key",
        "wrong_password",
        "no_password",
        "expired",
        "not_yet_valid",
        "missing",
    ],
)
async def test_unusable_credentials_are_refused_before_sending(
    make_runtime: RuntimeFactory, pki: Pki, server: MutualTlsServer, canary, case: str
) -> None:
    credentials, expected = _bad_credentials(pki)[case]
    errors: list[ConnectorConfigurationError] = []
    # Where the gateway loads them (start-up, a Vault re-read, `connector credentials set`); a
    # certificate outside its validity period passes there: it fails its calls, not the start.
    if case in ("expired", "not_yet_valid"):
        credentials.check_against(TLS_MANIFEST)
    else:
        with pytest.raises(ConnectorConfigurationError) as loaded:
            credentials.check_against(TLS_MANIFEST)
        errors.append(loaded.value)
    # And where a call would present them: nothing reaches the provider.
    runtime = _runtime(make_runtime, pki, server.url, "aiohttp")
    runtime.credentials = credentials
    with pytest.raises(ConnectorConfigurationError) as called:
        await _authorize(runtime, canary[0])
    assert server.subjects == [] and server.provider.requests == []
    for error in [*errors, called.value]:
        text = str(error)
        assert expected in text
        assert "BEGIN" not in text and "MII" not in text and "right-password" not in text
        assert error.__cause__ is None
        assert error.__context__ is None or error.__suppress_context__


def test_the_identity_shows_no_key(pki: Pki) -> None:
    cert, key = pki.client("shown", password="pw-not-shown")
    identity = client_identity(_credentials(cert, key, "pw-not-shown"))
    assert repr(identity).startswith("ClientIdentity('CN=shown', not_after=")
    assert "BEGIN" not in repr(identity) and "pw-not-shown" not in repr(identity)
    assert identity == client_identity(_credentials(cert, key, "pw-not-shown"))


def test_without_memfd_the_key_file_is_gone_once_loaded(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The fallback for systems without ``memfd_create``: a private temporary file, removed."""
    monkeypatch.delattr(os, "memfd_create", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    identity = client_identity(_credentials(*pki.client("fallback")))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    identity.load_into(context)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"client_tls": True}, "client_tls needs the credentials"),
        (
            {"credentials": [{"name": "api_key"}, {"name": "tls_client_key"}]},
            "presented only with client_tls = true",
        ),
    ],
)
def test_the_manifest_and_its_credentials_go_together(update: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Manifest.model_validate({**MANIFEST.model_dump(), **update})


async def test_a_mocked_network_needs_no_certificate(revealer, canary) -> None:
    """Unit tests with ``httpx.MockTransport`` (or respx) and a cassette replay reach no
    network, so made-up credential values are never read as PEM, even for https URLs."""
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(
            200, json={"id": "pay_1", "status": "authorized", "amount": 1050, "currency": "EUR"}
        )

    async with ConnectorRuntime(
        MutualTlsDemo(),
        revealer=revealer,
        credentials=Credentials(
            {"api_key": API_KEY, "tls_client_certificate": "x", "tls_client_key": "y"}
        ),
        transport=httpx.MockTransport(answer),
    ) as runtime:
        result = await _authorize(runtime, canary[0])
    assert result.outcome is Outcome.SUCCEEDED
    assert seen == ["https://sandbox.demo-acquirer.example/payments"]


async def test_respx_mocks_need_no_certificate(make_runtime: RuntimeFactory, canary) -> None:
    runtime = make_runtime("https://sandbox.demo-acquirer.example", connector=MutualTlsDemo())
    runtime.credentials = Credentials(
        {"api_key": API_KEY, "tls_client_certificate": "x", "tls_client_key": "y"}
    )
    with respx.mock(assert_all_called=True) as mock:
        mock.post("https://sandbox.demo-acquirer.example/payments").respond(
            200, json={"id": "pay_1", "status": "authorized", "amount": 1050, "currency": "EUR"}
        )
        result = await _authorize(runtime, canary[0])
    assert result.outcome is Outcome.SUCCEEDED


def test_the_certificate_expiry_is_a_gauge(make_runtime: RuntimeFactory, pki: Pki, metrics) -> None:
    """Operators alert on it before the provider starts refusing connections."""
    not_after = (NOW + dt.timedelta(days=12)).replace(microsecond=0)
    runtime = make_runtime("https://sandbox.demo-acquirer.example", connector=MutualTlsDemo())
    name = "tessera_connector_client_certificate_expiry_timestamp_seconds"
    labels = {"connector": "demo_mtls"}
    assert math.isnan(metrics.registry.get_sample_value(name, labels))  # api_key only so far
    runtime.credentials = _credentials(*pki.client("gauge", not_after=not_after))
    assert metrics.registry.get_sample_value(name, labels) == not_after.timestamp()
    assert metrics.registry.get_sample_value(name, {"connector": "demo"}) is None


def test_connector_list_says_it_presents_a_certificate() -> None:
    assert "client TLS:" in describe_manifest(TLS_MANIFEST)
    assert "client TLS:" not in describe_manifest(MANIFEST)


@pytest.mark.parametrize(
    ("reason", "outcome"),
    [
        ("TLSV13_ALERT_CERTIFICATE_REQUIRED", Outcome.NOT_SENT),
        ("TLSV1_ALERT_UNKNOWN_CA", Outcome.NOT_SENT),
        ("TLSV1_ALERT_DECRYPT_ERROR", Outcome.NOT_SENT),
        ("SSLV3_ALERT_BAD_RECORD_MAC", Outcome.UNKNOWN),
        (None, Outcome.UNKNOWN),
    ],
)
def test_a_certificate_alert_after_the_request_was_written_is_not_sent(
    reason: str | None, outcome: Outcome
) -> None:
    """TLS 1.3: the client finishes its half of the handshake and writes the request before the
    server judges its certificate; the alert comes in place of the reply, as a read error (as
    the aiohttp transport raises it: httpx error from aiohttp's, from OpenSSL's). The request
    was never processed, so it is ``not_sent``; any other read error after writing is
    ``unknown``."""
    alert = ssl.SSLError(1, "alert")
    alert.reason = reason  # type: ignore[misc]
    wrapper = aiohttp.ClientOSError(1, "read failed")
    wrapper.__cause__ = alert
    error = httpx.ReadError("ClientOSError")
    error.__cause__ = wrapper
    assert classify_transport_error(error, write_started=True) is outcome
    fault = transport_fault(error, write_started=True)
    assert isinstance(fault, ClientCertificateRefusedError) is (outcome is Outcome.NOT_SENT)
