"""The CVV holder: card security codes held in process memory only, for one authorization.

PCI DSS forbids storing sensitive authentication data after authorization (3.3.1.2), and Tessera
never writes a CVV to a disk, a database or a log. Between tokenization and the first
authorization the code lives here, as a ``CardSecurityCode`` (whose ``repr``/``str`` show a mask
and which refuses to be pickled), keyed by ``(tenant, token id)``:

- ``take`` consumes it: the first authorization gets it, later ones get ``None``.
- Every entry expires after ``ttl_seconds`` (default 600 s); expired entries are swept on each
  ``put``/``take`` (amortised O(1): entries expire in insertion order) and by ``sweep()``.
- The holder is bounded (``max_entries``); when full, the oldest entries are dropped first.
  Losing a CVV only means the authorization goes without it (or the shopper re-enters it).

**Several gateway processes.** The holder is per process: a CVV tokenized by process A is not
visible to process B. Two ways to live with that:

1. *Sticky routing* (what this module supports): the load balancer sends a merchant's
   tokenize and the authorization that follows (within the TTL) to the same process, e.g. by
   hashing the token id or the merchant key; a miss degrades to an authorization without CVV.
2. *Encrypted, short-lived, shared*: encrypt the CVV under a dedicated transit key whose
   versions rotate every TTL (or a per-window derived key), store the ciphertext in a shared
   table with an expiry, delete it when consumed, and trim old key versions by raising
   ``min_decryption_version``, so a stolen row becomes undecryptable after the window. It costs
   one more Vault call on tokenize and authorize and puts (encrypted) SAD in a database, which
   many assessors question; hence the in-memory default here.

A process restart loses every held CVV, by design.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NoReturn

from normalization import CardSecurityCode

__all__ = ["DEFAULT_CVV_TTL_SECONDS", "CvvHolder"]

DEFAULT_CVV_TTL_SECONDS = 600.0

_Key = tuple[str, str]


class CvvHolder:
    """In-memory, TTL-bound, consume-once storage of card security codes."""

    __slots__ = ("_entries", "_max_entries", "_monotonic", "_ttl")

    def __init__(
        self,
        *,
        ttl_seconds: float = DEFAULT_CVV_TTL_SECONDS,
        max_entries: int = 100_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_seconds <= 0 or max_entries <= 0:
            raise ValueError("ttl_seconds and max_entries must be positive.")
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._monotonic = monotonic
        # (tenant, token id) -> (deadline, code); insertion order is deadline order because
        # the TTL is fixed and ``put`` moves a replaced entry to the end.
        self._entries: OrderedDict[_Key, tuple[float, CardSecurityCode]] = OrderedDict()

    def put(self, tenant: str, token_id: str, cvc: CardSecurityCode) -> None:
        """Hold ``cvc`` for the token until it is taken or expires (replacing an older one)."""
        now = self._monotonic()
        self._sweep(now)
        key = (tenant, token_id)
        self._entries[key] = (now + self._ttl, cvc)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def take(self, tenant: str, token_id: str) -> CardSecurityCode | None:
        """Remove and return the token's CVV if one is held and fresh; else ``None``."""
        now = self._monotonic()
        self._sweep(now)
        entry = self._entries.pop((tenant, token_id), None)
        if entry is None or entry[0] <= now:
            return None
        return entry[1]

    def holds(self, tenant: str, token_id: str) -> bool:
        """Whether a fresh CVV is held for the token (without consuming it)."""
        entry = self._entries.get((tenant, token_id))
        return entry is not None and entry[0] > self._monotonic()

    def discard(self, tenant: str, token_id: str) -> None:
        """Forget the token's CVV, if any (the token was deleted)."""
        self._entries.pop((tenant, token_id), None)

    def sweep(self) -> int:
        """Drop expired entries; return how many."""
        return self._sweep(self._monotonic())

    def _sweep(self, now: float) -> int:
        dropped = 0
        entries = self._entries
        while entries:
            key, (deadline, _) = next(iter(entries.items()))
            if deadline > now:
                break
            del entries[key]
            dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"CvvHolder(entries={len(self._entries)}, ttl_seconds={self._ttl})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("CvvHolder cannot be pickled: it holds card security codes.")
