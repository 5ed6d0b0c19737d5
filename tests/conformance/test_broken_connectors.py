"""The kit can fail: each deliberately broken connector is caught by the scenario meant for it,
while the correct sandbox connector passes the same scenarios."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conformance.environment import RunConfig
from conformance.reports import render_reports
from conformance.results import RunStatus, Verdict
from conformance.runner import ConformanceRun
from connectors.sandbox.server import create_app
from tests.conformance.adyen_like import AdyenLikeConnector, NoReturnUrlConnector
from tests.conformance.adyen_like import create_app as create_adyen_app
from tests.conformance.broken import (
    FloatAmountConnector,
    ForgetfulProviderConnector,
    NoVoidConnector,
    PanInLogConnector,
    PanInStdlibLogConnector,
    PanPrintedConnector,
    RetriesAfterResetConnector,
    SyncByReferenceConnector,
    WrongStatusConnector,
    forgetful_simulator,
)
from tests.conformance.conftest import Register, by_id, run_kit, sandbox_profile_as, specs_dir


@pytest.mark.parametrize(
    ("connector", "simulator", "scenario", "faults", "reason"),
    [
        (
            WrongStatusConnector,
            create_app,
            "card.authorize.approved",
            False,
            'authorize.status: expected "authorized", got "captured"',
        ),
        (
            RetriesAfterResetConnector,
            create_app,
            "fault.reset_after_send",
            True,
            'call_not_retry_safe.outcome: expected "unknown", got "succeeded"',
        ),
        (
            FloatAmountConnector,
            create_app,
            "card.currency.roundtrip[EUR]",
            False,
            "authorize.amount_authorized: expected",
        ),
        (
            SyncByReferenceConnector,
            create_app,
            "fault.reset_after_send",
            True,
            "sync_after_unknown.outcome: expected",
        ),
        (
            ForgetfulProviderConnector,
            forgetful_simulator,
            "fault.retry_safe[authorize]",
            True,
            'call.provider_object: expected "same" or "not_named" or "read", got "other"',
        ),
        (
            ForgetfulProviderConnector,
            forgetful_simulator,
            "fault.retry_safe[refund]",
            True,
            'moved_once.amount: expected {"currency": "EUR", "value": 525}',
        ),
        (
            ForgetfulProviderConnector,
            forgetful_simulator,
            "fault.reset_after_send",
            True,
            'call_retry_safe.provider_object: expected "same" or "not_named" or "read", got "other"',
        ),
    ],
    ids=[
        "wrong-status-mapping",
        "authorize-retried-after-reset",
        "float-amounts",
        "sync-by-reference-loses-the-payment",
        "retry-safe-claim-the-provider-does-not-honour",
        "refund-retried-moves-the-money-twice",
        "retry-after-reset-makes-a-second-object",
    ],
)
async def test_broken_connector_fails_the_scenario_meant_for_it(
    register: Register,
    tmp_path: Path,
    connector: type,
    simulator: Any,
    scenario: str,
    faults: bool,
    reason: str,
) -> None:
    register(connector, simulator)
    connector_id = connector.manifest.id
    report = await run_kit(
        connector_id,
        overrides=(sandbox_profile_as(connector_id, tmp_path),),
        select=(scenario,),
        faults=faults,
    )
    result = by_id(report)[scenario]
    assert result.verdict is Verdict.FAILED, result.reason
    assert reason in result.reason
    assert result.exchanges, "a failing scenario shows its scrubbed exchanges"
    assert report.exit_code() == 1

    control = await run_kit("sandbox", select=(scenario,), faults=faults)
    assert by_id(control)[scenario].verdict is Verdict.PASSED, by_id(control)[scenario].reason


@pytest.mark.parametrize(
    ("connector", "origin"),
    [
        # The event (a name, not a message) and the field the card number was in.
        (PanInLogConnector, ("structlog info", "event 'authorizing_card', field 'number')")),
        (PanInStdlibLogConnector, ("logger 'tessera_broken' at INFO",)),
        (PanPrintedConnector, ("sys.stdout",)),
    ],
    ids=["structlog", "stdlib-logging-at-info", "print"],
)
async def test_a_pan_in_a_log_line_fails_the_inline_card_scenario(
    register: Register, tmp_path: Path, connector: type, origin: tuple[str, ...]
) -> None:
    """Whichever way it is written out: the SDK's logger, the standard library's ``logging``
    below the root's default WARNING (missed before), or ``print``."""
    register(connector, create_app)
    connector_id = connector.manifest.id  # type: ignore[attr-defined]
    run = ConformanceRun(
        RunConfig(
            connector=connector_id,
            overrides=(sandbox_profile_as(connector_id, tmp_path),),
            select=("card.leak.inline_card", "card.authorize.approved"),
        )
    )
    report = await run.run_all()
    results = by_id(report)
    leaked = results["card.leak.inline_card"]
    assert leaked.verdict is Verdict.FAILED
    assert "leak: canary PAN" in leaked.reason and "in log" in leaked.reason
    assert all(part in leaked.reason for part in origin), leaked.reason
    # Token-based card data never reaches the connector, so the other scenario stays clean.
    assert results["card.authorize.approved"].verdict is Verdict.PASSED
    assert {leak.source for leak in report.leaks} == {"log"}  # also echoed on stdout: twice
    rendered = render_reports(report, run.env.scanner, ["json", "html", "junit"])
    for text in rendered.values():
        assert run.env.canary.pan not in text
        assert "leak: canary PAN" in text


async def test_a_declared_capability_without_a_working_verb_fails_coverage(
    register: Register, tmp_path: Path
) -> None:
    register(NoVoidConnector, create_app)
    report = await run_kit("broken_void", overrides=(sandbox_profile_as("broken_void", tmp_path),))
    results = by_id(report)
    assert results["card.void"].verdict is Verdict.FAILED
    assert 'void.status: expected "voided"' in results["card.void"].reason
    assert report.coverage.uncovered == ["operation:void"]
    assert any(
        "'operation:void' is not covered" in problem and "card.void" in problem
        for problem in report.problems()
    )
    failed = [r.scenario_id for r in report.scenarios if r.verdict is Verdict.FAILED]
    assert failed == ["card.void"]
    assert report.status is RunStatus.FAILED


async def test_a_request_violating_the_provider_spec_fails_with_its_json_path(
    register: Register,
) -> None:
    spec = specs_dir() / "adyen-CheckoutService-v71.json"
    register(NoReturnUrlConnector, create_adyen_app)
    register(AdyenLikeConnector, create_adyen_app)
    report = await run_kit("adyen_no_return_url", openapi=spec, select=("card.authorize.approved",))
    result = by_id(report)["card.authorize.approved"]
    assert result.verdict is Verdict.FAILED
    assert [(v.direction, v.path, v.json_path, v.message) for v in result.violations] == [
        ("request", "/v71/payments", "$", "'returnUrl' is a required property")
    ]
    assert "contract violation" in result.reason
    # Every assertion held: only the contract check could see the defect.
    assert all(a.passed for a in result.assertions)

    correct = await run_kit("adyen_like", openapi=spec)
    assert correct.status is RunStatus.PASSED, correct.problems()
    assert not any(r.violations for r in correct.scenarios)
