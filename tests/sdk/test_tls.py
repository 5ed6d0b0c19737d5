"""TLS to providers (RELIABILITY item 31): self-signed, expired and wrong-host certificates and
TLS < 1.2 are refused (as ``not_sent``: nothing reached a provider), a valid chain is accepted.
Certificates are generated here with ``cryptography``."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from normalization import Outcome
from sdk import Deadline, HttpSettings
from sdk.http import provider_tls_context
from tests.sdk.conftest import TENANT, RuntimeFactory, authorize_request
from tests.sdk.loopback import LoopbackProvider

NOW = dt.datetime.now(dt.UTC)


@dataclass
class Pki:
    ca_file: Path
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    directory: Path

    def leaf(
        self,
        name: str,
        hostnames: list[str],
        *,
        not_before: dt.datetime = NOW - dt.timedelta(days=1),
        not_after: dt.datetime = NOW + dt.timedelta(days=30),
        self_signed: bool = False,
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
        sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
        sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        issuer = subject if self_signed else self.ca_cert.subject
        signer = key if self_signed else self.ca_key
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(signer, hashes.SHA256())
        )
        cert_file = self.directory / f"{name}.pem"
        key_file = self.directory / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_file, key_file


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tessera Test CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=10))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Pki(ca_file, key, cert, directory)


def server_context(
    cert: Path, key: Path, *, max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if max_version is not None:
        with warnings.catch_warnings():  # the old versions are deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = max_version
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


@pytest.fixture
async def tls_server() -> AsyncIterator[list[LoopbackProvider]]:
    servers: list[LoopbackProvider] = []
    yield servers
    for server in servers:
        await server.close()


async def _authorize(make_runtime: RuntimeFactory, pki: Pki, server: LoopbackProvider, token: str):
    runtime = make_runtime(
        f"https://localhost:{server.port}",
        http=HttpSettings(ca_bundle=pki.ca_file),
        max_attempts=1,
    )
    return await runtime.invoke(
        "authorize", authorize_request(token), deadline=Deadline.after(5), tenant=TENANT
    )


async def test_valid_chain_is_accepted(make_runtime, pki: Pki, tls_server, canary) -> None:
    cert, key = pki.leaf("good", ["localhost"])
    server = await LoopbackProvider().start(server_context(cert, key))
    tls_server.append(server)
    result = await _authorize(make_runtime, pki, server, canary[0])
    assert result.outcome is Outcome.SUCCEEDED
    assert len(server.requests) == 1


@pytest.mark.parametrize("kind", ["self_signed", "expired", "wrong_host"])
async def test_bad_certificates_are_refused(
    make_runtime, pki: Pki, tls_server, canary, kind: str
) -> None:
    if kind == "self_signed":
        cert, key = pki.leaf(kind, ["localhost"], self_signed=True)
    elif kind == "expired":
        cert, key = pki.leaf(
            kind,
            ["localhost"],
            not_before=NOW - dt.timedelta(days=60),
            not_after=NOW - dt.timedelta(days=1),
        )
    else:
        cert, key = pki.leaf(kind, ["provider.other.example"])
    server = await LoopbackProvider().start(server_context(cert, key))
    tls_server.append(server)
    result = await _authorize(make_runtime, pki, server, canary[0])
    assert result.outcome is Outcome.NOT_SENT
    assert server.requests == []


async def test_tls_below_1_2_is_refused(make_runtime, pki: Pki, tls_server, canary) -> None:
    cert, key = pki.leaf("old", ["localhost"])
    try:
        context = server_context(cert, key, max_version=ssl.TLSVersion.TLSv1_1)
    except ssl.SSLError as exc:
        pytest.skip(f"this OpenSSL cannot serve TLS 1.1 at all: {exc}")
    server = await LoopbackProvider().start(context)
    tls_server.append(server)

    # Prove the server really speaks TLS 1.1, so the refusal below is the client's doing.
    permissive = ssl.create_default_context(cafile=str(pki.ca_file))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    try:
        _, writer = await asyncio.open_connection(
            "localhost", server.port, ssl=permissive, server_hostname="localhost"
        )
    except (ssl.SSLError, OSError) as exc:
        pytest.skip(f"this OpenSSL will not negotiate TLS 1.1 even permissively: {exc}")
    version = writer.get_extra_info("ssl_object").version()
    writer.close()
    assert version == "TLSv1.1"

    result = await _authorize(make_runtime, pki, server, canary[0])
    assert result.outcome is Outcome.NOT_SENT
    assert server.requests == []


def test_client_context_is_strict() -> None:
    context = provider_tls_context()
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname is True
