"""Bridges between Tessera's error tree and pydantic validation.

Inside a pydantic validator a ``TesseraError`` must become a ``PydanticCustomError`` so pydantic
can collect it with the field's location (and so discriminated unions keep working); its ``type``
is the Tessera error's stable ``code``, which the gateway reports per field.

``hide_input_in_errors`` only hides the input from ``str(ValidationError)``: ``errors()`` and
``json()`` still carry every rejected ``input`` (a PAN, a CVV, or a whole request body holding
them), and a few built-in errors echo input-derived text (a union's tag, an unknown key in
``loc``). ``DomainModel`` therefore scrubs every ``ValidationError`` its validation raises:
inputs are replaced by ``"[hidden]"``, input-derived context by ``"[hidden]"`` and
digit-bearing keys in ``loc`` by ``"[redacted]"``.
"""

from __future__ import annotations

import functools
import re
import typing
from collections.abc import Callable
from typing import Any, ParamSpec, Self, TypeVar

from pydantic import BaseModel, ConfigDict, ModelWrapValidatorHandler, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError, core_schema
from pydantic_core.core_schema import ValidatorFunctionWrapHandler

from normalization.errors import TesseraError

__all__ = [
    "DOMAIN_MODEL_CONFIG",
    "DomainModel",
    "input_free_error",
    "pydantic_error",
    "reraise_for_pydantic",
    "scrub_validation_error",
    "scrubbing_validator",
]

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

#: What replaces a rejected input (and input-derived context) in a scrubbed error.
HIDDEN = "[hidden]"
#: What replaces a location key that came from the input and carries digits.
REDACTED = "[redacted]"

_BUILTIN_ERROR_TYPES = frozenset(typing.get_args(core_schema.ErrorType))
# Context entries that pydantic fills from the input rather than from the schema.
_INPUT_DERIVED_CONTEXT = frozenset({"tag"})
# Three digits anywhere (any script) is enough to be a CVV or part of a PAN; Tessera's own
# field names carry none.
_DIGITS_RE = re.compile(r"\d")
_MAX_LOC_KEY = 100


def pydantic_error(exc: TesseraError) -> PydanticCustomError:
    """The pydantic form of ``exc``: ``type`` is its code, the message its detail."""
    return PydanticCustomError(exc.code, "{detail}", {"detail": exc.detail})


def input_free_error(exc: TesseraError) -> ValidationError:
    """A ``ValidationError`` holding ``exc`` as its one error, with the input hidden.

    Raised inside a validator, pydantic merges its errors into the outer ones (locations are
    prefixed as usual) and keeps their ``input``: ``"[hidden]"`` rather than what the validator
    received, which for a model-level check is the whole input (card number included).
    """
    return ValidationError.from_exception_data(
        type(exc).__name__,
        [InitErrorDetails(type=pydantic_error(exc), loc=(), input=HIDDEN)],
        hide_input=True,
    )


def reraise_for_pydantic(func: Callable[P, R]) -> Callable[P, R]:
    """Decorate a validator so Tessera errors raised inside reach pydantic, input-free."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except TesseraError as exc:
            error = input_free_error(exc)
        raise error  # outside the except block: no __context__ to carry anything along

    return wrapper


def _safe_loc_key(key: str | int) -> str | int:
    if isinstance(key, int):
        return key
    if len(key) > _MAX_LOC_KEY or len(_DIGITS_RE.findall(key)) >= 3:
        return REDACTED
    return key


def scrub_validation_error(exc: ValidationError) -> ValidationError:
    """A copy of ``exc`` that carries no input: same types, locations and messages otherwise.

    Tessera's own errors keep their ``type`` (the stable code) and message; pydantic's keep
    their type and schema-derived context, so messages stay as helpful as before.
    """
    details: list[InitErrorDetails] = []
    for error in exc.errors(include_url=False):
        loc = tuple(_safe_loc_key(key) for key in error["loc"])
        context = error.get("ctx")
        if error["type"] in _BUILTIN_ERROR_TYPES:
            if context is not None:
                context = {
                    key: HIDDEN if key in _INPUT_DERIVED_CONTEXT else value
                    for key, value in context.items()
                }
            detail = InitErrorDetails(type=error["type"], loc=loc, input=HIDDEN)
            if context is not None:
                detail["ctx"] = context
        else:
            detail = InitErrorDetails(
                type=PydanticCustomError(error["type"], "{detail}", {"detail": error["msg"]}),
                loc=loc,
                input=HIDDEN,
            )
        details.append(detail)
    return ValidationError.from_exception_data(exc.title, details, hide_input=True)


def _scrubbed(validate: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """``validate(*args, **kwargs)``, its ``ValidationError`` scrubbed (the one place that
    does it: every model, nested ones included, and every wrap validator come through here)."""
    try:
        return validate(*args, **kwargs)
    except ValidationError as exc:
        scrubbed = scrub_validation_error(exc)
    # Raised outside the except block: ``raise ... from None`` would still keep the original
    # error, inputs and all, reachable as ``__context__``.
    raise scrubbed


def scrubbing_validator(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A ``WrapValidator`` for types that are not models (e.g. the ``PaymentMethod`` union)."""
    return _scrubbed(handler, value)


class DomainModel(BaseModel):
    """Base of every domain model: ``DOMAIN_MODEL_CONFIG`` and input-free validation errors.

    Nested models scrub their own errors; the outermost one scrubs what its own fields add
    (a missing field's error would otherwise carry the whole request body as its input).
    """

    model_config = DOMAIN_MODEL_CONFIG

    @model_validator(mode="wrap")
    @classmethod
    def _scrub_errors(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        return _scrubbed(handler, data)

    @classmethod
    def model_validate(cls, *args: Any, **kwargs: Any) -> Self:
        """As pydantic's; errors are scrubbed here too, in case a subclass's own model
        validator raised something other than a Tessera error (those are scrubbed at source).
        """
        return _scrubbed(super().model_validate, *args, **kwargs)

    @classmethod
    def model_validate_json(cls, *args: Any, **kwargs: Any) -> Self:
        """As pydantic's, but a JSON syntax error does not carry the raw document either."""
        return _scrubbed(super().model_validate_json, *args, **kwargs)

    @classmethod
    def model_validate_strings(cls, *args: Any, **kwargs: Any) -> Self:
        return _scrubbed(super().model_validate_strings, *args, **kwargs)
