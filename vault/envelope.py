"""Envelope encryption: card payloads sealed in process under data keys that transit wraps.

With ``[tokenization] encryption = "envelope"`` a tokenization no longer sends the card to
OpenBao to be encrypted. Each gateway process asks transit for a **data key** per tenant
(``transit/datakey/plaintext/tessera-pan-<tenant>``: 256 random bits, returned in clear and
wrapped under the tenant's PAN key), seals payloads with it locally (AES-256-GCM, a random 96-bit
nonce per payload, the PAN key's name as associated data so a ciphertext moved to another tenant
does not open), and stores the wrapped key beside each ciphertext::

    env:vault:v3:<wrapped data key, base64>:<base64 of nonce || ciphertext || tag>

The fingerprint is still transit's keyed HMAC (one Vault call per batch of cards, as before), so
a tokenization costs one batched Vault call instead of two, and a batch of cards one data key.

**Custody, decided here.** A process seals under one data key for at most ``key_seconds`` (the
gateway's ``data_key_seconds``, default 10 s) or ``max_uses`` seals, whichever comes first, then
fetches a new one; a key is never written anywhere in clear. Revealing (connector egress only)
unwraps the stored data key with transit ``decrypt`` under the *reveal* policy, exactly as a
transit ciphertext was decrypted before, and keeps the unwrapped key for ``unwrapped_seconds``
(default 60 s, at most ``unwrapped_max`` keys, cached per transit key and wrapped form) so
payments on cards sealed under one key do not each pay a Vault round trip. A process never puts a
key it sealed with into its reveal cache: a gateway whose Vault role may not decrypt cannot
reveal what it tokenized. Keys past their lifetime are dropped when next looked at and by
``purge()`` (the gateway's sweeper, every ``sweep_interval_seconds``); Python cannot overwrite
the memory they were in. What changes against plain transit:

- OpenBao's audit device records one ``datakey`` per process, tenant and key lifetime and one
  ``decrypt`` per data key and cache lifetime, not one entry per card. Every reveal is still
  recorded, before it happens, in Tessera's hash-chained audit log (``vault.audit``), which is
  where per-card access is read.
- Someone who can read a gateway process's memory gets the keys it holds: the cards sealed
  under its current sealing keys and those revealed within ``unwrapped_seconds``. Someone who can
  read that memory can also use the process's Vault token to decrypt anything its role may
  decrypt, so what the lifetimes bound is how long such access lasts, not a new class of it.
- Rotation (``tessera keys rotate``) rewraps the data key inside each stored ciphertext (once per
  distinct wrapped form in a batch of rows) instead of the card, and raising
  ``min_decryption_version`` makes every wrapped form under the old versions useless. **It does
  not retire the data keys themselves**, as in any envelope scheme: the sealed payload is not
  re-encrypted. A payload from a backup, or of a token deleted since, can therefore still be
  opened by someone who can *also* decrypt under the reveal policy today, using the current
  wrapping of the same data key, for as long as any card sealed under that key is stored. With
  transit encryption, raising ``min_decryption_version`` made such copies useless and deleting a
  token destroyed its only decryptable ciphertext. Deployments that rely on rotation or deletion
  as crypto-shredding (a suspected compromise of old backups, erasure duties) should run with
  ``encryption = "transit"``; envelope ciphertexts already stored stay revealable either way.

A transit ciphertext (``vault:v…``) and an envelope one are both opened by the same code, so a
store may hold both, and a gateway can switch between the modes at any time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from normalization import VaultError, VaultPermissionDeniedError

__all__ = [
    "ENVELOPE_PREFIX",
    "DataKeySource",
    "EnvelopeCipher",
    "KeyUnwrapper",
    "is_envelope",
    "join_envelope",
    "split_envelope",
]

ENVELOPE_PREFIX = "env:"
_NONCE_BYTES = 12
#: AES-GCM with random 96-bit nonces stays far inside NIST SP 800-38D's 2**32 messages per key.
DEFAULT_MAX_USES = 1 << 24
#: How long a datakey refusal (the tokenize policy predates envelope encryption) keeps a process
#: on transit encryption before it asks again.
DENIED_RETRY_SECONDS = 60.0

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_Name = TypeVar("_Name", str, tuple[str, str])


class DataKeySource(Protocol):
    """``vault.client.VaultClient``: a fresh data key, in clear and wrapped under ``key``."""

    async def transit_datakey(self, key: str, *, bits: int = 256) -> tuple[bytes, str]: ...


class KeyUnwrapper(Protocol):
    """``vault.batcher.TransitBatcher``: transit decrypt (batched with concurrent reveals)."""

    async def decrypt(self, key: str, ciphertext: str) -> bytes: ...


def is_envelope(ciphertext: str) -> bool:
    return ciphertext.startswith(ENVELOPE_PREFIX)


def split_envelope(ciphertext: str) -> tuple[str, str]:
    """``env:<wrapped>:<body>`` -> ``(wrapped, body)``; ``ValueError`` if it is not one."""
    if not ciphertext.startswith(ENVELOPE_PREFIX):
        raise ValueError("Not an envelope ciphertext.")
    wrapped, separator, body = ciphertext[len(ENVELOPE_PREFIX) :].rpartition(":")
    if not separator or not body or not wrapped.startswith("vault:v") or wrapped.count(":") != 2:
        raise ValueError("Not an envelope ciphertext.")
    return wrapped, body


def join_envelope(wrapped: str, body: str) -> str:
    return f"{ENVELOPE_PREFIX}{wrapped}:{body}"


class _SealingKey:
    __slots__ = ("aad", "aead", "born", "prefix", "uses")

    def __init__(self, aead: AESGCM, key: str, wrapped: str, born: float) -> None:
        self.aead = aead
        self.aad = key.encode()
        self.prefix = f"{ENVELOPE_PREFIX}{wrapped}:"
        self.born = born
        self.uses = 0


class EnvelopeCipher:
    """Seal payloads under per-key data keys; open envelope ciphertexts (see module doc).

    ``source`` None: this cipher only opens (a gateway in transit mode still reveals the
    envelope ciphertexts an earlier configuration wrote).
    """

    def __init__(
        self,
        source: DataKeySource | None,
        unwrapper: KeyUnwrapper,
        *,
        key_seconds: float = 10.0,
        max_uses: int = DEFAULT_MAX_USES,
        unwrapped_seconds: float = 60.0,
        unwrapped_max: int = 1024,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if key_seconds <= 0 or max_uses < 1 or unwrapped_seconds < 0 or unwrapped_max < 1:
            raise ValueError("key lifetimes and limits must be positive.")
        self._source = source
        self._unwrapper = unwrapper
        self._key_seconds = key_seconds
        self._max_uses = max_uses
        self._unwrapped_seconds = unwrapped_seconds
        self._unwrapped_max = unwrapped_max
        self._monotonic = monotonic
        self._sealing: dict[str, _SealingKey] = {}
        self._fetching: dict[str, asyncio.Future[_SealingKey]] = {}
        self._denied_until: dict[str, float] = {}
        # Keyed by (transit key, wrapped form): a wrapped key stored in another tenant's row is
        # unwrapped (and refused) by Vault under that tenant's key, never served from here.
        self._unwrapped: OrderedDict[tuple[str, str], tuple[AESGCM, float]] = OrderedDict()
        self._unwrapping: dict[tuple[str, str], asyncio.Future[AESGCM]] = {}
        self.data_keys_fetched = 0
        """Data keys fetched from transit so far (sealing)."""
        self.data_keys_unwrapped = 0
        """Wrapped data keys sent to transit decrypt so far (revealing)."""

    def __repr__(self) -> str:
        return (
            f"EnvelopeCipher(sealing={self._source is not None}, key_seconds={self._key_seconds},"
            f" fetched={self.data_keys_fetched}, unwrapped={self.data_keys_unwrapped})"
        )

    # -- sealing --------------------------------------------------------------------------------

    def may_seal(self, key: str) -> bool:
        """Whether to seal under ``key`` now: a source is set and transit did not recently refuse
        this process a data key (then the caller encrypts with transit instead)."""
        if self._source is None:
            return False
        until = self._denied_until.get(key)
        if until is None:
            return True
        if self._monotonic() >= until:
            del self._denied_until[key]
            return True
        return False

    def seal_now(self, key: str, payload: bytes) -> str | None:
        """Seal with the current data key if one is fresh; ``None`` means await ``seal``."""
        sealing = self._sealing.get(key)
        if sealing is None:
            return None
        if not self._fresh(sealing):
            del self._sealing[key]  # not kept past its lifetime while the next one is fetched
            return None
        return self._seal_with(sealing, payload)

    async def seal(self, key: str, payloads: Sequence[bytes]) -> list[str]:
        """Seal every payload under one data key (fetched first if none is fresh). Raises the
        ``VaultError`` of a failed fetch (``VaultPermissionDeniedError`` also marks ``key`` so
        ``may_seal`` says no for a while)."""
        sealing = self._sealing.get(key)
        if sealing is None or not self._fresh(sealing, len(payloads)):
            sealing = await self._fresh_key(key)
        return [self._seal_with(sealing, payload) for payload in payloads]

    def _fresh(self, sealing: _SealingKey, count: int = 1) -> bool:
        return (
            sealing.uses + count <= self._max_uses
            and self._monotonic() - sealing.born < self._key_seconds
        )

    def _seal_with(self, sealing: _SealingKey, payload: bytes) -> str:
        sealing.uses += 1
        nonce = os.urandom(_NONCE_BYTES)
        sealed = sealing.aead.encrypt(nonce, payload, sealing.aad)
        return sealing.prefix + base64.b64encode(nonce + sealed).decode()

    async def _fresh_key(self, key: str) -> _SealingKey:
        fetching = self._fetching.get(key)
        if fetching is None:
            # One fetch per key however many callers need it; its own task, so a cancelled
            # caller never cancels it for the others.
            fetching = asyncio.ensure_future(self._fetch(key))
            self._fetching[key] = fetching
            fetching.add_done_callback(lambda done: _settled(self._fetching, key, done))
        return await _shared(fetching)

    async def _fetch(self, key: str) -> _SealingKey:
        if self._source is None:  # may_seal() says no to every caller then
            raise VaultError("This process does not seal with envelope encryption.")
        try:
            plaintext, wrapped = await self._source.transit_datakey(key)
        except VaultPermissionDeniedError:
            self._denied_until[key] = self._monotonic() + DENIED_RETRY_SECONDS
            # The event is a name and the rest are fields (the gateway's JSON logs take a
            # stdlib record's ``extra``), so the line is found and read like structlog's.
            _log.warning(
                "envelope_datakey_denied",
                extra={
                    "key": key,
                    "transit_for_seconds": DENIED_RETRY_SECONDS,
                    "hint": "Vault refused this gateway a data key; it seals with transit "
                    "encrypt meanwhile. If the tokenize policy predates envelope encryption, "
                    "run 'tessera vault provision'; otherwise check the gateway's Vault "
                    "credentials.",
                },
            )
            raise
        self.data_keys_fetched += 1
        # The key must be right for AES-256: anything else is a broken Vault, not a card error.
        if len(plaintext) != 32 or not wrapped.startswith("vault:v"):
            raise VaultError("The vault returned an unusable data key.")
        sealing = _SealingKey(AESGCM(plaintext), key, wrapped, self._monotonic())
        self._sealing[key] = sealing
        return sealing

    # -- opening --------------------------------------------------------------------------------

    async def open(self, key: str, ciphertext: str) -> bytes:
        """The payload of an envelope ciphertext made under ``key``'s data keys. Raises
        ``VaultError`` (never with any of the payload in it) if it does not open."""
        try:
            wrapped, body = split_envelope(ciphertext)
            sealed = base64.b64decode(body, validate=True)
        except (ValueError, binascii.Error):
            raise VaultError("The stored card ciphertext is malformed.") from None
        aead = self._cached((key, wrapped))
        if aead is None:
            aead = await self._unwrap(key, wrapped)
        try:
            return aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], key.encode())
        except (InvalidTag, ValueError):
            raise VaultError("The stored card ciphertext does not decrypt.") from None

    def forget(self) -> None:
        """Drop every data key this process holds (on shutdown)."""
        self._sealing.clear()
        self._unwrapped.clear()

    def purge(self) -> None:
        """Drop sealing keys past their lifetime and unwrapped keys past theirs (the gateway's
        sweeper calls this; a tenant that stops tokenizing would otherwise keep its last one)."""
        now = self._monotonic()
        for key, sealing in list(self._sealing.items()):
            if now - sealing.born >= self._key_seconds or sealing.uses >= self._max_uses:
                del self._sealing[key]
        for name, (_, expires) in list(self._unwrapped.items()):
            if now >= expires:
                del self._unwrapped[name]

    def _cached(self, name: tuple[str, str]) -> AESGCM | None:
        entry = self._unwrapped.get(name)
        if entry is None:
            return None
        aead, expires = entry
        if self._monotonic() >= expires:
            del self._unwrapped[name]
            return None
        self._unwrapped.move_to_end(name)
        return aead

    async def _unwrap(self, key: str, wrapped: str) -> AESGCM:
        name = (key, wrapped)
        unwrapping = self._unwrapping.get(name)
        if unwrapping is None:
            unwrapping = asyncio.ensure_future(self._unwrap_once(key, wrapped))
            self._unwrapping[name] = unwrapping
            unwrapping.add_done_callback(lambda done: _settled(self._unwrapping, name, done))
        return await _shared(unwrapping)

    async def _unwrap_once(self, key: str, wrapped: str) -> AESGCM:
        plaintext = await self._unwrapper.decrypt(key, wrapped)
        self.data_keys_unwrapped += 1
        if len(plaintext) != 32:
            raise VaultError("The vault returned an unusable data key.")
        aead = AESGCM(plaintext)
        if self._unwrapped_seconds > 0:
            self._unwrapped[(key, wrapped)] = (aead, self._monotonic() + self._unwrapped_seconds)
            while len(self._unwrapped) > self._unwrapped_max:
                self._unwrapped.popitem(last=False)
        return aead


async def _shared(future: asyncio.Future[_T]) -> _T:
    """Await a fetch shared by several callers: cancelling this caller leaves it running for the
    others, and a failure is raised as a copy of its own (one exception object raised in many
    tasks would share, and keep growing, one traceback)."""
    try:
        return await asyncio.shield(future)
    except VaultError as exc:
        raise type(exc)(exc.detail, retry_after=exc.retry_after) from None


def _settled(
    pending: dict[_Name, asyncio.Future[_T]], name: _Name, done: asyncio.Future[_T]
) -> None:
    """A shared fetch ended: the next caller starts a new one, and a failure nobody awaited any
    more (every caller cancelled) is consumed rather than reported at garbage collection."""
    if pending.get(name) is done:
        del pending[name]
    if not done.cancelled():
        done.exception()
