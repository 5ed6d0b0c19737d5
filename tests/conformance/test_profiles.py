"""The bank-rail and open-banking profiles, end to end against small connectors and stateful
simulators of their own (``rails.py``): every scenario of each profile passes, coverage is
complete, and pending outcomes are awaited by polling."""

from __future__ import annotations

from pathlib import Path

from conformance.results import RunStatus, Verdict
from tests.conformance.conftest import Register, by_id, run_kit, write_profile
from tests.conformance.rails import (
    BANK_PROFILE,
    OB_PROFILE,
    RailBankConnector,
    RailOpenBankingConnector,
    create_bank_app,
    create_ob_app,
)


async def test_bank_rail_profile(register: Register, tmp_path: Path) -> None:
    register(RailBankConnector, create_bank_app)
    report = await run_kit(
        "rail_bank", overrides=(write_profile(tmp_path, BANK_PROFILE),), faults=True
    )
    assert report.status is RunStatus.PASSED, report.problems()
    results = by_id(report)
    for scenario in (
        "bank.credit",
        "bank.debit",
        "bank.settlement",
        "bank.return",
        "bank.invalid_account",
        "bank.idempotent_resubmission",
        "bank.currency.roundtrip[GBP]",
        "fault.reset_after_send",
        "fault.retry_safe[debit]",
    ):
        assert results[scenario].verdict is Verdict.PASSED, (scenario, results[scenario].reason)
    returned = [a for a in results["bank.return"].assertions if a.step == "returned"]
    assert {a.path for a in returned} >= {"decline.code", "decline.provider_code"}
    assert report.coverage.uncovered == []


async def test_open_banking_profile(register: Register, tmp_path: Path) -> None:
    register(RailOpenBankingConnector, create_ob_app)
    report = await run_kit("rail_ob", overrides=(write_profile(tmp_path, OB_PROFILE),), faults=True)
    assert report.status is RunStatus.PASSED, report.problems()
    results = by_id(report)
    for scenario in (
        "ob.consent.redirect",
        "ob.payment.completed",
        "ob.sync",
        "ob.consent.rejected",
        "ob.consent.expired",
        "ob.consent.idempotent",
        "ob.currency.roundtrip[GBP]",
    ):
        assert results[scenario].verdict is Verdict.PASSED, (scenario, results[scenario].reason)
    assert report.coverage.uncovered == []
