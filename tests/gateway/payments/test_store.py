"""The payment store on SQLite and PostgreSQL: round trips, merchant isolation, the state
machine, optimistic concurrency, attempts and provider keys, reconciliation bookkeeping,
refunds and webhook-event dedup."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from gateway.payments import (
    AttemptRecord,
    ConcurrentUpdateError,
    ExponentialBackoff,
    MigrationConflictError,
    OperationInProgressError,
    Outbox,
    PaymentMethodSummary,
    PaymentRecord,
    PaymentStore,
    ReconcilePolicy,
    RefundStatus,
    provider_idempotency_key,
)
from normalization import (
    Capture,
    CaptureExceedsAuthorizedError,
    DeclineCode,
    IllegalTransitionError,
    InvalidRequestError,
    Money,
    NextAction,
    NotFoundError,
    Observe,
    Outcome,
    PaymentNotFoundError,
    PaymentResult,
    PaymentStatus,
    Refund,
    RefundExceedsCapturedError,
    Void,
)
from normalization.methods import BankAccountMethod, CardMethod
from tests.gateway.payments.conftest import Database, FakeClock
from vault.database import open_database

S = PaymentStatus
EUR = "EUR"
CARD = PaymentMethodSummary(type="card", token="tok_" + "a" * 24, brand="visa", last4="4242")


async def _payment(
    store: PaymentStore,
    merchant: str = "mer_a",
    *,
    reference: str | None = None,
    metadata: dict[str, str] | None = None,
) -> PaymentRecord:
    return await store.create_payment(
        merchant, Money.of(1050, EUR), payment_method=CARD, reference=reference, metadata=metadata
    )


async def _authorized(store: PaymentStore) -> PaymentRecord:
    payment = await _payment(store)
    return await store.apply(payment, S.AUTHORIZED, connector="sandbox", provider_reference="p_1")


# -- payments -----------------------------------------------------------------------------------


async def test_payment_round_trip(payment_store: PaymentStore, clock: FakeClock) -> None:
    created = await payment_store.create_payment(
        "mer_a",
        Money.of(1050, EUR),
        payment_method=CARD,
        capture=True,
        connector="sandbox",
        reference="order-42",
        metadata={"cart": "7", "channel": "web"},
        return_url="https://shop.example/return",
    )
    assert created.id.startswith("pay_") and len(created.id) == 28
    assert created.status is None and created.version == 1
    assert created.created_at == clock.now()
    loaded = await payment_store.get_payment("mer_a", created.id)
    assert loaded == created

    action = NextAction(url="https://acs.example/3ds?x=1")
    clock.advance(5)
    moved = await payment_store.apply(
        loaded, S.REQUIRES_ACTION, next_action=action, provider_reference="psp_9"
    )
    assert moved.version == 2 and moved.updated_at == clock.now()
    again = await payment_store.get_payment("mer_a", created.id)
    assert again == moved
    assert again.next_action == action and again.provider_reference == "psp_9"
    assert again.metadata == {"cart": "7", "channel": "web"}
    assert again.payment_method == CARD


async def test_declined_payment_keeps_its_decline(payment_store: PaymentStore) -> None:
    payment = await _payment(payment_store)
    result = PaymentResult.declined(DeclineCode.INSUFFICIENT_FUNDS, "no money", "51")
    declined = await payment_store.apply(payment, result.status, decline=result.decline)
    loaded = await payment_store.get_payment("mer_a", payment.id)
    assert loaded.status is S.DECLINED and loaded.decline == result.decline == declined.decline


async def test_merchants_never_see_each_others_payments(payment_store: PaymentStore) -> None:
    payment = await _payment(payment_store, merchant="mer_a", reference="order-1")
    with pytest.raises(PaymentNotFoundError):
        await payment_store.get_payment("mer_b", payment.id)
    with pytest.raises(PaymentNotFoundError):
        await payment_store.get_payment("mer_a", "pay_missing")
    assert await payment_store.find_by_reference("mer_b", "order-1") == []
    assert [p.id for p in await payment_store.find_by_reference("mer_a", "order-1")] == [payment.id]


async def test_find_by_reference_newest_first(
    payment_store: PaymentStore, clock: FakeClock
) -> None:
    first = await _payment(payment_store, reference="order-7")
    clock.advance(1)
    second = await _payment(payment_store, reference="order-7")
    found = await payment_store.find_by_reference("mer_a", "order-7")
    assert [p.id for p in found] == [second.id, first.id]


async def test_find_by_provider_reference(payment_store: PaymentStore) -> None:
    payment = await _authorized(payment_store)
    assert (await payment_store.find_by_provider_reference("sandbox", "p_1")) == payment
    other = await _payment(payment_store)
    attempt = await payment_store.start_attempt(other, "sandbox", "authorize")
    await payment_store.finish_attempt(attempt.id, PaymentResult.unknown("p_via_attempt"))
    found = await payment_store.find_by_provider_reference("sandbox", "p_via_attempt")
    assert found is not None and found.id == other.id
    assert await payment_store.find_by_provider_reference("other", "p_1") is None


async def test_bank_account_summary_is_masked() -> None:
    method = BankAccountMethod(holder_name="A. Payer", iban="DE89370400440532013000")
    summary = PaymentMethodSummary.of(method)
    assert summary.masked_account is not None and summary.masked_account.endswith("3000")
    assert "370400440532" not in summary.masked_account
    card = PaymentMethodSummary.of(CardMethod(token="tok_" + "b" * 20), brand="visa", last4="1111")
    assert card.token == "tok_" + "b" * 20


@pytest.mark.parametrize("field", ["token", "masked_account", "brand", "scheme", "country", "type"])
async def test_summary_refuses_a_card_number(field: str) -> None:
    pan = "4111 1111 1111 1111"
    with pytest.raises(InvalidRequestError) as caught:
        PaymentMethodSummary(**{"type": "card", field: pan})
    assert "1111" not in str(caught.value)


async def test_reference_and_metadata_refuse_card_numbers(payment_store: PaymentStore) -> None:
    with pytest.raises(InvalidRequestError):
        await _payment(payment_store, reference="card 4111-1111-1111-1111")
    with pytest.raises(InvalidRequestError):
        await _payment(payment_store, metadata={"note": "5555555555554444"})
    # A long numeric order id that is no card (Luhn-invalid or no known brand) is fine.
    ok = await _payment(
        payment_store, reference="9000000000000001", metadata={"n": "4111111111111112"}
    )
    assert ok.reference == "9000000000000001"


# -- the state machine and optimistic concurrency ------------------------------------------------


async def test_full_lifecycle_through_apply(payment_store: PaymentStore) -> None:
    payment = await _authorized(payment_store)
    payment = await payment_store.apply(payment, Capture(Money.of(400, EUR)))
    assert (payment.status, payment.captured) == (S.PARTIALLY_CAPTURED, 400)
    payment = await payment_store.apply(payment, Capture(Money.of(650, EUR)))
    assert (payment.status, payment.captured) == (S.CAPTURED, 1050)
    payment = await payment_store.apply(payment, Refund(Money.of(50, EUR)))
    payment = await payment_store.apply(payment, Refund(Money.of(1000, EUR)))
    assert (payment.status, payment.refunded, payment.version) == (S.REFUNDED, 1050, 6)
    assert await payment_store.get_payment("mer_a", payment.id) == payment


async def test_illegal_transitions_raise_and_write_nothing(payment_store: PaymentStore) -> None:
    payment = await _authorized(payment_store)
    voided = await payment_store.apply(payment, Void())
    with pytest.raises(IllegalTransitionError):
        await payment_store.apply(voided, Capture(Money.of(100, EUR)))
    with pytest.raises(IllegalTransitionError):
        await payment_store.apply(voided, S.AUTHORIZED)
    fresh = await _authorized(payment_store)
    with pytest.raises(CaptureExceedsAuthorizedError):
        await payment_store.apply(fresh, Capture(Money.of(2000, EUR)))
    captured = await payment_store.apply(fresh, Capture(Money.of(100, EUR)))
    with pytest.raises(RefundExceedsCapturedError):
        await payment_store.apply(captured, Refund(Money.of(101, EUR)))
    assert await payment_store.get_payment("mer_a", voided.id) == voided
    assert await payment_store.get_payment("mer_a", captured.id) == captured


async def test_duplicate_observation_writes_nothing(payment_store: PaymentStore) -> None:
    payment = await _authorized(payment_store)
    same = await payment_store.apply(payment, Observe(S.AUTHORIZED))
    assert same.version == payment.version
    assert (await payment_store.get_payment("mer_a", payment.id)).version == payment.version


async def test_stale_write_is_a_retryable_conflict(payment_store: PaymentStore) -> None:
    payment = await _authorized(payment_store)
    await payment_store.apply(payment, Capture(Money.of(1050, EUR)))  # another request wins
    with pytest.raises(ConcurrentUpdateError) as caught:
        await payment_store.apply(payment, Void())  # based on the stale "authorized" copy
    assert caught.value.code == "concurrent_update" and caught.value.retry_after
    stored = await payment_store.get_payment("mer_a", payment.id)
    assert stored.status is S.CAPTURED
    # With retries the store re-reads: the webhook's "captured" then converges as a no-op.
    converged = await payment_store.apply(payment, S.CAPTURED, retries=1)
    assert converged == stored


async def test_apply_seen_names_the_record_it_applied_to(payment_store: PaymentStore) -> None:
    """What changed is judged against the stored record, not the caller's stale snapshot (a
    notification built from the snapshot announced a concurrent settler's change again)."""
    created = await _payment(payment_store)
    authorized = await payment_store.apply(created, S.AUTHORIZED)  # another settler wins
    before, after = await payment_store.apply_seen(created, S.AUTHORIZED, retries=1)
    assert before == after == authorized  # nothing written, nothing to announce
    before, after = await payment_store.apply_seen(created, S.CAPTURED, retries=1)
    assert before == authorized and after.status is S.CAPTURED
    assert after.version == authorized.version + 1
    before, after = await payment_store.apply_seen(after, Observe(S.CAPTURED))
    assert before == after  # a duplicate observation


async def test_racing_writers_exactly_one_wins(payment_store: PaymentStore) -> None:
    payment = await _authorized(payment_store)
    results = await asyncio.gather(
        *(payment_store.apply(payment, Capture(Money.of(10, EUR))) for _ in range(10)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, PaymentRecord)]
    assert len(winners) == 1
    assert all(isinstance(r, ConcurrentUpdateError) for r in results if r not in winners)
    assert (await payment_store.get_payment("mer_a", payment.id)).captured == 10


async def test_two_processes_conflict_on_one_database(
    database_url: str, payment_store: PaymentStore
) -> None:
    payment = await _authorized(payment_store)
    other_db = await open_database(database_url)
    try:
        other = PaymentStore(other_db)
        copy = await other.get_payment("mer_a", payment.id)
        await other.apply(copy, Void())
        with pytest.raises(ConcurrentUpdateError):
            await payment_store.apply(payment, Capture(Money.of(5, EUR)))
    finally:
        await other_db.close()


async def test_apply_and_notification_commit_together(
    db: Database, payment_store: PaymentStore, outbox: Outbox
) -> None:
    payment = await _authorized(payment_store)
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await payment_store.apply(payment, Void(), tx=tx)
            await outbox.enqueue(tx, "mer_a", "payment.voided", {"id": payment.id})
            raise RuntimeError("the request failed after the write")
    assert (await payment_store.get_payment("mer_a", payment.id)).status is S.AUTHORIZED
    assert await outbox.for_merchant("mer_a") == []
    async with db.transaction() as tx:
        voided = await payment_store.apply(payment, Void(), tx=tx)
        await outbox.enqueue(tx, "mer_a", "payment.voided", {"id": payment.id})
    assert (await payment_store.get_payment("mer_a", payment.id)) == voided
    assert [n.event_type for n in await outbox.for_merchant("mer_a")] == ["payment.voided"]


# -- attempts -----------------------------------------------------------------------------------


def test_provider_keys_are_deterministic_and_distinct() -> None:
    key = provider_idempotency_key("mer_a", "pay_1", 1, "authorize")
    assert key == provider_idempotency_key("mer_a", "pay_1", 1, "authorize")
    assert uuid.UUID(key).version == 5
    others = {
        provider_idempotency_key("mer_b", "pay_1", 1, "authorize"),
        provider_idempotency_key("mer_a", "pay_2", 1, "authorize"),
        provider_idempotency_key("mer_a", "pay_1", 2, "authorize"),
        provider_idempotency_key("mer_a", "pay_1", 1, "capture"),
    }
    assert key not in others and len(others) == 4


async def test_attempt_round_trip(payment_store: PaymentStore, clock: FakeClock) -> None:
    payment = await _payment(payment_store)
    first = await payment_store.start_attempt(payment, "sandbox", "authorize")
    assert (first.seq, first.in_flight, first.needs_reconciliation) == (1, True, True)
    assert first.provider_idempotency_key == provider_idempotency_key(
        "mer_a", payment.id, 1, "authorize"
    )
    assert await payment_store.get_attempt(first.id) == first
    clock.advance(1)
    result = PaymentResult(
        status=S.AUTHORIZED, outcome=Outcome.SUCCEEDED, provider_reference="psp_1"
    )
    done = await payment_store.finish_attempt(first.id, result)
    assert (done.outcome, done.status, done.provider_reference) == (
        Outcome.SUCCEEDED,
        S.AUTHORIZED,
        "psp_1",
    )
    assert done.finished_at == clock.now() and done.next_reconcile_at is None
    capture = await payment_store.start_attempt(
        payment, "sandbox", "capture", amount=Money.of(500, EUR)
    )
    assert capture.seq == 2 and capture.amount == Money.of(500, EUR)
    assert await payment_store.attempts(payment.id) == [done, capture]


async def test_finishing_twice_is_idempotent_but_not_contradictory(
    payment_store: PaymentStore,
) -> None:
    payment = await _payment(payment_store)
    attempt = await payment_store.start_attempt(payment, "sandbox", "authorize")
    declined = PaymentResult.declined(DeclineCode.DO_NOT_HONOR, provider_code="05")
    first = await payment_store.finish_attempt(attempt.id, declined)
    assert first.error_code == "do_not_honor"
    assert await payment_store.finish_attempt(attempt.id, declined) == first
    with pytest.raises(IllegalTransitionError):
        await payment_store.finish_attempt(
            attempt.id, PaymentResult(status=S.AUTHORIZED, outcome=Outcome.SUCCEEDED)
        )


async def test_concurrent_attempts_get_distinct_sequence_numbers(
    payment_store: PaymentStore,
) -> None:
    payment = await _payment(payment_store)
    attempts = await asyncio.gather(
        *(payment_store.start_attempt(payment, "sandbox", "sync") for _ in range(8))
    )
    assert sorted(a.seq for a in attempts) == list(range(1, 9))
    assert len({a.provider_idempotency_key for a in attempts}) == 8


async def test_expected_sequence_number_is_used_or_the_next_free_one(
    payment_store: PaymentStore, db: Database
) -> None:
    payment = await _payment(payment_store)
    async with db.transaction() as tx:
        first = await payment_store.start_attempt(payment, "sandbox", "authorize", seq=1, tx=tx)
    assert first.seq == 1
    # A stale expectation (seq 1 is taken) still gets a number, the next free one.
    second = await payment_store.start_attempt(payment, "sandbox", "capture", seq=1)
    assert second.seq == 2
    assert second.provider_idempotency_key == provider_idempotency_key(
        "mer_a", payment.id, 2, "capture"
    )
    assert await payment_store.attempts(payment.id) == [first, second]


# -- one money-moving operation at a time (migration 2) -------------------------------------


async def test_one_open_money_moving_operation_per_payment(
    database_url: str, payment_store: PaymentStore
) -> None:
    """Two processes start a capture and a refund on one payment at once: exactly one attempt
    is made, the other gets OperationInProgressError; syncs are never held up; once the first
    settles, the next operation starts."""
    payment = await _authorized(payment_store)
    other_db = await open_database(database_url)
    try:
        other = PaymentStore(other_db)
        results = await asyncio.gather(
            payment_store.start_attempt(payment, "sandbox", "capture"),
            other.start_attempt(payment, "sandbox", "refund"),
            payment_store.start_attempt(payment, "sandbox", "void"),
            return_exceptions=True,
        )
    finally:
        await other_db.close()
    [started] = [r for r in results if isinstance(r, AttemptRecord)]
    refused = [r for r in results if isinstance(r, OperationInProgressError)]
    assert len(refused) == 2, results
    assert all(started.operation in str(e) for e in refused)
    await payment_store.start_attempt(payment, "sandbox", "sync")  # reading is never locked

    # An unknown outcome keeps the payment locked (nothing may be sent on a guess) ...
    await payment_store.finish_attempt(started, PaymentResult.unknown())
    with pytest.raises(OperationInProgressError):
        await payment_store.start_attempt(payment, "sandbox", "capture")
    # ... until reconciliation settles it; a refused (not sent) attempt never locks.
    await payment_store.finish_attempt(
        started, PaymentResult(outcome=Outcome.SUCCEEDED, status=S.CAPTURED)
    )
    nxt = await payment_store.start_attempt(payment, "sandbox", "capture")
    await payment_store.finish_attempt(nxt, PaymentResult.not_sent(), error_code="connector_busy")
    await payment_store.start_attempt(payment, "sandbox", "void")
    ops = [a.operation for a in await payment_store.attempts(payment.id)]
    assert ops == [started.operation, "sync", "capture", "void"]


async def test_a_payment_is_submitted_once(payment_store: PaymentStore) -> None:
    payment = await _authorized(payment_store)
    first = await payment_store.start_attempt(payment, "bank", "submit")
    await payment_store.finish_attempt(
        first, PaymentResult(outcome=Outcome.SUCCEEDED, status=S.PENDING)
    )  # pending: no longer "open" for other operations, but submitted
    with pytest.raises(OperationInProgressError, match="submitted already"):
        await payment_store.start_attempt(payment, "bank", "submit")


async def test_migration_2_names_the_payments_an_earlier_build_left_it(
    db: Database, clock: FakeClock
) -> None:
    """A database from before migration 2 with two open captures on one payment and two
    submits of another: the upgrade stops with the payments named (not a bare unique-constraint
    error) and applies nothing; once the rows are settled as docs/operating.md says, it runs."""
    from gateway.payments.schema import MIGRATIONS
    from vault.database import migrate

    await migrate(db, "gateway.payments", MIGRATIONS[:1])
    old = PaymentStore(db, clock=clock)  # the old build wrote through the same statements
    doubled = await _authorized(old)
    first = await old.start_attempt(doubled, "sandbox", "capture")
    await old.start_attempt(doubled, "sandbox", "capture")
    submitted = await _authorized(old)
    await old.start_attempt(submitted, "bank", "submit")
    second_submit = await old.start_attempt(submitted, "bank", "submit")

    with pytest.raises(MigrationConflictError) as info:
        await PaymentStore(db, clock=clock).migrate()
    message = str(info.value)
    assert f"{doubled.id} (open operations)" in message
    assert f"{submitted.id} (submits)" in message
    assert "Upgrading: payments migration 2" in message
    applied = await db.fetchval(
        "SELECT COUNT(*) FROM schema_migrations WHERE component = 'gateway.payments'"
    )
    assert applied == 1

    # The operator's settlement (docs/operating.md): one capture never happened; the second
    # submit is set aside under another operation name (the row is kept).
    await db.execute(
        "UPDATE payment_attempts SET outcome = 'not_sent', status = 'failed', "
        "error_code = 'settled_by_operator', next_reconcile_at = NULL WHERE id = $1",
        first.id,
    )
    await db.execute(
        "UPDATE payment_attempts SET operation = 'submit_duplicate' WHERE id = $1",
        second_submit.id,
    )
    await PaymentStore(db, clock=clock).migrate()
    with pytest.raises(OperationInProgressError):
        await old.start_attempt(doubled, "sandbox", "void")  # the other capture is still open


async def test_reserved_refunds_count_pending_ones_only(payment_store: PaymentStore) -> None:
    payment = await _authorized(payment_store)
    assert await payment_store.reserved_refunds(payment.id) == 0
    pending = await payment_store.add_refund(payment, Money.of(300, EUR))
    settled = await payment_store.add_refund(payment, Money.of(200, EUR))
    failed = await payment_store.add_refund(payment, Money.of(100, EUR))
    await payment_store.update_refund(settled.id, status=RefundStatus.SUCCEEDED)
    await payment_store.update_refund(failed.id, status=RefundStatus.FAILED)
    assert pending.status is RefundStatus.PENDING
    assert await payment_store.reserved_refunds(payment.id) == 300


async def test_refused_attempt_is_settled_not_sent_and_never_reconciled(
    payment_store: PaymentStore, clock: FakeClock
) -> None:
    payment = await _payment(payment_store)
    refused = await payment_store.refused_attempt(
        payment, "sandbox", "authorize", error_code="connector_unavailable", seq=1
    )
    assert (refused.outcome, refused.status, refused.error_code) == (
        Outcome.NOT_SENT,
        S.FAILED,
        "connector_unavailable",
    )
    assert refused.finished_at == clock.now() and not refused.needs_reconciliation
    assert await payment_store.get_attempt(refused.id) == refused
    nxt = await payment_store.start_attempt(payment, "backup", "authorize", seq=2)
    assert nxt.seq == 2
    clock.advance(3600)
    assert [a.id for a in await payment_store.due_for_reconciliation(clock.now())] == [nxt.id]


async def test_finish_with_the_record_schedules_from_its_count(
    payment_store: PaymentStore, clock: FakeClock
) -> None:
    payment = await _payment(payment_store)
    attempt = await payment_store.start_attempt(payment, "sandbox", "authorize")
    unknown = await payment_store.finish_attempt(attempt, PaymentResult.unknown())
    assert unknown.outcome is Outcome.UNKNOWN and unknown.next_reconcile_at is not None
    assert unknown.next_reconcile_at > clock.now()
    assert await payment_store.get_attempt(attempt.id) == unknown
    # An unknown attempt is still open: its settling answer (with a reference) is taken.
    done = await payment_store.finish_attempt(
        unknown,
        PaymentResult(status=S.AUTHORIZED, outcome=Outcome.SUCCEEDED, provider_reference="p_9"),
    )
    assert (done.outcome, done.provider_reference, done.next_reconcile_at) == (
        Outcome.SUCCEEDED,
        "p_9",
        None,
    )
    # A later answer without a reference keeps the one recorded.
    same = await payment_store.finish_attempt(
        done, PaymentResult(status=S.AUTHORIZED, outcome=Outcome.SUCCEEDED)
    )
    assert same == done
    with pytest.raises(IllegalTransitionError):
        await payment_store.finish_attempt(done, PaymentResult.not_sent())


async def test_concurrent_finishers_settle_an_attempt_once(payment_store: PaymentStore) -> None:
    payment = await _payment(payment_store)
    attempt = await payment_store.start_attempt(payment, "sandbox", "authorize")
    authorized = PaymentResult(status=S.AUTHORIZED, outcome=Outcome.SUCCEEDED)
    declined = PaymentResult.declined(DeclineCode.DO_NOT_HONOR)
    results = await asyncio.gather(
        payment_store.finish_attempt(attempt, authorized),
        payment_store.finish_attempt(attempt, declined),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], IllegalTransitionError)


# -- reconciliation -----------------------------------------------------------------------------


async def test_reconciliation_due_list_and_backoff(db: Database, clock: FakeClock) -> None:
    policy = ReconcilePolicy(
        backoff=ExponentialBackoff(
            first_delay=timedelta(seconds=10), max_delay=timedelta(seconds=60), jitter=0
        ),
        in_flight_grace=timedelta(seconds=30),
    )
    store = PaymentStore(db, clock=clock, reconcile_policy=policy)
    await store.migrate()
    payment = await _payment(store)
    unknown = await store.start_attempt(payment, "sandbox", "authorize")
    await store.finish_attempt(unknown.id, PaymentResult.unknown())
    pending = await store.start_attempt(payment, "sandbox", "capture")
    await store.finish_attempt(
        pending.id, PaymentResult(status=S.PENDING, outcome=Outcome.SUCCEEDED)
    )
    settled = await store.start_attempt(payment, "sandbox", "void")
    await store.finish_attempt(
        settled.id, PaymentResult(status=S.VOIDED, outcome=Outcome.SUCCEEDED)
    )
    abandoned = await store.start_attempt(payment, "sandbox", "refund")  # its process "died"

    assert await store.due_for_reconciliation(clock.now()) == []
    clock.advance(10)  # first backoff step
    due = await store.due_for_reconciliation(clock.now())
    assert {a.id for a in due} == {unknown.id, pending.id}
    clock.advance(20)  # the in-flight grace has passed too
    due = await store.due_for_reconciliation(clock.now())
    assert {a.id for a in due} == {unknown.id, pending.id, abandoned.id}
    assert settled.id not in {a.id for a in due}
    assert len(await store.due_for_reconciliation(clock.now(), limit=2)) == 2

    # A sync that left it open: the count goes up and the wait doubles, up to the cap.
    waits = []
    for _ in range(4):
        again = await store.schedule_reconcile(unknown.id)
        assert again.next_reconcile_at is not None
        waits.append((again.next_reconcile_at - clock.now()).total_seconds())
    assert waits == [20, 40, 60, 60]
    assert (await store.get_attempt(unknown.id)).reconcile_count == 4
    explicit = clock.now() + timedelta(seconds=5)
    assert (await store.schedule_reconcile(pending.id, explicit)).next_reconcile_at == explicit

    # The sync found the answer: nothing is due for that attempt any more.
    await store.finish_attempt(
        unknown.id, PaymentResult(status=S.AUTHORIZED, outcome=Outcome.SUCCEEDED)
    )
    clock.advance(3600)
    due_ids = {a.id for a in await store.due_for_reconciliation(clock.now())}
    assert due_ids == {pending.id, abandoned.id}


async def test_reconcilers_never_claim_the_same_attempt(
    database_url: str, payment_store: PaymentStore, clock: FakeClock
) -> None:
    payment = await _payment(payment_store)
    for _ in range(12):
        attempt = await payment_store.start_attempt(payment, "sandbox", "sync")
        await payment_store.finish_attempt(attempt.id, PaymentResult.unknown())
    clock.advance(3600)
    other_db = await open_database(database_url)
    try:
        other = PaymentStore(other_db, clock=clock)
        batches = await asyncio.gather(
            payment_store.claim_for_reconciliation(limit=5),
            other.claim_for_reconciliation(limit=5),
            payment_store.claim_for_reconciliation(limit=5),
        )
    finally:
        await other_db.close()
    ids = [a.id for batch in batches for a in batch]
    assert len(ids) == len(set(ids)) == 12
    # Leased: not due again until the lease runs out.
    assert await payment_store.due_for_reconciliation(clock.now()) == []
    clock.advance(61)
    assert len(await payment_store.due_for_reconciliation(clock.now())) == 12


# -- refunds ------------------------------------------------------------------------------------


async def test_refund_round_trip(payment_store: PaymentStore, clock: FakeClock) -> None:
    payment = await _authorized(payment_store)
    first = await payment_store.add_refund(payment, Money.of(300, EUR))
    assert first.id.startswith("re_") and first.status is RefundStatus.PENDING
    clock.advance(1)
    second = await payment_store.add_refund(payment, Money.of(200, EUR))
    done = await payment_store.update_refund(
        first.id, status=RefundStatus.SUCCEEDED, provider_reference="rf_1"
    )
    assert (done.status, done.provider_reference) == (RefundStatus.SUCCEEDED, "rf_1")
    failed = await payment_store.update_refund(second.id, status=RefundStatus.FAILED)
    assert failed.provider_reference is None
    kept = await payment_store.update_refund(first.id, status=RefundStatus.SUCCEEDED)
    assert kept.provider_reference == "rf_1"  # KEEP: the reference stays
    done = await payment_store.update_refund(
        first.id, status=RefundStatus.SUCCEEDED, provider_reference="rf_1"
    )
    assert await payment_store.refunds(payment.id) == [done, failed]
    with pytest.raises(NotFoundError):
        await payment_store.update_refund("re_missing", status=RefundStatus.FAILED)
    with pytest.raises(InvalidRequestError):
        await payment_store.add_refund(payment, Money.of(1, "USD"))


# -- webhook events -----------------------------------------------------------------------------


async def test_webhook_event_recorded_once(payment_store: PaymentStore, clock: FakeClock) -> None:
    assert await payment_store.record_webhook_event("sandbox", "evt_1") is True
    assert await payment_store.record_webhook_event("sandbox", "evt_1") is False
    assert await payment_store.record_webhook_event("other", "evt_1") is True
    await payment_store.forget_webhook_event("sandbox", "evt_1")
    assert await payment_store.record_webhook_event("sandbox", "evt_1") is True
    clock.advance(10)
    assert await payment_store.purge_webhook_events(clock.now()) == 2
    assert await payment_store.record_webhook_event("other", "evt_1") is True


async def test_concurrent_duplicate_webhooks_exactly_one_wins(
    database_url: str, payment_store: PaymentStore
) -> None:
    other_db = await open_database(database_url)
    try:
        other = PaymentStore(other_db)
        stores = [payment_store, other] * 15
        results = await asyncio.gather(
            *(store.record_webhook_event("sandbox", "evt_dup") for store in stores)
        )
    finally:
        await other_db.close()
    assert results.count(True) == 1 and len(results) == 30
