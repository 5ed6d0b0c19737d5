"""Money: integer minor units plus an ISO 4217 currency code.

Exponents (decimal places) come from the ``iso4217`` package, the maintained ISO 4217 data set,
rather than a hand-typed table: JPY and KRW have 0, KWD, BHD and JOD 3, CLF 4. Floats are rejected
everywhere; conversions to and from provider representations (major-unit decimal strings,
minor-unit integers under a provider's own exponent) are exact or fail loudly.
"""

from __future__ import annotations

import re
from decimal import Decimal
from functools import total_ordering
from typing import Annotated, Any, Self, cast

from iso4217 import Currency
from pydantic import BaseModel, ConfigDict, Field, field_validator

from normalization.errors import CurrencyMismatchError, InvalidAmountError, UnknownCurrencyError
from normalization.validation import DomainModel, reraise_for_pydantic

__all__ = [
    "MAX_AMOUNT_MINOR",
    "MAX_PROVIDER_EXPONENT",
    "Money",
    "currency_exponent",
    "known_currencies",
]

#: The largest amount in minor units: 2**53 - 1, so an amount survives any JSON consumer,
#: including JavaScript ones, without rounding.
MAX_AMOUNT_MINOR = 2**53 - 1

# ISO 4217 codes with a defined exponent. Funds codes like XAU (gold) or XDR have none: nobody
# pays in them, so they are unknown here.
_EXPONENTS: dict[str, int] = {c.code: c.exponent for c in Currency if c.exponent is not None}
_MAJOR_RE = re.compile(r"(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]+))?", re.ASCII)
# Only something shaped like a currency code is echoed back in an error: the value could be
# anything, a card number included.
_ECHOABLE_CODE_RE = re.compile(r"[A-Za-z]{1,8}", re.ASCII)
#: Provider exponents Tessera converts to and from (ISO uses 0-4; nobody needs more than 18).
MAX_PROVIDER_EXPONENT = 18


def _pow10(n: int) -> int:
    result: int = 10**n
    return result


def known_currencies() -> frozenset[str]:
    """Every ISO 4217 currency code Tessera accepts."""
    return frozenset(_EXPONENTS)


def currency_exponent(currency: str) -> int:
    """The ISO 4217 exponent of ``currency`` (JPY 0, EUR 2, KWD 3, CLF 4)."""
    # No try/except KeyError: the KeyError would hold the value, and an exception raised while
    # handling it keeps it as __context__ even with ``from None`` (the value may be a PAN).
    exponent = _EXPONENTS.get(currency) if isinstance(currency, str) else None
    if exponent is None:
        raise UnknownCurrencyError(
            f"Unknown currency{_printable(currency)}: expected an ISO 4217 code such as EUR."
        )
    return exponent


def _printable(value: object) -> str:
    if isinstance(value, str) and _ECHOABLE_CODE_RE.fullmatch(value):
        return f" {value!r}"
    return ""


def _check_exponent(exponent: object) -> int:
    if (
        isinstance(exponent, bool)
        or not isinstance(exponent, int)
        or not 0 <= exponent <= MAX_PROVIDER_EXPONENT
    ):
        raise InvalidAmountError(
            f"A provider exponent is an integer from 0 to {MAX_PROVIDER_EXPONENT}."
        )
    return exponent


def _check_amount(value: object) -> int:
    # bool is an int subclass and float is never exact: both are refused explicitly.
    if isinstance(value, float) and value.is_integer() and value > MAX_AMOUNT_MINOR:
        # A JSON integer past 64 bits arrives as a float (orjson): it is too large, not a float.
        raise InvalidAmountError(f"Amounts cannot exceed {MAX_AMOUNT_MINOR} minor units.")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAmountError(
            "Amounts are integers in minor units (e.g. 1050 for EUR 10.50); "
            f"got {type(value).__name__}."
        )
    if value < 0:
        raise InvalidAmountError("Amounts cannot be negative.")
    if value > MAX_AMOUNT_MINOR:
        raise InvalidAmountError(f"Amounts cannot exceed {MAX_AMOUNT_MINOR} minor units.")
    return value


@total_ordering
class Money(DomainModel):
    """An exact amount: ``value`` in minor units (cents, yen, fils) and a currency code.

    On the wire it is ``{"value": 1050, "currency": "EUR"}``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, hide_input_in_errors=True)

    value: Annotated[int, Field(description="Amount in minor units of the currency.")]
    currency: Annotated[str, Field(description="ISO 4217 alphabetic code.")]

    def __init__(self, value: int, currency: str, **kwargs: Any) -> None:
        # BaseModel's own __init__ (DomainModel adds none): it takes the fields as keywords.
        BaseModel.__init__(self, value=value, currency=currency, **kwargs)

    # A positional convenience only. Without this mark pydantic treats the __init__ as custom
    # and calls it for every validation (model_validate, JSON, nested in a request), so a
    # missing field raised TypeError instead of a ValidationError. RootModel does the same.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @field_validator("value", mode="before")
    @classmethod
    @reraise_for_pydantic
    def _validate_value(cls, value: object) -> int:
        return _check_amount(value)

    @field_validator("currency", mode="before")
    @classmethod
    @reraise_for_pydantic
    def _validate_currency(cls, value: object) -> str:
        if not isinstance(value, str):
            raise UnknownCurrencyError("The currency must be a string such as 'EUR'.")
        currency_exponent(value)
        return value

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def of(cls, value: int, currency: str) -> Self:
        """Build from minor units, raising Tessera errors (not pydantic ones) on bad input."""
        _check_amount(value)
        currency_exponent(currency)
        return cast(Self, cls.model_construct(value=value, currency=currency))

    @classmethod
    def zero(cls, currency: str) -> Self:
        return cls.of(0, currency)

    @classmethod
    def from_major(cls, amount: str | Decimal, currency: str) -> Self:
        """Parse a major-unit decimal (``"10.50"``) exactly; floats are refused.

        Trailing zeros beyond the exponent are accepted (``"10.500"`` EUR); any other extra
        precision is an error, never rounded.
        """
        exponent = currency_exponent(currency)
        if isinstance(amount, Decimal):
            if not amount.is_finite():
                raise InvalidAmountError("The amount must be a finite number.")
            text = format(amount, "f")
        elif isinstance(amount, str):
            text = amount
        else:
            raise InvalidAmountError(
                f"Major-unit amounts are decimal strings; got {type(amount).__name__}."
            )
        match = _MAJOR_RE.fullmatch(text)
        if match is None:
            raise InvalidAmountError(
                "The amount must be a plain non-negative decimal such as '10.50'."
            )
        whole = match["int"].lstrip("0")
        if len(whole) > len(str(MAX_AMOUNT_MINOR)):
            # int() refuses strings over 4,300 digits with a ValueError; fail before, cleanly.
            raise InvalidAmountError(f"Amounts cannot exceed {MAX_AMOUNT_MINOR} minor units.")
        frac = (match["frac"] or "").rstrip("0")
        if len(frac) > exponent:
            raise InvalidAmountError(
                f"{currency} has {exponent} decimal places; the amount has more."
            )
        minor = int(whole or "0") * _pow10(exponent) + int(frac.ljust(exponent, "0") or "0")
        return cls.of(minor, currency)

    @classmethod
    def from_provider_minor(cls, value: int, currency: str, exponent: int) -> Self:
        """Read a provider's minor-unit integer expressed with the provider's ``exponent``."""
        iso = currency_exponent(currency)
        # Type and sign only: above the ISO exponent the provider's figure may exceed
        # MAX_AMOUNT_MINOR while the amount itself does not; Money.of checks the result.
        if isinstance(value, bool) or not isinstance(value, int):
            _check_amount(value)
        if value < 0:
            raise InvalidAmountError("Amounts cannot be negative.")
        _check_exponent(exponent)
        if exponent >= iso:
            factor = _pow10(exponent - iso)
            if value % factor:
                raise InvalidAmountError(
                    f"{value} at exponent {exponent} is not an exact {currency} amount."
                )
            return cls.of(value // factor, currency)
        return cls.of(value * _pow10(iso - exponent), currency)

    # -- representations ------------------------------------------------------------------------

    @property
    def amount_minor(self) -> int:
        return self.value

    @property
    def exponent(self) -> int:
        return currency_exponent(self.currency)

    def to_major_string(self) -> str:
        """The amount as a major-unit decimal string: ``"10.50"``, ``"1050"`` (JPY)."""
        exponent = self.exponent
        if exponent == 0:
            return str(self.value)
        whole, frac = divmod(self.value, _pow10(exponent))
        return f"{whole}.{frac:0{exponent}d}"

    def to_decimal(self) -> Decimal:
        return Decimal(self.value).scaleb(-self.exponent)

    def to_provider_minor(self, exponent: int | None = None) -> int:
        """Minor units under a provider's ``exponent`` (default: the ISO one).

        A provider that treats a currency with fewer decimals than ISO (e.g. HUF as 0-decimal)
        can only receive amounts that are exact in its representation; anything else raises.
        """
        iso = self.exponent
        if exponent is None:
            return self.value
        _check_exponent(exponent)
        if exponent == iso:
            return self.value
        if exponent > iso:
            return self.value * _pow10(exponent - iso)
        factor = _pow10(iso - exponent)
        if self.value % factor:
            raise InvalidAmountError(
                f"{self.to_major_string()} {self.currency} cannot be expressed with "
                f"{exponent} decimal places."
            )
        return self.value // factor

    # -- arithmetic ------------------------------------------------------------------------------

    def _same_currency(self, other: Money) -> None:
        if other.currency != self.currency:
            raise CurrencyMismatchError(
                f"Cannot combine {self.currency} and {other.currency} amounts."
            )

    def __add__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other)
        return Money.of(self.value + other.value, self.currency)

    def __sub__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other)
        if other.value > self.value:
            raise InvalidAmountError("The result would be negative.")
        return Money.of(self.value - other.value, self.currency)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other)
        return self.value < other.value

    def __str__(self) -> str:
        return f"{self.to_major_string()} {self.currency}"

    def __repr__(self) -> str:
        return f"Money({self.value}, {self.currency!r})"
