"""Payment methods: a discriminated union on ``type``.

- ``card``: a token reference (``{"type": "card", "token": "tok_..."}``, or a numeric token,
  which by construction fails Luhn) or inline card data to tokenize on the fly
  (``{"type": "card", "card": {...}}``).
- ``bank_account``: an IBAN (+ optional BIC), validated with schwifty; or a US account: ABA
  routing number with its check digit (python-stdnum), account number, checking/savings.
- ``open_banking``: a payer for a payment-initiation flow (scheme, creditor account, optional
  debtor account, return URL).
"""

from __future__ import annotations

import re
from datetime import date
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import Field, StrictInt, WrapValidator, field_validator, model_validator
from schwifty import BIC, IBAN
from schwifty.exceptions import SchwiftyException
from stdnum.us import rtn

from normalization.cards import (
    luhn_valid,
    validate_exp_month,
    validate_exp_year,
    validate_expiry,
)
from normalization.errors import InvalidBankAccountError, InvalidCardError, InvalidRequestError
from normalization.secrets import CardNumber, CardSecurityCode
from normalization.validation import DomainModel, reraise_for_pydantic, scrubbing_validator

__all__ = [
    "AccountIdentifier",
    "BankAccountMethod",
    "BankAccountType",
    "CardData",
    "CardMethod",
    "OpenBankingMethod",
    "OpenBankingScheme",
    "PaymentMethod",
    "PaymentMethodType",
    "validate_aba_routing_number",
    "validate_iban",
]

_TOKEN_RE = re.compile(r"(tok_[A-Za-z0-9]{16,64}|[0-9]{12,19})", re.ASCII)
_ROUTING_NUMBER_RE = re.compile(r"[0-9]{9}", re.ASCII)
_ACCOUNT_NUMBER_RE = re.compile(r"[0-9]{4,17}", re.ASCII)
_ANY_DIGIT_RE = re.compile(r"\d")  # any script: a PAN in Arabic-Indic digits is still a PAN
_MIN_PAN_LENGTH = 12
#: Control characters (NUL, newlines, escapes) and the bidirectional overrides and isolates that
#: make a name display as something else ("Trojan Source"): no holder's name contains them.
_UNNAMEABLE_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _check_name(value: str, error: type[InvalidRequestError], field: str) -> str:
    if _UNNAMEABLE_RE.search(value):
        raise error(f"{field} must not contain control or bidirectional-override characters.")
    return value


class PaymentMethodType(StrEnum):
    CARD = "card"
    BANK_ACCOUNT = "bank_account"
    OPEN_BANKING = "open_banking"


class CardData(DomainModel):
    """Inline card data. ``number`` and ``cvc`` are secret types; only a mask is ever shown."""

    number: CardNumber
    exp_month: StrictInt
    exp_year: StrictInt
    cvc: CardSecurityCode | None = None
    holder_name: Annotated[str | None, Field(max_length=200)] = None

    @field_validator("holder_name")
    @classmethod
    @reraise_for_pydantic
    def _check_holder_name(cls, value: str | None) -> str | None:
        # A name holds no card number; one typed into the wrong field would otherwise be shown
        # in clear by every repr, log line and serialization of this model.
        if value is None:
            return None
        if len(_ANY_DIGIT_RE.findall(value)) >= _MIN_PAN_LENGTH:
            raise InvalidCardError("holder_name must not contain a card number.")
        return _check_name(value, InvalidCardError, "holder_name")

    # Month and year are checked each on its own first, so an error names its field
    # (``card.exp_month``); whether the card has expired needs both, so it names the card.
    @field_validator("exp_month")
    @classmethod
    @reraise_for_pydantic
    def _check_exp_month(cls, value: int) -> int:
        return validate_exp_month(value)

    @field_validator("exp_year")
    @classmethod
    @reraise_for_pydantic
    def _check_exp_year(cls, value: int) -> int:
        return validate_exp_year(value)

    @model_validator(mode="after")
    @reraise_for_pydantic
    def _check_expiry(self) -> Self:
        validate_expiry(self.exp_month, self.exp_year)
        return self

    def is_expired(self, today: date) -> bool:
        return (self.exp_year, self.exp_month) < (today.year, today.month)


class CardMethod(DomainModel):
    """A card, by token (the normal case) or inline (tokenized by the gateway on the fly)."""

    type: Literal["card"] = "card"
    token: str | None = None
    card: CardData | None = None

    @field_validator("token")
    @classmethod
    @reraise_for_pydantic
    def _check_token(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if _TOKEN_RE.fullmatch(value) is None:
            raise InvalidRequestError("token must be a Tessera token such as 'tok_...'.")
        # Numeric (format-preserving) tokens are made to fail Luhn so that they can never be
        # mistaken for a PAN; a Luhn-valid number here is a card number in the wrong field,
        # and accepting it would put it into every repr and log line of this model.
        if value.isdigit() and luhn_valid(value):
            raise InvalidRequestError(
                "token looks like a card number; send card data as 'card', not 'token'."
            )
        return value

    @model_validator(mode="after")
    @reraise_for_pydantic
    def _one_source(self) -> Self:
        if (self.token is None) == (self.card is None):
            raise InvalidRequestError("A card payment method needs exactly one of token or card.")
        return self


class BankAccountType(StrEnum):
    CHECKING = "checking"
    SAVINGS = "savings"


def validate_iban(value: str) -> str:
    """Return the IBAN in compact form, or raise ``InvalidBankAccountError``."""
    try:
        return str(IBAN(value).compact)
    except (SchwiftyException, ValueError, TypeError):
        pass  # raised below, outside the handler: schwifty's message quotes the input
    raise InvalidBankAccountError("The IBAN is invalid (format or check digits).")


def validate_aba_routing_number(value: str) -> str:
    """Return a 9-digit ABA routing number whose check digit is right, or raise."""
    if (
        not isinstance(value, str)
        or _ROUTING_NUMBER_RE.fullmatch(value) is None
        or not rtn.is_valid(value)
    ):
        raise InvalidBankAccountError("The ABA routing number is invalid (9 digits, check digit).")
    return value


class BankAccountMethod(DomainModel):
    """A bank account: IBAN (+ optional BIC) or US routing number + account number + type."""

    type: Literal["bank_account"] = "bank_account"
    holder_name: Annotated[str, Field(min_length=1, max_length=200)]
    iban: str | None = None
    bic: str | None = None
    routing_number: str | None = None
    account_number: Annotated[str | None, Field(repr=False)] = None
    account_type: BankAccountType | None = None
    country: Annotated[str | None, Field(pattern=r"^[A-Z]{2}$")] = None

    @field_validator("holder_name")
    @classmethod
    @reraise_for_pydantic
    def _check_holder_name(cls, value: str) -> str:
        return _check_name(value, InvalidBankAccountError, "holder_name")

    @field_validator("iban")
    @classmethod
    @reraise_for_pydantic
    def _check_iban(cls, value: str | None) -> str | None:
        return None if value is None else validate_iban(value)

    @field_validator("bic")
    @classmethod
    @reraise_for_pydantic
    def _check_bic(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(BIC(value).compact)
        except (SchwiftyException, ValueError, TypeError):
            pass  # raised below, outside the handler: schwifty's message quotes the input
        raise InvalidBankAccountError("The BIC is invalid.")

    @field_validator("routing_number")
    @classmethod
    @reraise_for_pydantic
    def _check_routing(cls, value: str | None) -> str | None:
        return None if value is None else validate_aba_routing_number(value)

    @field_validator("account_number")
    @classmethod
    @reraise_for_pydantic
    def _check_account_number(cls, value: str | None) -> str | None:
        if value is not None and _ACCOUNT_NUMBER_RE.fullmatch(value) is None:
            raise InvalidBankAccountError("account_number must be 4-17 ASCII digits.")
        return value

    @model_validator(mode="after")
    @reraise_for_pydantic
    def _one_scheme(self) -> Self:
        us_fields = (self.routing_number, self.account_number, self.account_type)
        if self.iban is not None:
            if any(f is not None for f in us_fields):
                raise InvalidBankAccountError("Give an IBAN or US account details, not both.")
        elif any(f is None for f in us_fields):
            raise InvalidBankAccountError(
                "A bank account needs an iban, or routing_number + account_number + account_type."
            )
        elif self.bic is not None:
            raise InvalidBankAccountError("A BIC goes with an IBAN.")
        return self

    @property
    def is_us(self) -> bool:
        return self.routing_number is not None

    @property
    def masked_account(self) -> str:
        number = self.iban or self.account_number or ""
        return "*" * max(len(number) - 4, 0) + number[-4:]


class OpenBankingScheme(StrEnum):
    UK_OPEN_BANKING = "uk_open_banking"
    BERLIN_GROUP = "berlin_group"


class AccountIdentifier(DomainModel):
    """An account as open-banking APIs name it (e.g. ``UK.OBIE.SortCodeAccountNumber``)."""

    scheme_name: Annotated[str, Field(min_length=1, max_length=40)]
    identification: Annotated[str, Field(min_length=1, max_length=256)]
    name: Annotated[str | None, Field(max_length=350)] = None


class OpenBankingMethod(DomainModel):
    """The payer in an open-banking payment initiation."""

    type: Literal["open_banking"] = "open_banking"
    scheme: OpenBankingScheme = OpenBankingScheme.UK_OPEN_BANKING
    creditor_account: AccountIdentifier
    debtor_account: AccountIdentifier | None = None
    return_url: Annotated[str | None, Field(pattern=r"^https?://", max_length=2048)] = None


PaymentMethod = Annotated[
    CardMethod | BankAccountMethod | OpenBankingMethod,
    Field(discriminator="type"),
    WrapValidator(scrubbing_validator),
]
"""Any payment method, chosen by ``type``; validation errors never carry the input."""
