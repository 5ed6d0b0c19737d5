"""``FakeTokenRevealer``: an in-memory ``TokenRevealer`` for connector tests, and canary cards.

Canary cards are unique, Luhn-valid test PANs (and CVCs) generated per test, so that a test can
search every transcript, log and exception for them and prove none of them leaked.
"""

from __future__ import annotations

import secrets

from normalization import CardNumber, CardSecurityCode, TokenNotFoundError
from sdk.revealer import RevealedCard

__all__ = ["FakeTokenRevealer", "canary_cvc", "canary_pan"]


def _luhn_check_digit(payload: str) -> str:
    total = 0
    for index, char in enumerate(reversed(payload)):
        digit = int(char)
        if index % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return str((10 - total % 10) % 10)


def canary_pan(prefix: str = "4", length: int = 16) -> str:
    """A random Luhn-valid PAN starting with ``prefix`` (Visa test range by default)."""
    body = prefix + "".join(str(secrets.randbelow(10)) for _ in range(length - len(prefix) - 1))
    return body + _luhn_check_digit(body)


def canary_cvc() -> str:
    """A random 3-digit CVC that does not start with 0 (so it survives int round trips)."""
    return str(secrets.randbelow(900) + 100)


class FakeTokenRevealer:
    """Tokens to cards, per tenant, in memory; every reveal is recorded in ``reveals``."""

    def __init__(self) -> None:
        self._cards: dict[tuple[str, str], RevealedCard] = {}
        self.reveals: list[tuple[str, str, str]] = []

    def add(
        self,
        tenant: str,
        number: str,
        *,
        cvc: str | None = None,
        exp_month: int = 12,
        exp_year: int = 2030,
        holder_name: str | None = None,
        token: str | None = None,
    ) -> str:
        """Store a card and return its token (``tok_`` + 24 random characters by default)."""
        token = token or f"tok_{secrets.token_hex(12)}"
        self._cards[(tenant, token)] = RevealedCard(
            number=CardNumber(number),
            cvc=CardSecurityCode(cvc) if cvc is not None else None,
            exp_month=exp_month,
            exp_year=exp_year,
            holder_name=holder_name,
        )
        return token

    async def reveal(self, tenant: str, token: str, *, purpose: str) -> RevealedCard:
        self.reveals.append((tenant, token, purpose))
        try:
            return self._cards[(tenant, token)]
        except KeyError:
            raise TokenNotFoundError() from None
