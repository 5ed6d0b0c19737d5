"""Card placeholders: what a connector puts in a request where card data belongs.

A connector never holds a PAN or CVV. It asks its call context for placeholders::

    card = ctx.card(request.payment_method)
    body = {"card": {"number": card.number, "cvc": card.cvc,
                     "exp_month": card.exp_month, "exp_year": card.exp_year}}

Each placeholder is a ``str`` whose text is an unguessable marker (``tsr_<nonce>_<slot>_``,
only characters that JSON, form-urlencoding and XML leave unchanged), so it survives
``json.dumps``, ``urlencode``, f-strings and XML templates. The egress transport finds the
markers in the outgoing bytes, reveals the card through the ``TokenRevealer`` and writes the real
values, encoded for where each marker sits. The nonce is per call, so text a merchant controls
cannot forge a marker. Placeholders are opaque: slicing or transforming one yields garbage, not
card data (ask for the field you need: ``exp_year_short`` rather than ``exp_year[2:]``).

Two variants cover what a provider's schema may ask for::

    body = {"card": {"number": card.number,
                     "cvc": card.cvc.optional(),               # left out when there is none
                     "expiry_month": card.exp_month.as_number(),   # 3, not "03"
                     "expiry_year": card.exp_year.as_number()}}     # 2030

- ``optional()``: when the card does not hold the field (a token whose CVC has expired or was
  used, a card without a holder name), the egress transport leaves out what carries it (the JSON
  member or array item, the form pair, the XML element or attribute, the header) instead of
  failing the request with ``MissingCardDataError``. Without ``optional()`` a missing field fails
  the request before anything is sent, which is right for a field the provider requires.
- ``as_number()`` (expiry fields only): in a JSON body the placeholder must be a whole value,
  and the quoted marker becomes a JSON number. A PAN or CVC never does: a CVC's leading zeros
  would be lost, and a 16-digit PAN is past the integers JSON parsers keep exactly.

This module holds the markers and the per-call table that resolves them; the transport that
substitutes them lives in ``sdk.egress``.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, replace
from enum import StrEnum

from normalization import CardData, CardMethod, ConnectorConfigurationError, InvalidRequestError
from sdk.revealer import RevealedCard, TokenRevealer

__all__ = [
    "MARKER_PATTERN",
    "MARKER_PREFIX",
    "CardField",
    "CardPlaceholder",
    "CardPlaceholders",
    "MissingCardDataError",
    "PlaceholderTable",
    "Resolution",
    "ResolvedValue",
]

#: What every placeholder marker starts with: a cheap ``in`` test before the regular expression.
MARKER_PREFIX = b"tsr_"
#: Any placeholder marker, of any call.
MARKER_PATTERN = re.compile(re.escape(MARKER_PREFIX) + rb"([0-9a-f]{16})_([0-9]{1,6})_")


class CardField(StrEnum):
    NUMBER = "number"
    CVC = "cvc"
    EXP_MONTH = "exp_month"  # two digits: "03"
    EXP_YEAR = "exp_year"  # four digits: "2030"
    EXP_YEAR_SHORT = "exp_year_short"  # two digits: "30"
    HOLDER_NAME = "holder_name"


#: Fields ``as_number()`` accepts: a number keeps their meaning (see the module docstring).
NUMBER_FIELDS = frozenset({CardField.EXP_MONTH, CardField.EXP_YEAR, CardField.EXP_YEAR_SHORT})

#: Fields whose values are digits only, safe in any encoding.
DIGIT_FIELDS = frozenset(
    {
        CardField.NUMBER,
        CardField.CVC,
        CardField.EXP_MONTH,
        CardField.EXP_YEAR,
        CardField.EXP_YEAR_SHORT,
    }
)


class MissingCardDataError(InvalidRequestError):
    """The request needs a card field the token does not hold (typically an expired CVC)."""

    code = "card_data_unavailable"
    default_detail = "The card data this connector needs is not available for this token."


class CardPlaceholder(str):
    """A stand-in for one card field; its text is a marker, its ``repr`` says what it is."""

    field: CardField
    is_optional: bool
    is_number: bool
    _table: PlaceholderTable | None
    _source: CardSource | None

    def __new__(
        cls,
        marker: str,
        field: CardField,
        *,
        optional: bool = False,
        number: bool = False,
        table: PlaceholderTable | None = None,
        source: CardSource | None = None,
    ) -> CardPlaceholder:
        obj = super().__new__(cls, marker)
        obj.field = field
        obj.is_optional = optional
        obj.is_number = number
        obj._table = table
        obj._source = source
        return obj

    def __repr__(self) -> str:
        flags = "".join(
            (" optional" if self.is_optional else "", " number" if self.is_number else "")
        )
        return f"<card {self.field.value}{flags} placeholder>"

    def optional(self) -> CardPlaceholder:
        """This field where the card holds it; otherwise what carries it is left out of the
        request (see the module docstring)."""
        return self._variant(optional=True, number=self.is_number)

    def as_number(self) -> CardPlaceholder:
        """This field as a JSON number (expiry fields only; see the module docstring)."""
        if self.field not in NUMBER_FIELDS:
            raise ConnectorConfigurationError(
                f"The card {self.field.value} cannot be sent as a number (only the expiry"
                " fields can: a security code's leading zeros and a long card number's digits"
                " would be lost)."
            )
        return self._variant(optional=self.is_optional, number=True)

    def _variant(self, *, optional: bool, number: bool) -> CardPlaceholder:
        if self._table is None or self._source is None:
            raise ConnectorConfigurationError(
                "Only placeholders from ctx.card(...) have optional and number variants."
            )
        return self._table._add(self._source, self.field, optional=optional, number=number)


@dataclass(frozen=True, slots=True)
class CardPlaceholders:
    """The placeholders for one card, one per field."""

    number: CardPlaceholder
    cvc: CardPlaceholder
    exp_month: CardPlaceholder
    exp_year: CardPlaceholder
    exp_year_short: CardPlaceholder
    holder_name: CardPlaceholder


@dataclass(frozen=True, slots=True)
class ResolvedValue:
    """A revealed field: the raw value (bytes on the wire only) and what transcripts show;
    ``number``: written as a JSON number in a JSON body."""

    field: CardField
    raw: str
    masked: str
    number: bool = False


@dataclass(frozen=True, slots=True)
class Resolution:
    """What the markers of one request resolve to: ``values`` by marker, and ``omitted``, the
    markers of ``optional()`` placeholders whose field the card does not hold."""

    values: dict[bytes, ResolvedValue]
    omitted: frozenset[bytes]


CardSource = str | CardData


def _field_values(card: RevealedCard | CardData, field: CardField) -> ResolvedValue | None:
    if field is CardField.NUMBER:
        return ResolvedValue(field, card.number.reveal(), card.number.masked)
    if field is CardField.CVC:
        if card.cvc is None:
            return None
        return ResolvedValue(field, card.cvc.reveal(), card.cvc.masked)
    if field is CardField.EXP_MONTH:
        text = f"{card.exp_month:02d}"
        return ResolvedValue(field, text, text)
    if field is CardField.EXP_YEAR:
        text = f"{card.exp_year:04d}"
        return ResolvedValue(field, text, text)
    if field is CardField.EXP_YEAR_SHORT:
        text = f"{card.exp_year % 100:02d}"
        return ResolvedValue(field, text, text)
    if card.holder_name is None:
        return None
    return ResolvedValue(field, card.holder_name, "[holder name]")


class PlaceholderTable:
    """The placeholders handed out during one call, and their resolution at send time."""

    __slots__ = ("_halves", "_nonce", "_slots")

    def __init__(self) -> None:
        self._nonce = secrets.token_hex(8)
        #: (card, field, optional, number) per slot; the slot is the marker's number.
        self._slots: list[tuple[CardSource, CardField, bool, bool]] = []
        nonce = self._nonce.encode()
        #: What ``check_whole`` looks for: the nonce's halves, in either case.
        self._halves = (nonce[:8], nonce[8:], nonce[:8].upper(), nonce[8:].upper())

    def __repr__(self) -> str:
        return f"PlaceholderTable(slots={len(self._slots)})"

    def card(self, method: CardMethod) -> CardPlaceholders:
        """Placeholders for the card behind ``method`` (a token, or inline card data)."""
        source: CardSource
        if method.token is not None:
            source = method.token
        elif method.card is not None:
            source = method.card
        else:  # pragma: no cover - CardMethod's validator forbids it
            raise InvalidRequestError("The card payment method has neither token nor card.")
        return CardPlaceholders(*(self._add(source, field) for field in CardField))

    def _add(
        self, source: CardSource, field: CardField, *, optional: bool = False, number: bool = False
    ) -> CardPlaceholder:
        slot = len(self._slots)
        self._slots.append((source, field, optional, number))
        return CardPlaceholder(
            f"{MARKER_PREFIX.decode()}{self._nonce}_{slot}_",
            field,
            optional=optional,
            number=number,
            table=self,
            source=source,
        )

    def slots_in(self, data: bytes) -> set[int]:
        """The slots whose markers occur in ``data``; a marker of another call is an error."""
        found: set[int] = set()
        for match in MARKER_PATTERN.finditer(data):
            slot = int(match.group(2))
            if match.group(1).decode() != self._nonce or slot >= len(self._slots):
                raise ConnectorConfigurationError(
                    "A card placeholder from another call was used; placeholders are per call."
                )
            found.add(slot)
        return found

    def check_whole(self, data: bytes) -> None:
        """Refuse ``data`` holding a piece of this call's markers that is not a whole marker: a
        placeholder was sliced or transformed (``card.exp_year[2:]``), and would otherwise go
        to the provider as garbage. Checked by the marker's unguessable nonce (its halves, in
        either case), so provider or merchant text cannot trip it; a slice short enough to keep
        neither half (``card.number[:6]``) is not seen."""
        if not any(half in data for half in self._halves):
            return
        rest = MARKER_PATTERN.sub(b"", data)
        if any(half in rest for half in self._halves):
            raise ConnectorConfigurationError(
                "A card placeholder was sliced or transformed; it goes out whole or not at "
                "all (ask for the field you need: exp_year_short, not exp_year[2:])."
            )

    async def resolve(
        self, slots: set[int], revealer: TokenRevealer | None, tenant: str, purpose: str
    ) -> Resolution:
        """Reveal what ``slots`` need (each token once) and map each marker to its value; an
        ``optional()`` marker whose field the card lacks goes to ``omitted`` instead."""
        revealed: dict[str, RevealedCard] = {}
        resolved: dict[bytes, ResolvedValue] = {}
        omitted: set[bytes] = set()
        for slot in sorted(slots):
            source, field, optional, number = self._slots[slot]
            marker = f"tsr_{self._nonce}_{slot}_".encode()
            card: RevealedCard | CardData
            if isinstance(source, str):
                if source not in revealed:
                    if revealer is None:
                        raise ConnectorConfigurationError(
                            "No token revealer is configured: card tokens cannot be used."
                        )
                    revealed[source] = await revealer.reveal(tenant, source, purpose=purpose)
                card = revealed[source]
            else:
                card = source
            value = _field_values(card, field)
            if value is None:
                if optional:
                    omitted.add(marker)
                    continue
                raise MissingCardDataError(
                    f"The card has no {field.value.replace('_', ' ')} (needed by this request)."
                )
            resolved[marker] = replace(value, number=True) if number else value
        return Resolution(resolved, frozenset(omitted))
