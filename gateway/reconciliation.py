"""Reconciliation: settle every attempt whose outcome is ``unknown`` or ``pending``.

``reconcile_once`` claims due attempts (a lease keeps two gateway processes from syncing the same
attempt) and hands each to ``PaymentService.reconcile``, which replays it with its own provider
idempotency key or syncs it; an attempt still open is rescheduled with exponential backoff.
``run_reconciler`` does that every ``interval`` seconds inside the gateway; ``tessera reconcile``
runs one pass from the command line.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from gateway.payment_service import PaymentService
from gateway.payments import PaymentStore
from normalization import TesseraError

__all__ = ["ReconcileReport", "reconcile_once", "run_reconciler"]

log = structlog.get_logger("tessera.reconciliation")


class ReconcileReport:
    def __init__(self) -> None:
        self.claimed = 0
        self.settled = 0
        self.failed = 0

    def __repr__(self) -> str:
        still_open = self.claimed - self.settled
        return f"claimed={self.claimed} settled={self.settled} still_open={still_open}"


async def reconcile_once(
    store: PaymentStore, service: PaymentService, *, limit: int = 50
) -> ReconcileReport:
    report = ReconcileReport()
    attempts = await store.claim_for_reconciliation(limit=limit)
    report.claimed = len(attempts)
    for attempt in attempts:
        try:
            if await service.reconcile(attempt):
                report.settled += 1
        except TesseraError as exc:
            report.failed += 1
            log.warning("reconcile_failed", attempt_id=attempt.id, code=exc.code)
            with contextlib.suppress(TesseraError):
                await store.schedule_reconcile(attempt.id)
        except Exception:
            report.failed += 1
            log.exception("reconcile_crashed", attempt_id=attempt.id)
    return report


async def run_reconciler(
    store: PaymentStore, service: PaymentService, *, interval: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            report = await reconcile_once(store, service)
            if report.claimed:
                log.info("reconciled", report=repr(report))
        except TesseraError as exc:
            log.warning("reconcile_pass_failed", code=exc.code)
        except Exception:
            log.exception("reconcile_pass_crashed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
