"""The seam through which card data reaches the SDK: the ``TokenRevealer`` protocol.

The vault package implements it (decrypting a token's record through OpenBao, auditing the
reveal); the gateway injects that implementation into each connector runtime; the SDK's egress
transport is its only caller, at send time, so connector code never holds a PAN or CVV.
``sdk.testing.FakeTokenRevealer`` is an in-memory implementation for tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from normalization import CardNumber, CardSecurityCode

__all__ = ["RevealedCard", "TokenRevealer"]


@dataclass(frozen=True, slots=True)
class RevealedCard:
    """The card data behind a token. ``number`` and ``cvc`` only ever show a mask."""

    number: CardNumber
    cvc: CardSecurityCode | None
    exp_month: int
    exp_year: int
    holder_name: str | None = None


@runtime_checkable
class TokenRevealer(Protocol):
    """Turns a token into card data, for one tenant and one stated purpose.

    Implementations raise ``normalization.TokenNotFoundError`` for an unknown token (or one of
    another tenant) and a ``VaultError`` when the vault cannot answer. ``purpose`` is recorded in
    the audit log (for example ``"egress:stripe:authorize"``).
    """

    async def reveal(self, tenant: str, token: str, *, purpose: str) -> RevealedCard: ...
