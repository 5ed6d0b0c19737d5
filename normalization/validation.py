"""Bridges between Tessera's error tree and pydantic validation.

Inside a pydantic validator a ``TesseraError`` must become a ``PydanticCustomError`` so pydantic
can collect it with the field's location (and so discriminated unions keep working); its ``type``
is the Tessera error's stable ``code``, which the gateway reports per field.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from pydantic import ConfigDict
from pydantic_core import PydanticCustomError

from normalization.errors import TesseraError

__all__ = ["DOMAIN_MODEL_CONFIG", "pydantic_error", "reraise_for_pydantic"]

P = ParamSpec("P")
R = TypeVar("R")

#: Configuration shared by every domain model: immutable, no unknown fields, and never the
#: rejected input in a validation error's text (it could be a PAN).
DOMAIN_MODEL_CONFIG = ConfigDict(
    frozen=True,
    extra="forbid",
    hide_input_in_errors=True,
    str_max_length=4096,
)


def pydantic_error(exc: TesseraError) -> PydanticCustomError:
    """The pydantic form of ``exc``: ``type`` is its code, the message its detail."""
    return PydanticCustomError(exc.code, "{detail}", {"detail": exc.detail})


def reraise_for_pydantic(func: Callable[P, R]) -> Callable[P, R]:
    """Decorate a validator so Tessera errors raised inside reach pydantic as custom errors."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except TesseraError as exc:
            raise pydantic_error(exc) from None

    return wrapper
