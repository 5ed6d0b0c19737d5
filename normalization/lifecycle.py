"""The payment state machine.

``transition(state, event)`` returns the next ``PaymentState`` or raises an
``IllegalTransitionError`` (capture after void, capture above the authorized amount, refund above
the captured amount, anything after a final status, ...). The gateway runs every persisted change
through it, so a provider's webhook and a sync that report the same fact converge, and a
duplicate event changes nothing twice (``Observe`` events for the current status are no-ops).

Commands (``Capture``, ``Void``, ``Refund``) carry amounts and are applied when the provider
confirms them. ``Observe`` is a status reported by the provider (first answer, sync, webhook).
Any whole-payment move a command can make, ``Observe`` can make too, because a command whose
outcome was ``unknown`` is settled by a later sync or webhook that only reports the status:
an authorized payment observed ``captured`` or ``voided``, a captured one observed
``refunded``. Partial statuses carry amounts and are only reached through commands; a partial
capture or refund whose answer was lost is applied as its command once the provider's totals show
it happened (``Capture(confirmed=True)``, ``Refund``), never guessed from a status alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from normalization.errors import (
    CaptureExceedsAuthorizedError,
    CurrencyMismatchError,
    IllegalTransitionError,
    InvalidAmountError,
    RefundExceedsCapturedError,
)
from normalization.money import Money
from normalization.results import FINAL_STATUSES, PaymentStatus

__all__ = [
    "Capture",
    "Observe",
    "PaymentEvent",
    "PaymentState",
    "Refund",
    "Void",
    "transition",
]

S = PaymentStatus

_FIRST_ANSWERS = frozenset(
    {S.REQUIRES_ACTION, S.PENDING, S.AUTHORIZED, S.CAPTURED, S.DECLINED, S.FAILED, S.UNKNOWN}
)

#: Statuses a provider may report (``Observe``) from each status. ``None`` is a payment no
#: connector has answered for yet. Observing the current status is always a no-op.
_OBSERVABLE_FROM: dict[PaymentStatus | None, frozenset[PaymentStatus]] = {
    None: _FIRST_ANSWERS,
    # An authorization whose outcome was unknown may also have been reversed by the provider
    # (timeout reversal); a payment awaiting the customer or the provider may be cancelled.
    S.UNKNOWN: _FIRST_ANSWERS | {S.VOIDED},
    S.REQUIRES_ACTION: _FIRST_ANSWERS | {S.VOIDED},
    S.PENDING: frozenset({S.PENDING, S.AUTHORIZED, S.CAPTURED, S.DECLINED, S.FAILED, S.VOIDED}),
    # Settling a capture, void or refund whose outcome was unknown, or one made outside
    # Tessera (provider dashboard, authorization expiry).
    S.AUTHORIZED: frozenset({S.CAPTURED, S.VOIDED}),
    S.PARTIALLY_CAPTURED: frozenset({S.CAPTURED, S.REFUNDED}),
    S.CAPTURED: frozenset({S.REFUNDED}),
    S.PARTIALLY_REFUNDED: frozenset({S.REFUNDED}),
}

_CAPTURABLE = frozenset({S.AUTHORIZED, S.PARTIALLY_CAPTURED})
_VOIDABLE = frozenset({S.AUTHORIZED, S.REQUIRES_ACTION, S.PENDING})
_REFUNDABLE = frozenset({S.CAPTURED, S.PARTIALLY_CAPTURED, S.PARTIALLY_REFUNDED})


@dataclass(frozen=True, slots=True)
class PaymentState:
    """Status plus the running amounts, all in the payment's currency."""

    status: PaymentStatus | None
    amount: Money
    captured: int = 0
    refunded: int = 0

    @classmethod
    def new(cls, amount: Money) -> PaymentState:
        return cls(status=None, amount=amount)

    @property
    def capturable(self) -> int:
        return self.amount.value - self.captured if self.status in _CAPTURABLE else 0

    @property
    def refundable(self) -> int:
        return self.captured - self.refunded if self.status in _REFUNDABLE else 0


@dataclass(frozen=True, slots=True)
class Observe:
    """The provider reports a status for the payment itself (first answer, sync, webhook)."""

    status: PaymentStatus


@dataclass(frozen=True, slots=True)
class Capture:
    """A capture the provider made. ``confirmed`` marks one whose answer was lost and that a
    sync or replay later showed happened: it also applies to a payment already observed
    ``captured`` (a webhook reported the status before the amount was known) as long as the
    amount fits what was authorized."""

    amount: Money
    final: bool = False
    confirmed: bool = False


@dataclass(frozen=True, slots=True)
class Void:
    pass


@dataclass(frozen=True, slots=True)
class Refund:
    amount: Money


PaymentEvent = Observe | Capture | Void | Refund


def _check_currency(state: PaymentState, amount: Money) -> int:
    if amount.currency != state.amount.currency:
        raise CurrencyMismatchError(
            f"The payment is in {state.amount.currency}; the amount is in {amount.currency}."
        )
    if amount.value <= 0:
        raise InvalidAmountError("The amount must be greater than zero.")
    return amount.value


def _illegal(state: PaymentState, what: str) -> IllegalTransitionError:
    current = state.status.value if state.status else "new"
    return IllegalTransitionError(f"Cannot {what} a payment that is {current}.")


def transition(state: PaymentState, event: PaymentEvent) -> PaymentState:
    """Apply ``event`` to ``state``; raise ``IllegalTransitionError`` for an illegal move."""
    match event:
        case Observe(status=status):
            return _observe(state, status)
        case Capture(amount=amount, final=final, confirmed=confirmed):
            value = _check_currency(state, amount)
            lagging = confirmed and state.status is S.CAPTURED
            if state.status not in _CAPTURABLE and not lagging:
                raise _illegal(state, "capture")
            capturable = state.amount.value - state.captured if lagging else state.capturable
            if value > capturable:
                raise CaptureExceedsAuthorizedError(
                    f"Only {capturable} minor units remain capturable; asked {value}."
                )
            captured = state.captured + value
            full = captured == state.amount.value or final or lagging
            return replace(
                state,
                captured=captured,
                status=S.CAPTURED if full else S.PARTIALLY_CAPTURED,
            )
        case Void():
            if state.status not in _VOIDABLE:
                raise _illegal(state, "void")
            return replace(state, status=S.VOIDED)
        case Refund(amount=amount):
            value = _check_currency(state, amount)
            if state.status not in _REFUNDABLE:
                raise _illegal(state, "refund")
            if value > state.refundable:
                raise RefundExceedsCapturedError(
                    f"Only {state.refundable} minor units remain refundable; asked {value}."
                )
            refunded = state.refunded + value
            return replace(
                state,
                refunded=refunded,
                status=S.REFUNDED if refunded == state.captured else S.PARTIALLY_REFUNDED,
            )
    raise TypeError(f"Unknown payment event {event!r}")  # pragma: no cover


def _observe(state: PaymentState, status: PaymentStatus) -> PaymentState:
    if status == state.status:
        return state  # duplicate webhook or repeated sync: nothing changes twice
    allowed = _OBSERVABLE_FROM.get(state.status)
    if allowed is None or status not in allowed:
        if state.status in FINAL_STATUSES:
            raise _illegal(state, f"move to {status.value}")
        raise IllegalTransitionError(
            f"A payment cannot go from {state.status or 'new'} to {status.value}."
        )
    if status is S.CAPTURED:
        # Nothing captured yet: the whole amount. After a partial capture the provider closed
        # the capture; Tessera keeps the figure it knows (a bigger one arrives as a Capture).
        captured = state.captured or state.amount.value
        return replace(state, status=status, captured=captured)
    if status is S.REFUNDED:
        return replace(state, status=status, refunded=state.captured)
    return replace(state, status=status)
