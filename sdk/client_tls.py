"""Mutual TLS: the client certificate a connector presents to its provider.

Some providers authenticate the connection as well as the request: UK Open Banking banks (the
OBWAC transport certificate on every call), Berlin Group banks (an eIDAS QWAC), acquirers'
private APIs. A connector that needs it says so in its manifest, ``client_tls=True``, and
declares the credentials it is read from:

- ``tls_client_certificate``: PEM, the certificate first, then any intermediates the provider
  wants sent;
- ``tls_client_key``: its PEM private key (PKCS#8 or the traditional form; RSA, EC, Ed25519);
- ``tls_client_key_password`` (optional): the key's password when it is encrypted.

The runtime then presents that certificate on every https connection of every call; a
connector's code does nothing else (it never sees the key, as it never sees a card). The
network transports read the credentials, when they open a connection for the request: plain
http (a simulator on loopback, test mode only) has no TLS to present it on, and what does not
reach a network (a cassette, an ``httpx.MockTransport``, respx's mocks) has none either, so
the kit's simulator and replay runs, and a connector's unit tests, need no certificate.

**Checked before anything is sent.** The credentials are read once per distinct value
(``client_identity``): a certificate that does not parse, a key that does not (or a wrong
password), a key that is not the certificate's, or a certificate outside its validity period
is a ``ConnectorConfigurationError`` (``connector_misconfigured``), not a TLS handshake failure
at the provider. The gateway checks that the credentials parse and match when it loads them
(start-up, and each re-read from Vault: a rotation to a bad certificate keeps the one in use).
The validity period is checked on every call (5 minutes of clock skew allowed before
``not_before``): a certificate that expires while the gateway runs fails the calls that would
present it, with its expiry date, and only those; an expired one does not stop the gateway from
starting. Error texts name the credential, never its value.

**The key on its way to OpenSSL.** Python's ``ssl`` loads a certificate chain from files only.
On Linux the PEM goes through an anonymous in-memory file (``memfd_create``), which never has a
name on any filesystem; elsewhere, a file in a fresh private (0700) temporary directory, removed
as soon as OpenSSL has read it.

**Connections.** One TLS context per distinct certificate (kept for the last 16), so the
connection pool keeps the connections of each identity apart: a connection opened with the old
certificate is never reused for the new one after a rotation.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from normalization import ConnectorConfigurationError

if TYPE_CHECKING:
    from sdk.credentials import Credentials

__all__ = [
    "CERTIFICATE_CREDENTIAL",
    "CLIENT_CREDENTIALS_EXTENSION",
    "KEY_CREDENTIAL",
    "KEY_PASSWORD_CREDENTIAL",
    "ClientIdentity",
    "client_identity",
    "identity_for",
    "read_identity",
]

CERTIFICATE_CREDENTIAL = "tls_client_certificate"
KEY_CREDENTIAL = "tls_client_key"
KEY_PASSWORD_CREDENTIAL = "tls_client_key_password"  # noqa: S105 - a name

#: The request extension carrying the ``Credentials`` a request's client certificate is read
#: from (set by ``CallContext.send`` for a ``client_tls`` connector; read by the network
#: transports, through ``identity_for``).
CLIENT_CREDENTIALS_EXTENSION = "tessera.client_credentials"

#: How far this machine's clock may run behind the issuer's for a brand-new certificate.
_CLOCK_SKEW = dt.timedelta(minutes=5)

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class ClientIdentity:
    """A checked client certificate and its key. Equal (and hashed) by content; the repr shows
    the certificate's subject and validity, never the key."""

    __slots__ = (
        "_certificate",
        "_key",
        "_password",
        "digest",
        "not_after",
        "not_before",
        "subject",
    )

    def __init__(
        self,
        certificate: str,
        key: str,
        password: str | None,
        *,
        subject: str,
        not_before: dt.datetime,
        not_after: dt.datetime,
    ) -> None:
        self._certificate = certificate
        self._key = key
        self._password = password
        self.subject = subject
        self.not_before = not_before
        self.not_after = not_after
        material = "\0".join((certificate, key, password or "")).encode()
        self.digest = hashlib.sha256(material).hexdigest()

    def __repr__(self) -> str:
        return f"ClientIdentity({self.subject!r}, not_after={self.not_after.isoformat()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClientIdentity) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def check_current(self, now: dt.datetime | None = None) -> None:
        """Raise ``ConnectorConfigurationError`` when the certificate is not valid at ``now``."""
        now = now or dt.datetime.now(dt.UTC)
        if now > self.not_after:
            raise ConnectorConfigurationError(
                f"The TLS client certificate ({CERTIFICATE_CREDENTIAL}) expired on "
                f"{self.not_after.isoformat()}."
            )
        if now < self.not_before - _CLOCK_SKEW:
            raise ConnectorConfigurationError(
                f"The TLS client certificate ({CERTIFICATE_CREDENTIAL}) is not valid before "
                f"{self.not_before.isoformat()}."
            )

    def load_into(self, context: ssl.SSLContext) -> None:
        """Make ``context`` present this certificate (see the module docstring: no named file
        on Linux)."""
        password = self._password
        with _pem_file(self._certificate) as cert_path, _pem_file(self._key) as key_path:
            try:
                context.load_cert_chain(cert_path, key_path, password=password)
            except (ssl.SSLError, OSError, ValueError):
                # The certificate and key were checked against each other: OpenSSL refusing
                # them now is something about this build (a key type it lacks).
                raise ConnectorConfigurationError(
                    "OpenSSL could not load the TLS client certificate and key."
                ) from None


@contextlib.contextmanager
def _pem_file(text: str) -> Iterator[str]:
    data = text.encode()
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd = memfd_create("tessera-client-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="tessera-tls-") as directory:  # 0700
        path = os.path.join(directory, "pem")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(descriptor, data)
        finally:
            os.close(descriptor)
        yield path


def client_identity(credentials: Credentials) -> ClientIdentity:
    """The checked identity held by ``credentials`` (see the module docstring), or
    ``ConnectorConfigurationError`` naming what is missing or wrong, or that the certificate is
    outside its validity period now."""
    identity = read_identity(credentials)
    identity.check_current()
    return identity


def read_identity(credentials: Credentials) -> ClientIdentity:
    """``client_identity`` without the validity check (to report when it expires)."""
    missing = [
        name for name in (CERTIFICATE_CREDENTIAL, KEY_CREDENTIAL) if not credentials.get(name)
    ]
    if missing:
        raise ConnectorConfigurationError(
            f"The connector presents a TLS client certificate, and credential(s) "
            f"{', '.join(missing)} are not configured."
        )
    password = credentials.get(KEY_PASSWORD_CREDENTIAL)
    return _checked(
        credentials.reveal(CERTIFICATE_CREDENTIAL),
        credentials.reveal(KEY_CREDENTIAL),
        (password.get_secret_value() or None) if password is not None else None,
    )


async def identity_for(request: httpx.Request) -> ClientIdentity | None:
    """The identity a network transport presents for ``request``: None when it carries no
    client credentials, or goes over plain http.

    A ``trace`` event (``tessera.client_identity.started``) comes first: the egress transport
    then knows nothing was written, so a ``ConnectorConfigurationError`` raised here is a call
    that sent nothing, not one whose outcome is unknown.
    """
    credentials = request.extensions.get(CLIENT_CREDENTIALS_EXTENSION)
    if credentials is None or request.url.scheme != "https":
        return None
    trace = request.extensions.get("trace")
    if trace is not None:
        await trace("tessera.client_identity.started", {})
    return client_identity(credentials)


@functools.lru_cache(maxsize=16)
def _checked(certificate: str, key: str, password: str | None) -> ClientIdentity:
    try:
        chain = x509.load_pem_x509_certificates(certificate.encode())
    except ValueError:
        raise ConnectorConfigurationError(
            f"Credential {CERTIFICATE_CREDENTIAL} is not a PEM certificate."
        ) from None
    try:
        private_key = serialization.load_pem_private_key(
            key.encode(), password=password.encode() if password else None
        )
    except (ValueError, TypeError):
        raise ConnectorConfigurationError(
            f"Credential {KEY_CREDENTIAL} is not a PEM private key, or "
            f"{KEY_PASSWORD_CREDENTIAL} does not open it."
        ) from None
    except UnsupportedAlgorithm:
        raise ConnectorConfigurationError(
            f"Credential {KEY_CREDENTIAL} holds a key of a kind that cannot be used."
        ) from None
    leaf = chain[0]
    if leaf.public_key().public_bytes(*_SPKI) != private_key.public_key().public_bytes(*_SPKI):
        raise ConnectorConfigurationError(
            f"Credential {KEY_CREDENTIAL} is not the key of the first certificate in "
            f"{CERTIFICATE_CREDENTIAL}."
        )
    return ClientIdentity(
        certificate,
        key,
        password,
        subject=leaf.subject.rfc4514_string(),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
    )
