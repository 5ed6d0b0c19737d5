"""Request signing over the wire body (``sdk.signing``, applied by the egress transport).

Each signature is checked the way a provider checks it, from what the loopback server received
(the detokenized body, the headers as sent) and with code written here from the specifications
(RFC 9530, RFC 9421, draft-cavage-12, RFC 7515/7797), not with the libraries that signed. The
transcript keeps what was signed over a card as ``[REDACTED]``, and no connector code gets it.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import re
from typing import ClassVar

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from normalization import CardMethod, ConnectorConfigurationError
from sdk import (
    CallContext,
    CavageSignature,
    ContentDigest,
    DetachedJws,
    Digest,
    MessageSignature,
    RequestSigner,
    TranscriptRecorder,
)
from tests.sdk.conftest import context
from tests.sdk.loopback import LoopbackProvider, Recorded

SECRET = b"0123456789abcdef0123456789abcdef"
OB_CLAIMS = (
    "http://openbanking.org.uk/iat",
    "http://openbanking.org.uk/iss",
    "http://openbanking.org.uk/tan",
)


def card_body(ctx: CallContext, token: str) -> dict[str, object]:
    card = ctx.card(CardMethod(token=token))
    return {"amount": 1050, "card": {"number": card.number, "cvc": card.cvc}}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def received(recorded: Recorded, name: str) -> str:
    values = [v for k, v in recorded.headers.items() if k.lower() == name]
    assert len(values) == 1, (name, recorded.headers)
    return values[0]


def recorded_headers(transcript: TranscriptRecorder) -> dict[str, str]:
    [exchange] = transcript.exchanges
    return {name.lower(): value for name, value in exchange.request_headers}


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


# -- RFC 9530 and RFC 9421 -----------------------------------------------------------------------


async def test_a_message_signature_covers_the_card_the_provider_receives(
    provider: LoopbackProvider, client, revealer, canary, transcript
) -> None:
    token, pan, cvc = canary
    ctx = context(client, provider.url, revealer, transcript)
    response = await ctx.send(
        "POST",
        "/payments",
        json=card_body(ctx, token),
        sign=MessageSignature(
            key_id="tessera-test",
            key=SECRET,
            components=("@method", "@authority", "@path", "content-type"),
        ),
    )
    [sent] = provider.requests
    assert json.loads(sent.body)["card"] == {"number": pan, "cvc": cvc}

    # RFC 9530: the digest is of the bytes received, the card's included
    digest = received(sent, "content-digest")
    assert digest == f"sha-256=:{b64(hashlib.sha256(sent.body).digest())}:"

    # RFC 9421 section 2.5: the signature base, rebuilt from what arrived
    signature_input = received(sent, "signature-input")
    label, _, params = signature_input.partition("=")
    assert label == "sig1"
    assert params.startswith('("@method" "@authority" "@path" "content-type" "content-digest")')
    assert 'keyid="tessera-test"' in params and 'alg="hmac-sha256"' in params
    assert re.search(r";created=\d+", params)
    base = "\n".join(
        [
            '"@method": POST',
            f'"@authority": 127.0.0.1:{provider.port}',
            '"@path": /payments',
            f'"content-type": {received(sent, "content-type")}',
            f'"content-digest": {digest}',
            f'"@signature-params": {params}',
        ]
    )
    expected = hmac.new(SECRET, base.encode(), hashlib.sha256).digest()
    assert received(sent, "signature") == f"sig1=:{b64(expected)}:"

    # nothing signed over the card is recorded, nor handed back to the connector
    headers = recorded_headers(transcript)
    for name in ("content-digest", "signature", "signature-input"):
        assert headers[name] == "[REDACTED]", name
    assert pan not in transcript.text() and digest not in transcript.text()
    assert not {"signature", "content-digest"} & {k.lower() for k in response.request.headers}


async def test_a_request_without_card_data_is_signed_and_recorded_as_sent(
    provider: LoopbackProvider, client, revealer, transcript
) -> None:
    """A form body (httpx builds that request, not the context's fast path); the signature
    covers the query; nothing to hide, so QA can compare the recorded headers."""
    ctx = context(client, provider.url, revealer, transcript)
    key = ec.generate_private_key(ec.SECP256R1())
    await ctx.send(
        "POST",
        "/refunds",
        data={"payment": "pay_123", "amount": "500"},
        params={"expand": "balance"},
        sign=(
            ContentDigest("sha-512"),
            MessageSignature(
                key_id="ec-1",
                key=pem(key),
                algorithm="ecdsa-p256-sha256",
                components=("@method", "@target-uri", "content-digest"),
                digest=None,
                label="tessera",
                nonce=True,
                expires_in=60,
            ),
        ),
    )
    [sent] = provider.requests
    assert sent.body == b"payment=pay_123&amount=500"
    digest = received(sent, "content-digest")
    assert digest == f"sha-512=:{b64(hashlib.sha512(sent.body).digest())}:"
    params = received(sent, "signature-input").removeprefix("tessera=")
    assert params.startswith('("@method" "@target-uri" "content-digest")')
    assert re.search(r";expires=\d+", params) and re.search(r';nonce="[^"]{16,}"', params)
    target = f"http://127.0.0.1:{provider.port}/refunds?expand=balance"
    base = "\n".join(
        [
            '"@method": POST',
            f'"@target-uri": {target}',
            f'"content-digest": {digest}',
            f'"@signature-params": {params}',
        ]
    )
    raw = base64.b64decode(received(sent, "signature").removeprefix("tessera=:")[:-1])
    assert len(raw) == 64  # RFC 9421 section 3.3.4: r and s, 32 bytes each, not DER
    der = utils.encode_dss_signature(
        int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    )
    key.public_key().verify(der, base.encode(), ec.ECDSA(hashes.SHA256()))

    headers = recorded_headers(transcript)
    assert headers["content-digest"] == digest
    assert headers["signature-input"] == received(sent, "signature-input")


# -- draft-cavage, as CyberSource uses it ---------------------------------------------------------


async def test_digest_and_cavage_hmac_signature_like_cybersource(
    provider: LoopbackProvider, client, revealer, canary, transcript
) -> None:
    token, pan, _ = canary
    shared_secret = b64(SECRET)  # CyberSource hands out the secret in base64
    ctx = context(client, provider.url, revealer, transcript)
    await ctx.send(
        "POST",
        "/pts/v2/payments",
        json=card_body(ctx, token),
        headers={"v-c-merchant-id": "tessera_merchant"},
        sign=(
            Digest(),
            CavageSignature(
                key_id="5e3c-key",
                key=base64.b64decode(shared_secret),
                headers=("host", "date", "request-target", "digest", "v-c-merchant-id"),
                algorithm_label="HmacSHA256",
                key_id_param="keyid",
                separator=", ",
            ),
        ),
    )
    [sent] = provider.requests
    assert pan.encode() in sent.body
    digest = received(sent, "digest")
    assert digest == "SHA-256=" + b64(hashlib.sha256(sent.body).digest())
    date = received(sent, "date")  # added: the signature covers it and the connector set none
    assert email.utils.parsedate_to_datetime(date).tzinfo is not None

    signature = received(sent, "signature")
    parts = dict(re.findall(r'(\w+)="([^"]*)"', signature))
    assert signature.startswith('keyid="5e3c-key", algorithm="HmacSHA256", ')
    assert parts["headers"] == "host date request-target digest v-c-merchant-id"
    lines = "\n".join(
        [
            f"host: 127.0.0.1:{provider.port}",
            f"date: {date}",
            "request-target: post /pts/v2/payments",
            f"digest: {digest}",
            "v-c-merchant-id: tessera_merchant",
        ]
    )
    expected = hmac.new(SECRET, lines.encode(), hashlib.sha256).digest()
    assert parts["signature"] == b64(expected)

    headers = recorded_headers(transcript)
    assert headers["digest"] == headers["signature"] == "[REDACTED]"
    assert headers["v-c-merchant-id"] == "tessera_merchant"
    assert parts["signature"] not in transcript.text()


async def test_cavage_rsa_signature_in_authorization_keeps_the_connectors_date(
    provider: LoopbackProvider, client, revealer, transcript
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    date = "Sun, 22 Nov 2026 10:00:00 GMT"
    ctx = context(client, provider.url, revealer, transcript)
    await ctx.send(
        "GET",
        "/payments/pay_123",
        headers={"Date": date},
        params={"expand": "refunds"},
        sign=(
            Digest(),
            CavageSignature(
                key_id="rsa-1", key=pem(key), algorithm="rsa-sha256", header="Authorization"
            ),
        ),
    )
    [sent] = provider.requests
    assert received(sent, "date") == date
    authorization = received(sent, "authorization")
    assert authorization.startswith('Signature keyId="rsa-1",algorithm="rsa-sha256",')
    parts = dict(re.findall(r'(\w+)="([^"]*)"', authorization))
    assert parts["headers"] == "(request-target) host date digest"
    lines = "\n".join(
        [
            "(request-target): get /payments/pay_123?expand=refunds",
            f"host: 127.0.0.1:{provider.port}",
            f"date: {date}",
            "digest: SHA-256=" + b64(hashlib.sha256(b"").digest()),
        ]
    )
    key.public_key().verify(
        base64.b64decode(parts["signature"]), lines.encode(), padding.PKCS1v15(), hashes.SHA256()
    )


# -- detached JWS, as UK Open Banking uses it -----------------------------------------------------


async def test_detached_jws_like_uk_open_banking(
    provider: LoopbackProvider, client, revealer, transcript
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ctx = context(client, provider.url, revealer, transcript)
    consent = {"Data": {"Initiation": {"InstructedAmount": {"Amount": "10.50"}}}, "Risk": {}}
    await ctx.send(
        "POST",
        "/domestic-payment-consents",
        json=consent,
        sign=DetachedJws(
            key=pem(key),
            algorithm="PS256",
            key_id="ob-signing-kid",
            protected={
                "typ": "JOSE",
                "cty": "application/json",
                OB_CLAIMS[1]: "0015800001041RHAAY/tessera",
                OB_CLAIMS[2]: "openbanking.org.uk",
            },
            timestamp_claims=(OB_CLAIMS[0],),
            critical=OB_CLAIMS,
        ),
    )
    [sent] = provider.requests
    head, middle, signature = received(sent, "x-jws-signature").split(".")
    assert middle == ""  # detached: the body is the payload
    header = json.loads(unb64url(head))
    assert header["alg"] == "PS256" and header["kid"] == "ob-signing-kid"
    assert header["crit"] == list(OB_CLAIMS) and isinstance(header[OB_CLAIMS[0]], int)
    assert header[OB_CLAIMS[2]] == "openbanking.org.uk"
    signing_input = f"{head}.{b64url(sent.body)}".encode()
    key.public_key().verify(
        unb64url(signature),
        signing_input,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )


async def test_unencoded_detached_jws_signs_the_raw_body(
    provider: LoopbackProvider, client, revealer, canary, transcript
) -> None:
    token, pan, _ = canary
    key = ec.generate_private_key(ec.SECP256R1())
    ctx = context(client, provider.url, revealer, transcript)
    await ctx.send(
        "POST",
        "/payments",
        json=card_body(ctx, token),
        sign=DetachedJws(key=pem(key), algorithm="ES256", header="X-Signature", unencoded=True),
    )
    [sent] = provider.requests
    head, middle, signature = received(sent, "x-signature").split(".")
    assert middle == "" and json.loads(unb64url(head)) == {
        "alg": "ES256",
        "b64": False,
        "crit": ["b64"],
    }
    raw = unb64url(signature)
    der = utils.encode_dss_signature(
        int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    )
    assert pan.encode() in sent.body
    key.public_key().verify(der, head.encode() + b"." + sent.body, ec.ECDSA(hashes.SHA256()))
    assert recorded_headers(transcript)["x-signature"] == "[REDACTED]"


# -- refusals --------------------------------------------------------------------------------------


def test_signers_are_the_sdks_own() -> None:
    with pytest.raises(TypeError, match="connector code never does"):

        class Mine(RequestSigner):
            pass

    with pytest.raises(TypeError, match=r"sdk\.signing"):

        class Wider(ContentDigest):
            pass


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ContentDigest("md5"), "ContentDigest algorithm must be one of"),
        (lambda: MessageSignature("k", SECRET, "hmac-sha1"), "algorithm must be one of"),
        (lambda: MessageSignature("k", SECRET, components=()), "at least one"),
        (lambda: CavageSignature("k", SECRET, headers=("Date",)), "lower case"),
        (lambda: DetachedJws(SECRET, "HS256", protected={"alg": "none"}), "sets alg itself"),
        (lambda: Digest(header="Bad Header"), "not a header name"),
    ],
)
def test_signer_configuration_is_checked_when_built(build, message) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_signers_do_not_show_their_keys() -> None:
    assert "0123456789" not in repr(MessageSignature("k", SECRET))
    assert "0123456789" not in repr(CavageSignature("k", SECRET))
    assert "0123456789" not in repr(DetachedJws(SECRET, "HS256"))


class SpyKey:
    """A key object: were it taken, its ``sign`` would get what is signed (the card)."""

    seen: ClassVar[list[bytes]] = []

    def sign(self, data: bytes, *args: object) -> bytes:
        self.seen.append(data)
        return b"x" * 64


class LookAlike:
    """Not a signer, though ``isinstance`` believes it is one."""

    seen: ClassVar[list[object]] = []
    __class__ = property(lambda self: ContentDigest)  # type: ignore[assignment]
    written = frozenset({"x-leak"})
    covers = frozenset()

    def headers_for(self, request: object) -> list[tuple[bytes, bytes]]:
        self.seen.append(request)
        return []


class Disguised(RequestSigner):
    __module__ = "sdk.signing"  # gets past the subclass check; ``sign=`` still refuses it

    @property
    def written(self) -> frozenset[str]:
        return frozenset()

    def headers_for(self, request: object) -> list[tuple[bytes, bytes]]:
        LookAlike.seen.append(request)
        return []


@pytest.mark.parametrize(
    ("headers", "sign", "message"),
    [
        ({}, "Digest", "sign= takes the SDK's request signers"),
        ({"Digest": "SHA-256=xyz"}, Digest(), "already carries digest"),
        (
            {},
            (ContentDigest(), MessageSignature("k", SECRET)),
            "already carries content-digest, which the MessageSignature",
        ),
        ({}, CavageSignature("k", SECRET), "covers the 'digest' header, which is missing"),
        ({}, MessageSignature("k", "not a key", "ed25519"), "not a usable PEM private key"),
        ({}, DetachedJws("not a key", "ES256"), "does not suit ES256"),
        (
            {},
            CavageSignature("k", "not a key", "rsa-sha256", headers=("date",)),
            "not a usable PEM",
        ),
        ({}, MessageSignature("k", SpyKey(), "ed25519"), "text or bytes"),
        ({}, CavageSignature("k", SpyKey(), "rsa-sha256", headers=("date",)), "text or bytes"),
        ({}, DetachedJws(SpyKey(), "ES256"), "text or bytes"),
        ({}, LookAlike(), "sign= takes the SDK's request signers"),
        ({}, (ContentDigest(), Disguised()), "sign= takes the SDK's request signers"),
        (
            {"Content-Digest": "sha-256=:AAAA:"},
            MessageSignature("k", SECRET, components=("@method", "content-digest"), digest=None),
            "would cover the request's own content-digest",
        ),
        (
            {"Digest": "SHA-256=AAAA"},
            CavageSignature("k", SECRET, headers=("date", "digest")),
            "would cover the request's own digest",
        ),
    ],
)
async def test_a_request_that_cannot_be_signed_is_not_sent(
    provider: LoopbackProvider, client, revealer, canary, transcript, headers, sign, message
) -> None:
    token, pan, cvc = canary
    ctx = context(client, provider.url, revealer, transcript)
    with pytest.raises(ConnectorConfigurationError, match=message) as caught:
        await ctx.send("POST", "/payments", json=card_body(ctx, token), headers=headers, sign=sign)
    assert provider.requests == []
    assert not ctx.may_have_reached_provider
    assert pan not in str(caught.value) and cvc not in str(caught.value)
    # nothing chained: a library's text, or its frames, may hold what it signed
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert SpyKey.seen == [] and LookAlike.seen == []
    if any(m in message for m in ("sign= takes", "already carries", "would cover")):
        assert revealer.reveals == []  # refused before the card was revealed


async def test_a_reply_quoting_a_digest_or_signature_of_a_card_loses_it(
    provider: LoopbackProvider, client, revealer, canary, transcript
) -> None:
    async def refuse(request: web.Request) -> web.StreamResponse:
        digest = request.headers["Content-Digest"].split(":")[1]
        signature = request.headers["Signature"].split(":")[1]
        return web.json_response(
            {"error": f"digest {digest} or signature {signature} does not match"}, status=400
        )

    provider.handler = refuse
    token, pan, _ = canary
    ctx = context(client, provider.url, revealer, transcript)
    await ctx.send(
        "POST", "/payments", json=card_body(ctx, token), sign=MessageSignature("k", SECRET)
    )
    [sent] = provider.requests
    digest = received(sent, "content-digest").split(":")[1]
    signature = received(sent, "signature").split(":")[1]
    [exchange] = transcript.exchanges
    assert exchange.status_code == 400 and "does not match" in exchange.response_body
    assert digest not in transcript.text() and signature not in transcript.text()
    assert pan not in transcript.text()
