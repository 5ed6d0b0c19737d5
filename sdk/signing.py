"""Request signing over the bytes on the wire: body digests, HTTP message signatures, detached JWS.

Some providers want each request signed: a digest of the body in a header, then a signature over
the digest and a few other headers (CyberSource's ``Digest`` + ``Signature``, RFC 9421 HTTP
Message Signatures with RFC 9530 ``Content-Digest``), or a detached JWS of the body (UK Open
Banking's ``x-jws-signature``). A connector cannot compute these itself: the body it builds holds
card *placeholders*, and the body that goes out holds the card. So the signature must be made
where the card is written in, in the egress transport (``sdk.egress``), over exactly the bytes
sent. A connector asks for it by passing signers to ``ctx.send``::

    await ctx.send(
        "POST",
        "/pts/v2/payments",
        json=body,
        headers={"v-c-merchant-id": merchant},  # Date: added, since the signature covers it
        sign=(
            Digest(),
            CavageSignature(
                key_id=ctx.credentials.reveal("key_id"),
                key=base64.b64decode(ctx.credentials.reveal("shared_secret")),
                headers=("host", "date", "request-target", "digest", "v-c-merchant-id"),
                algorithm_label="HmacSHA256",
                key_id_param="keyid",
                separator=", ",
            ),
        ),
    )

Signers run in order, each seeing the headers the ones before it added (a signature covers the
digest). Each request is signed afresh, so a retry carries a new signature over its own bytes.

**The signers are the SDK's own; a connector cannot add one.** A signer sees the detokenized
body, and no connector code ever does. So ``sign=`` takes exactly these classes (not look-alikes,
not subclasses: ``RequestSigner`` refuses those defined outside this module), keys are text or
bytes (a key *object* would be called with what is signed), and what a signer adds is not handed
back (``response.request`` is the request with placeholders). This is a guardrail against
mistakes, not a sandbox: code in the same process could patch the SDK, which review must catch.

**Recorded as ``[REDACTED]`` when the request carried card data:** with a digest (or a signature
checkable with a public key) of a body holding a card, one can try every number that fits the
BIN and last four the mask shows. Without card data they are recorded as sent.

RFC 9421 is ``http-message-signatures``'s, JWS ``joserfc``'s; the digests and draft-cavage's few
lines are written here.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from http_message_signatures import (
    HTTPMessageSignaturesException,
    HTTPMessageSigner,
    MappingKeyResolver,
    algorithms,
)
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey
from joserfc.registry import HeaderParameter

from normalization import ConnectorConfigurationError

__all__ = [
    "CavageSignature",
    "ContentDigest",
    "DetachedJws",
    "Digest",
    "MessageSignature",
    "RequestSigner",
    "SigningError",
    "WireRequest",
]

KeyMaterial = bytes | str

DigestAlgorithm = Literal["sha-256", "sha-512"]
MessageSignatureAlgorithm = Literal[
    "hmac-sha256",
    "ed25519",
    "ecdsa-p256-sha256",
    "ecdsa-p384-sha384",
    "rsa-pss-sha512",
    "rsa-v1_5-sha256",
]
CavageAlgorithm = Literal["hmac-sha256", "rsa-sha256"]
JwsAlgorithm = Literal["PS256", "RS256", "ES256", "ES384", "EdDSA", "HS256"]

_HASHES = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
_LEGACY_NAMES = {"sha-256": "SHA-256", "sha-512": "SHA-512"}
_MESSAGE_ALGORITHMS: Mapping[str, type[algorithms.HTTPSignatureAlgorithm]] = {
    "hmac-sha256": algorithms.HMAC_SHA256,
    "ed25519": algorithms.ED25519,
    "ecdsa-p256-sha256": algorithms.ECDSA_P256_SHA256,
    "ecdsa-p384-sha384": algorithms.ECDSA_P384_SHA384,
    "rsa-pss-sha512": algorithms.RSA_PSS_SHA512,
    "rsa-v1_5-sha256": algorithms.RSA_V1_5_SHA256,
}
_REQUEST_TARGET = frozenset({"(request-target)", "request-target"})


class SigningError(ValueError):
    """A signer that cannot sign this request (a covered header missing, an unusable key).
    The egress transport raises it as ``ConnectorConfigurationError``, before anything is sent."""


@dataclass(frozen=True, slots=True)
class WireRequest:
    """The request as it will be written: detokenized body, headers so far (signers' included)."""

    method: str
    url: httpx.URL
    headers: Sequence[tuple[bytes, bytes]] = field(repr=False)
    body: bytes = field(repr=False)

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (several lines joined by ``", "``), or None."""
        wanted = name.lower().encode("ascii")
        values = [v.decode("latin-1").strip() for k, v in self.headers if k.lower() == wanted]
        return ", ".join(values) if values else None

    @property
    def target(self) -> str:
        """The request target: the path and query, as sent."""
        return self.url.raw_path.decode("ascii")


class RequestSigner:
    """The base of the signers below; sealed (see the module docstring)."""

    __slots__ = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__ != __name__:
            raise TypeError(
                f"{cls.__qualname__}: request signers are the SDK's own (sdk.signing): a signer "
                "sees the card data of the request, and connector code never does. Use "
                "ContentDigest, Digest, MessageSignature, CavageSignature or DetachedJws; if none "
                "fits your provider, open an issue with its scheme."
            )

    @property
    def written(self) -> frozenset[str]:
        """The headers this signer writes, lower case. The request must not carry them."""
        raise NotImplementedError

    @property
    def covers(self) -> frozenset[str]:
        """The headers this signer's signature covers, lower case."""
        return frozenset()

    def headers_for(self, request: WireRequest) -> list[tuple[bytes, bytes]]:
        """The headers to add to ``request``. Raises ``SigningError``."""
        raise NotImplementedError


def _digest(algorithm: str, body: bytes) -> str:
    return base64.b64encode(_HASHES[algorithm](body).digest()).decode("ascii")


def _check_choice(value: str, allowed: Any, what: str) -> None:
    choices = get_args(allowed)
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}, not {value!r}")


def _as_bytes(key: object) -> bytes:
    """Key material as plain bytes. Only text and bytes are taken: a key *object* would be
    called with the signing input, which holds the card."""
    if isinstance(key, str):
        return str.encode(key, "utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise SigningError("A signing key is given as text or bytes (a PEM key, an HMAC secret).")


@dataclass(frozen=True, slots=True)
class ContentDigest(RequestSigner):
    """RFC 9530 ``Content-Digest: sha-256=:<base64>:`` of the body as sent."""

    algorithm: DigestAlgorithm = "sha-256"

    def __post_init__(self) -> None:
        _check_choice(self.algorithm, DigestAlgorithm, "ContentDigest algorithm")

    @property
    def written(self) -> frozenset[str]:
        return frozenset({"content-digest"})

    def headers_for(self, request: WireRequest) -> list[tuple[bytes, bytes]]:
        value = f"{self.algorithm}=:{_digest(self.algorithm, request.body)}:"
        return [(b"Content-Digest", value.encode("ascii"))]


@dataclass(frozen=True, slots=True)
class Digest(RequestSigner):
    """RFC 3230 ``Digest: SHA-256=<base64>`` of the body as sent (CyberSource and other
    draft-cavage users). ``header`` renames it where a provider wants another name."""

    algorithm: DigestAlgorithm = "sha-256"
    header: str = "Digest"

    def __post_init__(self) -> None:
        _check_choice(self.algorithm, DigestAlgorithm, "Digest algorithm")
        _check_header_name(self.header)

    @property
    def written(self) -> frozenset[str]:
        return frozenset({self.header.lower()})

    def headers_for(self, request: WireRequest) -> list[tuple[bytes, bytes]]:
        value = f"{_LEGACY_NAMES[self.algorithm]}={_digest(self.algorithm, request.body)}"
        return [(self.header.encode("ascii"), value.encode("ascii"))]


@dataclass(frozen=True, slots=True)
class MessageSignature(RequestSigner):
    """RFC 9421 HTTP Message Signatures: ``Signature-Input`` and ``Signature``.

    ``components``: what is covered, RFC 9421 component identifiers (``@method``,
    ``@target-uri``, ``@authority``, ``@path``, ``@query``, header names in lower case).
    ``digest``: also write ``Content-Digest`` (RFC 9530) and cover it, so the signature holds
    the body; None signs without the body. ``key``: the HMAC secret, or a PEM private key
    (text or bytes: a key object could see what is signed). ``expires_in``: seconds until
    the signature's ``expires`` parameter; ``nonce``: add a random ``nonce`` parameter.
    """

    key_id: str
    key: KeyMaterial = field(repr=False)
    algorithm: MessageSignatureAlgorithm = "hmac-sha256"
    components: tuple[str, ...] = ("@method", "@authority", "@target-uri", "content-type")
    digest: DigestAlgorithm | None = "sha-256"
    label: str = "sig1"
    tag: str | None = None
    include_alg: bool = True
    expires_in: float | None = None
    nonce: bool = False

    def __post_init__(self) -> None:
        _check_choice(self.algorithm, MessageSignatureAlgorithm, "MessageSignature algorithm")
        if self.digest is not None:
            _check_choice(self.digest, DigestAlgorithm, "MessageSignature digest")
        if not self.components:
            raise ValueError("MessageSignature needs at least one covered component")

    @property
    def written(self) -> frozenset[str]:
        names = {"signature", "signature-input"}
        return frozenset(names | ({"content-digest"} if self.digest else set()))

    @property
    def covers(self) -> frozenset[str]:
        names = (c.split(";")[0].strip().strip('"').lower() for c in self.components)
        return frozenset(n for n in names if not n.startswith("@")) | (
            {"content-digest"} if self.digest else frozenset()
        )

    def headers_for(self, request: WireRequest) -> list[tuple[bytes, bytes]]:
        fields = _Fields([(k.decode("ascii"), v.decode("latin-1")) for k, v in request.headers])
        before = len(fields.pairs)
        components = list(self.components)
        if self.digest is not None:
            fields["Content-Digest"] = (
                f"{self.digest}=:{_digest(self.digest, request.body)}:"  # RFC 9530
            )
            if "content-digest" not in components:
                components.append("content-digest")
        algorithm = _MESSAGE_ALGORITHMS[self.algorithm]
        key = _as_bytes(self.key) if self.algorithm == "hmac-sha256" else _private_key(self.key)
        signer = HTTPMessageSigner(
            signature_algorithm=algorithm,
            key_resolver=MappingKeyResolver(public_keys={}, private_keys={self.key_id: key}),
        )
        created = datetime.now(UTC)
        expires = None if self.expires_in is None else created + timedelta(0, self.expires_in)
        try:
            signer.sign(
                _Message(request.method, str(request.url), fields),
                key_id=self.key_id,
                created=created,
                expires=expires,
                nonce=secrets.token_urlsafe(16) if self.nonce else None,
                label=self.label,
                tag=self.tag,
                include_alg=self.include_alg,
                covered_component_ids=components,
                # ours, or an earlier signer's (ContentDigest): made from the bytes sent
                use_existing_digest="content-digest" in fields,
            )
        except (HTTPMessageSignaturesException, ValueError, TypeError, KeyError) as exc:
            raise SigningError(f"RFC 9421 signing failed: {_reason(exc)}") from None
        return [(k.encode("ascii"), v.encode("latin-1")) for k, v in fields.pairs[before:]]


@dataclass(frozen=True, slots=True)
class CavageSignature(RequestSigner):
    """The draft-cavage HTTP signature (draft 12), as CyberSource and others still use it:
    ``Signature: keyId="...",algorithm="hmac-sha256",headers="...",signature="..."``.

    ``headers``: the covered headers in order, lower case; ``(request-target)`` (or
    ``request-target``, CyberSource's spelling) is ``<method> <path>``. A ``date`` covered and
    absent is added (``Date``, now). ``key``: the HMAC secret (bytes: CyberSource's shared secret
    is base64 and is decoded first) or an RSA PEM private key. ``algorithm_label``: what the
    ``algorithm`` parameter says (``HmacSHA256`` at CyberSource); ``key_id_param``: ``keyId`` in
    the draft, ``keyid`` at CyberSource; ``separator`` between parameters; ``header``:
    ``Signature``, or ``Authorization`` (then prefixed ``Signature ``).
    """

    key_id: str
    key: KeyMaterial = field(repr=False)
    algorithm: CavageAlgorithm = "hmac-sha256"
    headers: tuple[str, ...] = ("(request-target)", "host", "date", "digest")
    algorithm_label: str | None = None
    key_id_param: str = "keyId"
    separator: str = ","
    header: Literal["Signature", "Authorization"] = "Signature"

    def __post_init__(self) -> None:
        _check_choice(self.algorithm, CavageAlgorithm, "CavageSignature algorithm")
        if not self.headers:
            raise ValueError("CavageSignature needs at least one covered header")
        if any(name != name.lower() for name in self.headers):
            raise ValueError("CavageSignature headers are named in lower case")

    @property
    def written(self) -> frozenset[str]:
        return frozenset({self.header.lower()})

    @property
    def covers(self) -> frozenset[str]:
        return frozenset(self.headers) - _REQUEST_TARGET

    def headers_for(self, request: WireRequest) -> list[tuple[bytes, bytes]]:
        added: list[tuple[bytes, bytes]] = []
        if "date" in self.headers and request.header("date") is None:
            date = email.utils.formatdate(usegmt=True)
            added.append((b"Date", date.encode("ascii")))
            request = WireRequest(
                request.method, request.url, [*request.headers, *added], request.body
            )
        lines = []
        for name in self.headers:
            if name in _REQUEST_TARGET:
                value: str | None = f"{request.method.lower()} {request.target}"
            elif name == "host":
                value = request.header("host") or request.url.netloc.decode("ascii")
            else:
                value = request.header(name)
            if value is None:
                raise SigningError(f"The signature covers the {name!r} header, which is missing.")
            lines.append(f"{name}: {value}")
        base = "\n".join(lines).encode("utf-8")
        if self.algorithm == "hmac-sha256":
            raw = hmac.new(_as_bytes(self.key), base, hashlib.sha256).digest()
        else:
            private = _private_key(self.key)
            if not isinstance(private, rsa.RSAPrivateKey):
                raise SigningError("rsa-sha256 needs an RSA private key.")
            raw = private.sign(base, padding.PKCS1v15(), hashes.SHA256())
        parameters = self.separator.join(
            [
                f'{self.key_id_param}="{self.key_id}"',
                f'algorithm="{self.algorithm_label or self.algorithm}"',
                f'headers="{" ".join(self.headers)}"',
                f'signature="{base64.b64encode(raw).decode("ascii")}"',
            ]
        )
        if self.header == "Authorization":
            parameters = f"Signature {parameters}"
        added.append((self.header.encode("ascii"), parameters.encode("ascii")))
        return added


@dataclass(frozen=True, slots=True)
class DetachedJws(RequestSigner):
    """A JWS of the body with the payload detached (RFC 7515 appendix F): ``<header>..<sig>``
    in ``header`` (``x-jws-signature`` in UK Open Banking).

    ``protected``: further protected header parameters (``kid`` from ``key_id``, ``alg`` from
    ``algorithm`` are set); ``timestamp_claims``: parameters that get the signing time in
    seconds (``http://openbanking.org.uk/iat``); ``critical``: add ``crit`` listing these
    names. ``unencoded``: RFC 7797 (``b64: false``, in ``crit``), which some banks want.
    ``key``: a PEM private key (or the HMAC secret for HS256).
    """

    key: KeyMaterial = field(repr=False)
    algorithm: JwsAlgorithm = "PS256"
    key_id: str | None = None
    header: str = "x-jws-signature"
    protected: Mapping[str, Any] = field(default_factory=dict)
    timestamp_claims: tuple[str, ...] = ()
    critical: tuple[str, ...] = ()
    unencoded: bool = False

    def __post_init__(self) -> None:
        _check_choice(self.algorithm, JwsAlgorithm, "DetachedJws algorithm")
        _check_header_name(self.header)
        reserved = {"alg", "kid", "b64", "crit"} & set(self.protected)
        if reserved:
            raise ValueError(f"DetachedJws sets {', '.join(sorted(reserved))} itself")

    @property
    def written(self) -> frozenset[str]:
        return frozenset({self.header.lower()})

    def headers_for(self, request: WireRequest) -> list[tuple[bytes, bytes]]:
        protected: dict[str, Any] = {"alg": self.algorithm, **self.protected}
        if self.key_id is not None:
            protected["kid"] = self.key_id
        now = int(time.time())
        for claim in self.timestamp_claims:
            protected[claim] = now
        critical = list(self.critical)
        if self.unencoded:
            protected["b64"] = False
            critical.append("b64")
        if critical:
            protected["crit"] = critical
        try:
            key = _jws_key(self.algorithm, _as_bytes(self.key))
            registry = jws.JWSRegistry(
                # the caller's own parameters (and what ``crit`` names, RFC 7515 4.1.11)
                header_registry={
                    name: HeaderParameter(name, _any)
                    for name in {*self.protected, *self.timestamp_claims, *self.critical}
                },
                algorithms=[self.algorithm],
            )
            compact = jws.serialize_compact(protected, request.body, key, registry=registry)
        except SigningError:
            raise
        except (JoseError, ValueError, TypeError) as exc:
            raise SigningError(f"JWS signing failed: {_reason(exc)}") from None
        head, _, signature = compact.split(".")
        return [(self.header.encode("ascii"), f"{head}..{signature}".encode("ascii"))]


# -- what the egress transport calls -------------------------------------------------------------


#: Exactly these: ``isinstance`` would take a look-alike (``__class__`` can be a property).
_SIGNER_TYPES = frozenset({ContentDigest, Digest, MessageSignature, CavageSignature, DetachedJws})
_DIGEST_HEADERS = frozenset({"content-digest", "digest"})


def signers_of(given: object, headers: list[tuple[bytes, bytes]]) -> tuple[RequestSigner, ...]:
    """``ctx.send``'s ``sign=`` as a tuple of the SDK's signers, checked against the request's
    ``headers`` before any card is revealed: anything else, a header a signer writes already
    set, or the connector's own digest under a signature, is refused."""
    if given is None:
        return ()
    signers = given if type(given) is tuple else (given,)
    if not all(type(signer) in _SIGNER_TYPES for signer in signers):
        raise ConnectorConfigurationError(
            "sign= takes the SDK's request signers (sdk.signing), one or a tuple of them."
        )
    own = present = header_names(headers)
    for signer in signers:
        failure = _refusal(signer, present, own)
        if failure is not None:
            raise ConnectorConfigurationError(failure)
        present |= signer.written
    return signers


def header_names(headers: list[tuple[bytes, bytes]]) -> frozenset[str]:
    return frozenset(name.decode("latin-1").lower() for name, _ in headers)


def sign_request(
    signers: tuple[RequestSigner, ...],
    method: str,
    url: httpx.URL,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> list[tuple[bytes, bytes]]:
    """The headers ``signers`` (checked by ``signers_of``) add, in order, each seeing those
    added before it. Raises ``ConnectorConfigurationError``, with no exception chained (its text
    could quote what was signed), before anything is sent."""
    added: list[tuple[bytes, bytes]] = []
    for signer in signers:
        failure = None
        try:
            new = signer.headers_for(WireRequest(method, url, [*headers, *added], body))
        except SigningError as exc:
            failure = str(exc)
        except Exception as exc:  # noqa: BLE001 - a signer's bug; its text may quote the card
            failure = f"The {type(signer).__name__} signer failed ({type(exc).__name__})."
        if failure is not None:
            raise ConnectorConfigurationError(failure)  # outside ``except``: nothing chained
        added.extend(new)
    return added


def _refusal(signer: RequestSigner, present: frozenset[str], own: frozenset[str]) -> str | None:
    name = type(signer).__name__
    clash = signer.written & present
    if clash:
        return (
            f"The request already carries {', '.join(sorted(clash))}, which the {name} signer "
            "writes: leave it to the signer."
        )
    forged = signer.covers & _DIGEST_HEADERS & own
    if forged:
        return (
            f"The {name} signature would cover the request's own {', '.join(sorted(forged))}: "
            "connector code can only digest placeholders. Add ContentDigest() or Digest() "
            "before the signature instead."
        )
    return None


# -- helpers --------------------------------------------------------------------------------------


def _check_header_name(name: str) -> None:
    if not name or not all(c.isascii() and (c.isalnum() or c == "-") for c in name):
        raise ValueError(f"{name!r} is not a header name")


def _any(value: object) -> None:  # a protected header parameter of the caller's: any value
    return None


def _reason(exc: BaseException) -> str:
    """What went wrong, without the message of a library that may quote a header value."""
    text = str(exc)
    return type(exc).__name__ if any(c.isdigit() for c in text) else f"{type(exc).__name__}: {text}"


@functools.lru_cache(maxsize=32)
def _load_pem(pem: bytes) -> Any:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        reason = _reason(exc)
        raise SigningError(f"The signing key is not a usable PEM private key ({reason}).") from None


def _private_key(key: object) -> Any:
    """A ``cryptography`` private key from PEM text or bytes (parsed once per key)."""
    return _load_pem(_as_bytes(key))


@functools.lru_cache(maxsize=32)
def _jws_key(algorithm: str, key: bytes) -> Any:
    if algorithm == "HS256":
        return OctKey.import_key(key)
    try:
        if algorithm in ("PS256", "RS256"):
            return RSAKey.import_key(key)
        if algorithm in ("ES256", "ES384"):
            return ECKey.import_key(key)
        return OKPKey.import_key(key)
    except (JoseError, ValueError, TypeError) as exc:
        raise SigningError(f"The signing key does not suit {algorithm} ({_reason(exc)}).") from None


@dataclass(slots=True)
class _Fields:
    """The header view ``http-message-signatures`` reads and writes: field lines in order."""

    pairs: list[tuple[str, str]]

    def items(self) -> Iterable[tuple[str, str]]:
        return list(self.pairs)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for name, _ in self.pairs))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(n.lower() == name.lower() for n, _ in self.pairs)

    def __setitem__(self, name: str, value: str) -> None:
        self.__delitem__(name)
        self.pairs.append((name, value))

    def __delitem__(self, name: str) -> None:
        self.pairs[:] = [(n, v) for n, v in self.pairs if n.lower() != name.lower()]


@dataclass(slots=True)
class _Message:
    method: str
    url: str
    headers: _Fields
