"""Secret value types for card data.

``CardNumber`` and ``CardSecurityCode`` wrap the raw digits so that ``repr``, ``str``, f-strings,
logging, pickling and pydantic serialization only ever show a mask. The value is read with
``reveal()``, which the tokenization service and the SDK's egress layer call; nothing else should.
Validation failures report a code and a sentence, never the input.
"""

from __future__ import annotations

import hmac
from typing import Any, ClassVar, NoReturn, Self

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from normalization.cards import card_bin, card_last4, mask_pan, validate_cvc, validate_pan
from normalization.errors import TesseraError
from normalization.validation import input_free_error

__all__ = ["CardNumber", "CardSecurityCode", "SecretDigits"]


class SecretDigits:
    """A string of digits that must never be shown. Subclasses define validation and mask."""

    __slots__ = ("_value",)
    json_schema_extra: ClassVar[dict[str, Any]] = {}

    def __init__(self, value: str) -> None:
        self._value = self._validate(value)

    @classmethod
    def _validate(cls, value: object) -> str:
        raise NotImplementedError

    def reveal(self) -> str:
        """The raw value. Call only where the value must leave Tessera (vault, egress)."""
        return self._value

    @property
    def masked(self) -> str:
        return "*" * len(self._value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.masked!r})"

    def __str__(self) -> str:
        return self.masked

    def __format__(self, format_spec: str) -> str:
        return format(self.masked, format_spec)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, SecretDigits)
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash((type(self).__name__, len(self._value)))

    def __len__(self) -> int:
        return len(self._value)

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be pickled.")

    def __getstate__(self) -> NoReturn:
        # object.__getstate__ would hand out the raw value of the slot.
        raise TypeError(f"{type(self).__name__} cannot be pickled.")

    # Immutable: a copy is the same object. Without these, copy.copy, copy.deepcopy and
    # pydantic's model_copy(deep=True) would fall back to pickling's protocol and fail.
    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        return self

    @classmethod
    def _from_input(cls, value: object) -> SecretDigits:
        if isinstance(value, cls):
            return value
        try:
            return cls(value)  # type: ignore[arg-type]
        except TesseraError as exc:
            error = input_free_error(exc)
        raise error

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._from_input,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda v: v.masked, when_used="always"
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "writeOnly": True, **cls.json_schema_extra}


class CardNumber(SecretDigits):
    """A validated PAN. Shows as ``424242******4242``."""

    __slots__ = ()
    json_schema_extra: ClassVar[dict[str, Any]] = {
        "pattern": "^[0-9]{12,19}$",
        "description": "Primary account number: 12-19 ASCII digits passing Luhn.",
    }

    @classmethod
    def _validate(cls, value: object) -> str:
        return validate_pan(value)

    @property
    def masked(self) -> str:
        return mask_pan(self._value)

    @property
    def bin(self) -> str:
        return card_bin(self._value)

    @property
    def last4(self) -> str:
        return card_last4(self._value)


class CardSecurityCode(SecretDigits):
    """A CVC/CVV: 3 or 4 ASCII digits. Shows as ``***``."""

    __slots__ = ()
    json_schema_extra: ClassVar[dict[str, Any]] = {
        "pattern": "^[0-9]{3,4}$",
        "description": "Card security code; held in memory only, never stored.",
    }

    @classmethod
    def _validate(cls, value: object) -> str:
        return validate_cvc(value)
