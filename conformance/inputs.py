"""Scenario inputs: abstract names resolved to the sandbox profile's magic values, or defaults.

Scenarios ask for inputs by name (``card.approved``, ``card.declined.insufficient_funds``,
``bank.account.returned``, ``consent.approve``, ...). ``Inputs`` looks each up in the sandbox
profile; a few have defaults that work with any provider (an approved card is the run's canary
card, a valid IBAN is a well-known test IBAN). An input with neither is a reason to skip the
scenario, said in the report ("no magic value for ... in the sandbox profile"). ``card.canary``
is the leak probe's card: the canary, unless a provider that cannot take an arbitrary valid PAN
maps it.

Cards become tokens in the run's fake vault (``FakeTokenRevealer``) unless a scenario asks for
inline card data; every PAN handed out is registered with the leak scanner.

``INPUT_KEYS`` is the vocabulary: every input a scenario asks for, and the keys each takes. A
sandbox profile mapping anything else (a typo such as ``card.declined.insuficient_funds``, or
``nubmer`` for ``number``) does not load (``input_problems`` says what is wrong): the value would
otherwise be ignored, and the scenario silently run with a default card or skipped.
"""

from __future__ import annotations

import difflib
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from conformance.leaks import LeakScanner
from normalization import (
    AccountIdentifier,
    BankAccountMethod,
    CardData,
    CardMethod,
    CardNumber,
    CardSecurityCode,
    DeclineCode,
    Money,
    OpenBankingMethod,
    redact_card_text,
)
from sdk import Manifest
from sdk.testing import FakeTokenRevealer

if TYPE_CHECKING:
    # Only a type here: ``conformance.sandboxes`` checks profiles against ``INPUT_KEYS``.
    from conformance.sandboxes import SandboxProfile

__all__ = [
    "DECLINE_CODES",
    "INPUT_KEYS",
    "OPTIONAL_DECLINE_CODES",
    "TENANT",
    "Canary",
    "Inputs",
    "MissingInputError",
    "input_problems",
]

TENANT = "conformance"
RETURN_URL = "https://merchant.example/return"
_PREFERRED_CURRENCIES = ("EUR", "USD", "GBP")
_DEFAULTS: dict[str, dict[str, Any]] = {
    "bank.account.valid": {"iban": "DE89370400440532013000", "holder_name": "Conformance Payee"},
    "bank.account.invalid": {"iban": "DE89370400440532013001", "holder_name": "Bad Checksum"},
    "open_banking.payer": {
        "creditor": {
            "scheme_name": "UK.OBIE.SortCodeAccountNumber",
            "identification": "08080021325698",
            "name": "Conformance Ltd",
        }
    },
}

#: The decline codes the card profile's ``card.authorize.declined`` scenario always asks inputs
#: for (CONFORMANCE.md's baseline).
DECLINE_CODES = ("insufficient_funds", "do_not_honor", "expired_card", "incorrect_cvc")
#: Every other normalized code a card issuer or acquirer can decline with:
#: ``card.authorize.declined[<code>]`` also runs for each one the sandbox profile gives a
#: ``card.declined.<code>`` input (a magic card) for. (The bank and open-banking codes, and
#: ``invalid_request``, are not card declines.)
OPTIONAL_DECLINE_CODES = tuple(
    code.value
    for code in DeclineCode
    if code.value not in DECLINE_CODES
    and code
    not in {
        DeclineCode.INVALID_ACCOUNT,
        DeclineCode.ACCOUNT_CLOSED,
        DeclineCode.CONSENT_REJECTED,
        DeclineCode.CONSENT_EXPIRED,
        DeclineCode.PAYMENT_RETURNED,
        DeclineCode.INVALID_REQUEST,
    }
)

#: What the customer's browser sends to a redirect page (3-D Secure challenge, bank consent).
_RECIPE_KEYS = frozenset({"method", "query", "form"})
#: A card, and what to pay with it.
_CARD_KEYS = frozenset(
    {"number", "cvc", "exp_month", "exp_year", "holder_name", "amount", "currency"}
)
#: A bank account: exactly the fields of ``BankAccountMethod`` (anything else fails it).
_BANK_KEYS = frozenset(BankAccountMethod.model_fields) - {"type"}
#: An open-banking payer, and what it pays.
_PAYER_KEYS = frozenset({"creditor", "debtor", "return_url", "amount", "currency"})

#: Every input a scenario asks for, and the keys a sandbox profile may give it.
INPUT_KEYS: Mapping[str, frozenset[str]] = {
    "card.approved": _CARD_KEYS,
    "card.canary": _CARD_KEYS,
    **{f"card.declined.{code}": _CARD_KEYS for code in DECLINE_CODES + OPTIONAL_DECLINE_CODES},
    "card.requires_3ds": _CARD_KEYS | {"challenge"},
    "currency.roundtrip": frozenset({"amounts"}),
    "bank.account.valid": _BANK_KEYS,
    "bank.account.invalid": _BANK_KEYS,
    "bank.account.returned": _BANK_KEYS,
    "open_banking.payer": _PAYER_KEYS,
    "consent.approve": _RECIPE_KEYS,
    "consent.reject": _RECIPE_KEYS,
    "consent.expired": _PAYER_KEYS,
}
#: Keys whose value is itself a customer recipe.
_NESTED_KEYS: Mapping[str, frozenset[str]] = {"challenge": _RECIPE_KEYS}


def _did_you_mean(name: str, choices: frozenset[str] | Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def input_problems(inputs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What is wrong with a sandbox profile's ``inputs``: each input no scenario asks for, and
    each key its input does not take, naming it and what is allowed. Empty when all is well.
    Card numbers are masked (a PAN pasted where a key belongs must not reach an error)."""
    problems: list[str] = []
    for name, values in inputs.items():
        allowed = INPUT_KEYS.get(name)
        if allowed is None:
            problems.append(
                f"unknown input {name!r}{_did_you_mean(name, INPUT_KEYS)}; the inputs scenarios "
                f"ask for are: {', '.join(sorted(INPUT_KEYS))}"
            )
            continue
        for key, value in values.items():
            if key not in allowed:
                problems.append(
                    f"input {name!r} has unknown key {key!r}{_did_you_mean(key, allowed)}; "
                    f"it takes: {', '.join(sorted(allowed))}"
                )
            elif key in _NESTED_KEYS and isinstance(value, Mapping):
                nested = _NESTED_KEYS[key]
                problems.extend(
                    f"input {name!r} has unknown key '{key}.{inner}'"
                    f"{_did_you_mean(inner, nested)}; {key} takes: {', '.join(sorted(nested))}"
                    for inner in value
                    if inner not in nested
                )
    return [redact_card_text(problem) for problem in problems]


class MissingInputError(LookupError):
    """The sandbox profile maps no magic value to an input a scenario needs: ``name``, read
    from ``files`` (the report lists the scenarios skipped for want of each input)."""

    def __init__(self, name: str, files: Sequence[str] = ()) -> None:
        super().__init__(
            f"no magic value for {name!r} in the sandbox profile "
            f"({', '.join(files) or 'no profile file'})"
        )
        self.name = name


class Canary:
    """The run's canary card: a fresh Luhn-valid PAN and CVC nobody else uses."""

    def __init__(self, pan: str, cvc: str) -> None:
        self.pan = pan
        self.cvc = cvc

    def __repr__(self) -> str:
        return "Canary(<hidden>)"


class Inputs:
    """Resolves scenario inputs for one run; see the module docstring."""

    def __init__(
        self,
        profile: SandboxProfile,
        manifest: Manifest,
        revealer: FakeTokenRevealer,
        canary: Canary,
        scanner: LeakScanner,
    ) -> None:
        self.profile = profile
        self.manifest = manifest
        self.revealer = revealer
        self.canary = canary
        self.scanner = scanner

    def get(self, name: str) -> dict[str, Any] | None:
        found = self.profile.input(name)
        if found is not None:
            return found
        default = _DEFAULTS.get(name)
        return dict(default) if default is not None else None

    def require(self, name: str) -> dict[str, Any]:
        found = self.get(name)
        if found is None:
            raise MissingInputError(name, self.profile.files)
        return found

    # -- money ----------------------------------------------------------------------------------

    def currency(self) -> str:
        for currency in _PREFERRED_CURRENCIES:
            if currency in self.manifest.currencies:
                return currency
        return sorted(self.manifest.currencies)[0]

    def money(
        self, name: str | None = None, *, value: int = 1050, currency: str | None = None
    ) -> Money:
        values = self.get(name) if name else None
        values = values or {}
        return Money(
            int(values.get("amount", value)),
            str(values.get("currency", currency or self.currency())),
        )

    def unsupported_currency(self) -> str | None:
        for candidate in ("XOF", "ISK", "MNT", "PYG", "VND", "UZS", "ZMW", "EUR", "USD"):
            if candidate not in self.manifest.currencies:
                return candidate
        return None

    # -- cards ----------------------------------------------------------------------------------

    def card_values(self, name: str) -> dict[str, Any]:
        values = self.get(name)
        if values is None:
            if name not in ("card.approved", "card.canary"):
                raise MissingInputError(name, self.profile.files)
            values = {}
        next_year = datetime.now(UTC).year + 3
        number = str(values.get("number", self.canary.pan))
        return {
            "number": number,
            "cvc": str(values.get("cvc", self.canary.cvc)),
            "exp_month": int(values.get("exp_month", 12)),
            "exp_year": int(values.get("exp_year", next_year)),
            "holder_name": values.get("holder_name"),
            **{k: v for k, v in values.items() if k not in ("number", "cvc")},
        }

    def card(self, name: str = "card.approved", *, inline: bool = False) -> CardMethod:
        """A card payment method for input ``name``: a token in the run's fake vault, or
        inline card data (``inline``)."""
        values = self.card_values(name)
        number = values["number"]
        label = "canary PAN" if number == self.canary.pan else f"test PAN ({name})"
        self.scanner.add(label, number, "pan")
        if values["cvc"] == self.canary.cvc:
            self.scanner.add("canary CVC", values["cvc"], "cvc")
        if inline:
            return CardMethod(
                card=CardData(
                    number=CardNumber(number),
                    exp_month=values["exp_month"],
                    exp_year=values["exp_year"],
                    cvc=CardSecurityCode(values["cvc"]),
                    holder_name=values.get("holder_name") or "Conformance Canary",
                )
            )
        token = self.revealer.add(
            TENANT,
            number,
            cvc=values["cvc"],
            exp_month=values["exp_month"],
            exp_year=values["exp_year"],
            # As the inline card: a connector that sends the cardholder's name finds one.
            holder_name=values.get("holder_name") or "Conformance Canary",
        )
        return CardMethod(token=token)

    # -- bank accounts and payers ---------------------------------------------------------------

    def bank_account(self, name: str = "bank.account.valid") -> BankAccountMethod:
        values = self.require(name)
        return BankAccountMethod.model_validate({"holder_name": "Conformance Payee", **values})

    def payer(self, name: str = "open_banking.payer") -> OpenBankingMethod:
        values = self.require(name)
        creditor = values.get("creditor") or _DEFAULTS["open_banking.payer"]["creditor"]
        debtor = values.get("debtor")
        return OpenBankingMethod(
            creditor_account=AccountIdentifier.model_validate(creditor),
            debtor_account=AccountIdentifier.model_validate(debtor) if debtor else None,
            return_url=values.get("return_url", RETURN_URL),
        )

    # -- identifiers ----------------------------------------------------------------------------

    @staticmethod
    def reference(prefix: str = "conf") -> str:
        return f"{prefix}-{secrets.token_hex(8)}"

    @staticmethod
    def key() -> str:
        return f"conformance-{secrets.token_hex(12)}"
