"""The payment state machine: every (status, event) pair against a table written from the rules.

The rules (docs/domain.md, "State machine", shows the same table and a test keeps the two equal):

- A provider's report (``Observe``) moves a payment along the table below. Reporting the current
  status again is a no-op (duplicate webhook, repeated sync), in every status.
- Whatever a command can do to the whole payment, a report can confirm: a command whose outcome
  was ``unknown`` is settled by a later sync or webhook that only knows the status.
- Capture: from authorized or partially_captured, at most what is still capturable; the payment is
  captured when everything is, or when the capture is final. Void: from authorized,
  requires_action or pending. Refund: from captured, partially_captured or partially_refunded, at
  most captured - refunded; refunded once everything captured is refunded.
- Amounts are in the payment's currency and greater than zero (checked before anything else).
- voided, declined, failed and refunded are final: nothing leaves them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from normalization import (
    FINAL_STATUSES,
    Capture,
    CaptureExceedsAuthorizedError,
    CurrencyMismatchError,
    IllegalTransitionError,
    InvalidAmountError,
    Money,
    Observe,
    PaymentEvent,
    PaymentState,
    PaymentStatus,
    Refund,
    RefundExceedsCapturedError,
    Void,
    transition,
)
from tests.normalization.strategies import PROPERTY

S = PaymentStatus
NEW = None
AMOUNT = Money(1000, "EUR")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "domain.md"

# -- the expectation table ---------------------------------------------------------------------

#: Statuses a provider may report from each status (besides the current one, always a no-op).
OBSERVABLE: dict[PaymentStatus | None, frozenset[PaymentStatus]] = {
    NEW: frozenset(
        {S.REQUIRES_ACTION, S.PENDING, S.AUTHORIZED, S.CAPTURED, S.DECLINED, S.FAILED, S.UNKNOWN}
    ),
    S.REQUIRES_ACTION: frozenset(
        {S.PENDING, S.AUTHORIZED, S.CAPTURED, S.DECLINED, S.FAILED, S.UNKNOWN, S.VOIDED}
    ),
    S.PENDING: frozenset({S.AUTHORIZED, S.CAPTURED, S.DECLINED, S.FAILED, S.VOIDED}),
    S.AUTHORIZED: frozenset({S.CAPTURED, S.VOIDED}),
    S.PARTIALLY_CAPTURED: frozenset({S.CAPTURED, S.REFUNDED}),
    S.CAPTURED: frozenset({S.REFUNDED}),
    S.PARTIALLY_REFUNDED: frozenset({S.REFUNDED}),
    S.UNKNOWN: frozenset(
        {S.REQUIRES_ACTION, S.PENDING, S.AUTHORIZED, S.CAPTURED, S.DECLINED, S.FAILED, S.VOIDED}
    ),
    S.VOIDED: frozenset(),
    S.DECLINED: frozenset(),
    S.FAILED: frozenset(),
    S.REFUNDED: frozenset(),
}
CAPTURE_FROM = frozenset({S.AUTHORIZED, S.PARTIALLY_CAPTURED})
VOID_FROM = frozenset({S.AUTHORIZED, S.REQUIRES_ACTION, S.PENDING})
REFUND_FROM = frozenset({S.CAPTURED, S.PARTIALLY_CAPTURED, S.PARTIALLY_REFUNDED})
FINAL = frozenset({S.VOIDED, S.DECLINED, S.FAILED, S.REFUNDED})

ALL_STATUSES: list[PaymentStatus | None] = [NEW, *PaymentStatus]


def canonical_state(status: PaymentStatus | None) -> PaymentState:
    """A representative state per status, with amounts that status implies."""
    captured = {S.PARTIALLY_CAPTURED: 400, S.CAPTURED: 1000, S.PARTIALLY_REFUNDED: 1000}
    captured[S.REFUNDED] = 1000
    refunded = {S.PARTIALLY_REFUNDED: 300, S.REFUNDED: 1000}
    return PaymentState(
        status=status,
        amount=AMOUNT,
        captured=captured.get(status, 0) if status else 0,
        refunded=refunded.get(status, 0) if status else 0,
    )


def remaining_capturable(state: PaymentState) -> int:
    return AMOUNT.value - state.captured


def remaining_refundable(state: PaymentState) -> int:
    return state.captured - state.refunded


Outcome = PaymentState | type[Exception]


def expect_observe(state: PaymentState, status: PaymentStatus) -> Outcome:
    if status == state.status:
        return state
    if status not in OBSERVABLE[state.status]:
        return IllegalTransitionError
    captured, refunded = state.captured, state.refunded
    if status is S.CAPTURED and captured == 0:
        captured = AMOUNT.value
    if status is S.REFUNDED:
        refunded = captured
    return PaymentState(status, AMOUNT, captured, refunded)


def expect_capture(state: PaymentState, value: int, *, final: bool = False) -> Outcome:
    if state.status not in CAPTURE_FROM:
        return IllegalTransitionError
    if value > remaining_capturable(state):
        return CaptureExceedsAuthorizedError
    captured = state.captured + value
    status = S.CAPTURED if captured == AMOUNT.value or final else S.PARTIALLY_CAPTURED
    return PaymentState(status, AMOUNT, captured, state.refunded)


def expect_void(state: PaymentState) -> Outcome:
    if state.status not in VOID_FROM:
        return IllegalTransitionError
    return replace(state, status=S.VOIDED)


def expect_refund(state: PaymentState, value: int) -> Outcome:
    if state.status not in REFUND_FROM:
        return IllegalTransitionError
    if value > remaining_refundable(state):
        return RefundExceedsCapturedError
    refunded = state.refunded + value
    status = S.REFUNDED if refunded == state.captured else S.PARTIALLY_REFUNDED
    return PaymentState(status, AMOUNT, state.captured, refunded)


def eur(value: int) -> Money:
    return Money(value, "EUR")


# Event kinds: name -> (event for a state, expected outcome for that state).
EventCase = Callable[[PaymentState], tuple[PaymentEvent, Outcome]]
EVENT_KINDS: dict[str, EventCase] = {
    **{
        f"observe_{status.value}": (
            lambda state, status=status: (Observe(status), expect_observe(state, status))
        )
        for status in PaymentStatus
    },
    "capture_part": lambda s: (Capture(eur(100)), expect_capture(s, 100)),
    "capture_part_final": lambda s: (
        Capture(eur(100), final=True),
        expect_capture(s, 100, final=True),
    ),
    "capture_rest": lambda s: (
        Capture(eur(max(remaining_capturable(s), 1))),
        expect_capture(s, max(remaining_capturable(s), 1)),
    ),
    "capture_over": lambda s: (
        Capture(eur(remaining_capturable(s) + 1)),
        expect_capture(s, remaining_capturable(s) + 1),
    ),
    "capture_zero": lambda s: (Capture(eur(0)), InvalidAmountError),
    "capture_other_currency": lambda s: (Capture(Money(100, "USD")), CurrencyMismatchError),
    "void": lambda s: (Void(), expect_void(s)),
    "refund_part": lambda s: (Refund(eur(100)), expect_refund(s, 100)),
    "refund_rest": lambda s: (
        Refund(eur(max(remaining_refundable(s), 1))),
        expect_refund(s, max(remaining_refundable(s), 1)),
    ),
    "refund_over": lambda s: (
        Refund(eur(remaining_refundable(s) + 1)),
        expect_refund(s, remaining_refundable(s) + 1),
    ),
    "refund_zero": lambda s: (Refund(eur(0)), InvalidAmountError),
    "refund_other_currency": lambda s: (Refund(Money(100, "USD")), CurrencyMismatchError),
}


def status_id(status: PaymentStatus | None) -> str:
    return status.value if status else "new"


@pytest.mark.parametrize("kind", sorted(EVENT_KINDS))
@pytest.mark.parametrize("status", ALL_STATUSES, ids=status_id)
def test_every_status_and_event(status: PaymentStatus | None, kind: str) -> None:
    state = canonical_state(status)
    event, expected = EVENT_KINDS[kind](state)
    if isinstance(expected, type):
        with pytest.raises(expected) as info:
            transition(state, event)
        assert type(info.value) is expected, f"{status_id(status)} + {kind}"
    else:
        assert transition(state, event) == expected


def test_the_table_covers_every_status_and_agrees_with_final_statuses() -> None:
    assert set(OBSERVABLE) == set(ALL_STATUSES)
    assert frozenset(FINAL_STATUSES) == FINAL
    for status in FINAL:
        assert not OBSERVABLE[status]
        assert status not in CAPTURE_FROM | VOID_FROM | REFUND_FROM
    # Partial statuses carry amounts: only commands reach them.
    for reachable in OBSERVABLE.values():
        assert S.PARTIALLY_CAPTURED not in reachable
        assert S.PARTIALLY_REFUNDED not in reachable


# -- stories -----------------------------------------------------------------------------------


def authorized() -> PaymentState:
    return transition(PaymentState.new(AMOUNT), Observe(S.AUTHORIZED))


def test_partial_capture_then_the_rest() -> None:
    state = transition(authorized(), Capture(eur(400)))
    assert (state.status, state.captured, state.capturable) == (S.PARTIALLY_CAPTURED, 400, 600)
    with pytest.raises(CaptureExceedsAuthorizedError) as info:
        transition(state, Capture(eur(601)))
    assert info.value.code == "amount_exceeds_capturable"
    state = transition(state, Capture(eur(600)))
    assert (state.status, state.captured, state.capturable) == (S.CAPTURED, 1000, 0)
    with pytest.raises(IllegalTransitionError):
        transition(state, Capture(eur(1)))


def test_final_partial_capture_closes_the_authorization() -> None:
    state = transition(authorized(), Capture(eur(400), final=True))
    assert (state.status, state.captured, state.refundable) == (S.CAPTURED, 400, 400)
    with pytest.raises(RefundExceedsCapturedError):
        transition(state, Refund(eur(401)))
    assert transition(state, Refund(eur(400))).status is S.REFUNDED


def test_two_partial_refunds_then_refunded() -> None:
    state = transition(authorized(), Capture(eur(1000)))
    state = transition(state, Refund(eur(300)))
    assert (state.status, state.refunded, state.refundable) == (S.PARTIALLY_REFUNDED, 300, 700)
    with pytest.raises(RefundExceedsCapturedError) as info:
        transition(state, Refund(eur(701)))
    assert info.value.code == "amount_exceeds_refundable"
    state = transition(state, Refund(eur(700)))
    assert (state.status, state.refunded, state.refundable) == (S.REFUNDED, 1000, 0)
    with pytest.raises(IllegalTransitionError):
        transition(state, Refund(eur(1)))


def test_refunds_of_a_partially_captured_payment_are_bounded_by_the_capture() -> None:
    state = transition(authorized(), Capture(eur(400)))
    with pytest.raises(RefundExceedsCapturedError):
        transition(state, Refund(eur(401)))
    assert transition(state, Refund(eur(400))).status is S.REFUNDED


def test_capture_after_void_and_void_after_capture_are_illegal() -> None:
    voided = transition(authorized(), Void())
    assert voided.status is S.VOIDED
    for event in (Capture(eur(1)), Refund(eur(1)), Void(), Observe(S.CAPTURED)):
        with pytest.raises(IllegalTransitionError) as info:
            transition(voided, event)
        assert info.value.code == "invalid_state_transition"
    captured = transition(authorized(), Capture(eur(1000)))
    with pytest.raises(IllegalTransitionError):
        transition(captured, Void())


def test_purchase_captures_everything_at_once() -> None:
    state = transition(PaymentState.new(AMOUNT), Observe(S.CAPTURED))
    assert (state.status, state.captured, state.refundable) == (S.CAPTURED, 1000, 1000)


def test_a_capture_whose_outcome_was_unknown_is_settled_by_sync() -> None:
    # The capture call timed out: the payment stays authorized; sync then reports captured.
    state = transition(authorized(), Observe(S.CAPTURED))
    assert (state.status, state.captured) == (S.CAPTURED, 1000)
    # A refund call that timed out, settled by a webhook.
    state = transition(state, Observe(S.REFUNDED))
    assert (state.status, state.refunded) == (S.REFUNDED, 1000)


def test_observed_capture_after_a_partial_capture_keeps_the_known_figure() -> None:
    state = transition(transition(authorized(), Capture(eur(400))), Observe(S.CAPTURED))
    assert (state.status, state.captured, state.capturable) == (S.CAPTURED, 400, 0)


def test_a_confirmed_capture_adds_what_an_earlier_observed_capture_could_not_know() -> None:
    # 400 captured; the 600 capture's answer is lost; a webhook reports "captured" (Tessera
    # keeps 400); the sync's totals then show the 600 happened.
    state = transition(transition(authorized(), Capture(eur(400))), Observe(S.CAPTURED))
    with pytest.raises(IllegalTransitionError):
        transition(state, Capture(eur(600)))  # a merchant's capture: the payment is captured
    with pytest.raises(CaptureExceedsAuthorizedError):
        transition(state, Capture(eur(601), confirmed=True))
    settled = transition(state, Capture(eur(600), confirmed=True))
    assert (settled.status, settled.captured, settled.refundable) == (S.CAPTURED, 1000, 1000)


def test_a_confirmed_partial_capture_is_a_partial_capture() -> None:
    state = transition(authorized(), Capture(eur(400), confirmed=True))
    assert (state.status, state.captured, state.capturable) == (S.PARTIALLY_CAPTURED, 400, 600)
    for status in (S.VOIDED, S.REFUNDED, S.PARTIALLY_REFUNDED):
        with pytest.raises(IllegalTransitionError):
            transition(replace(state, status=status), Capture(eur(1), confirmed=True))


def test_an_authorization_that_expires_or_is_reversed_is_observed_voided() -> None:
    assert transition(authorized(), Observe(S.VOIDED)).status is S.VOIDED
    unknown = transition(PaymentState.new(AMOUNT), Observe(S.UNKNOWN))
    assert transition(unknown, Observe(S.VOIDED)).status is S.VOIDED


@pytest.mark.parametrize("status", ALL_STATUSES[1:], ids=status_id)
def test_duplicate_observe_is_a_no_op_in_every_status(status: PaymentStatus) -> None:
    state = canonical_state(status)
    assert transition(state, Observe(status)) is state


@pytest.mark.parametrize("status", ALL_STATUSES, ids=status_id)
def test_observing_twice_equals_observing_once(status: PaymentStatus | None) -> None:
    state = canonical_state(status)
    for target in OBSERVABLE[status]:
        once = transition(state, Observe(target))
        assert transition(once, Observe(target)) == once


@pytest.mark.parametrize("status", sorted(FINAL), ids=status_id)
def test_nothing_leaves_a_final_status(status: PaymentStatus) -> None:
    state = canonical_state(status)
    for kind, case in EVENT_KINDS.items():
        event, _ = case(state)
        if event == Observe(status):
            continue
        refusals = (IllegalTransitionError, InvalidAmountError, CurrencyMismatchError)
        with pytest.raises(refusals) as info:
            transition(state, event)
        if "zero" not in kind and "currency" not in kind:
            assert type(info.value) is IllegalTransitionError


def test_illegal_transition_messages_name_the_statuses() -> None:
    with pytest.raises(IllegalTransitionError, match="new"):
        transition(PaymentState.new(AMOUNT), Void())
    with pytest.raises(IllegalTransitionError, match="voided"):
        transition(canonical_state(S.VOIDED), Observe(S.AUTHORIZED))
    with pytest.raises(IllegalTransitionError, match=r"pending.*requires_action"):
        transition(canonical_state(S.PENDING), Observe(S.REQUIRES_ACTION))


def test_amount_checks_come_before_status_checks() -> None:
    with pytest.raises(CurrencyMismatchError):
        transition(canonical_state(S.VOIDED), Capture(Money(1, "USD")))
    with pytest.raises(InvalidAmountError):
        transition(canonical_state(S.REFUNDED), Refund(eur(0)))


def test_capturable_and_refundable_are_zero_outside_their_statuses() -> None:
    for status in ALL_STATUSES:
        state = canonical_state(status)
        assert state.capturable == (remaining_capturable(state) if status in CAPTURE_FROM else 0)
        assert state.refundable == (remaining_refundable(state) if status in REFUND_FROM else 0)


# -- random histories --------------------------------------------------------------------------

events = st.one_of(
    st.builds(Observe, st.sampled_from(list(PaymentStatus))),
    st.builds(Capture, st.integers(0, 1200).map(eur), st.booleans(), st.booleans()),
    st.just(Void()),
    st.builds(Refund, st.integers(0, 1200).map(eur)),
)


@PROPERTY
@given(st.lists(events, max_size=25))
def test_random_histories_keep_the_invariants(history: list[PaymentEvent]) -> None:
    state = PaymentState.new(AMOUNT)
    for event in history:
        try:
            following = transition(state, event)
        except (IllegalTransitionError, InvalidAmountError):
            continue
        if state.status in FINAL:
            assert following == state, "a final status never changes"
        match event:
            case Observe(status=status):
                assert following.status == status
                assert status == state.status or status in OBSERVABLE[state.status]
            case Capture(confirmed=confirmed):
                assert state.status in CAPTURE_FROM or (confirmed and state.status is S.CAPTURED)
                assert following.status in (S.PARTIALLY_CAPTURED, S.CAPTURED)
            case Void():
                assert state.status in VOID_FROM
                assert following.status is S.VOIDED
            case Refund():
                assert state.status in REFUND_FROM
                assert following.status in (S.PARTIALLY_REFUNDED, S.REFUNDED)
        state = following
        assert 0 <= state.refunded <= state.captured <= AMOUNT.value
        assert state.capturable >= 0
        assert state.refundable >= 0
        if state.status is S.PARTIALLY_CAPTURED:
            assert 0 < state.captured < AMOUNT.value
        if state.status in (S.CAPTURED, S.PARTIALLY_REFUNDED, S.REFUNDED):
            assert state.captured > 0
        if state.status is S.PARTIALLY_REFUNDED:
            assert 0 < state.refunded < state.captured
        if state.status is S.REFUNDED:
            assert state.refunded == state.captured
        if state.status in (S.VOIDED, S.DECLINED, S.FAILED):
            assert state.refunded == 0


# -- the documented table ----------------------------------------------------------------------


def parse_docs_table() -> dict[str, list[str]]:
    """Rows of the state machine table in docs/domain.md: from-status -> cells."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("<!-- state-machine-table -->")[1]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if cells[0].startswith(("from", "---", ":--")):
            continue
        for status in re.split(r",\s*", cells[0]):
            rows[status.strip("` ")] = cells[1:]
    return rows


def statuses_in(cell: str) -> set[str]:
    return set(re.findall(r"[a-z_]+", cell)) - {"no", "one", "if", "or", "rest"}


def test_docs_state_machine_table_matches_the_rules() -> None:
    rows = parse_docs_table()
    assert set(rows) == {status_id(s) for s in ALL_STATUSES}
    for status in ALL_STATUSES:
        observe, capture, void, refund = rows[status_id(status)]
        assert statuses_in(observe) == {s.value for s in OBSERVABLE[status]}, status_id(status)
        assert (capture != "no") == (status in CAPTURE_FROM), status_id(status)
        assert (void != "no") == (status in VOID_FROM), status_id(status)
        assert (refund != "no") == (status in REFUND_FROM), status_id(status)
