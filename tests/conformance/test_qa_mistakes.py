"""What a QA engineer new to the kit gets wrong, and what the kit answers (found by following
docs/conformance.md literally):

- options a mode would silently ignore, a replay with no cassettes, a ``--select`` matching
  nothing and report paths that cannot be written stop the run with exit code 2 and one line
  saying why, before anything runs (they used to run and "pass" or fail on coverage, or crash
  with a traceback after the whole run);
- a sandbox profile loads only for its own environment, and a live one never holds credentials;
- an uncovered capability names the scenarios that were skipped for it, and why;
- a partial run (``--select``, ``-k``) or an unhealthy sandbox does not judge coverage, and every
  report says so: the JUnit ``coverage`` case is skipped, and the suite's counts match its cases;
- in the pytest plugin, a run that cannot start fails each item with the reason, no traceback;
- the inputs a profile lacks are named from the skip itself (``MissingInputError.name``), not
  read back from its wording;
- an approved card of one minor unit still gets a partial capture or refund of one unit (half of
  it used to be 0, which no request takes: the scenarios crashed).
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conformance.cli import _summary, main
from conformance.environment import Mode, RunConfig, SetupError
from conformance.inputs import Canary, Inputs, MissingInputError
from conformance.leaks import LeakScanner
from conformance.reports import render_html, render_json, render_junit
from conformance.results import RunReport, RunStatus, ScenarioResult, Verdict
from conformance.runner import ConformanceRun
from conformance.sandboxes import (
    BUILTIN_DIR,
    SandboxProfile,
    SandboxProfileError,
    load_sandbox_profile,
)
from connectors.sandbox import SandboxConnector
from sdk.testing import FakeTokenRevealer
from tests.conformance.conftest import Register, by_id, run_kit, write_profile
from tests.conformance.rails import OB_PROFILE, RailOpenBankingConnector, create_ob_app

pytest_plugins = ["pytester"]

KNOWN = frozenset({"card.authorize.approved"})


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["run", "--connector", "sandbox", "--quiet", *args])
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "replay", "--cassettes", "{tmp}/nope"], "No cassette directory"),
        (["--mode", "replay", "--cassettes", "{tmp}"], "No cassettes in"),
        (["--base-url", "http://127.0.0.1:9"], "--base-url is for --mode live"),
        (["--mode", "replay", "--vault-path", "secret/x"], "--vault-path is for --mode live"),
        (["--cassettes", "{tmp}"], "--cassettes without --record does nothing"),
        (["--mode", "replay", "--record"], "--record records a simulator run"),
        (["--mode", "live", "--faults"], "--faults injects faults"),
        (["--select", "card.authorise*"], "--select card.authorise*: no scenario"),
        (["--junit", "{tmp}"], "--junit {tmp}: is a directory"),
        (["--json", "{tmp}/r.json", "--html", "{tmp}/r.json"], "both write"),
    ],
)
def test_usage_mistakes_exit_2_before_anything_runs(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _cli(capsys, *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert code == 2
    assert err.startswith("conformance: error: ") and message.replace("{tmp}", str(tmp_path)) in err
    assert "Traceback" not in err


def test_an_unwritable_report_path_exits_2_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = _cli(capsys, "--junit", str(blocker / "sub" / "r.xml"))
    assert code == 2 and "cannot create its directory" in err
    assert capsys.readouterr().out == ""  # no scenario ran


def test_live_mode_names_the_missing_variables_before_starting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TESSERA_SANDBOX_API_KEY", raising=False)
    with pytest.raises(SetupError, match="Set TESSERA_SANDBOX_API_KEY or use --vault-path"):
        ConformanceRun(RunConfig(connector="sandbox", mode=Mode.LIVE, base_url="http://x.invalid"))


def test_a_profile_loads_only_for_its_own_environment(tmp_path: Path) -> None:
    live = write_profile(tmp_path, {"connector": "sandbox", "environment": "live"}, "live.json")
    with pytest.raises(SandboxProfileError, match="written for the 'live' environment, not 'sim"):
        load_sandbox_profile("sandbox", "simulator", [live], known_scenarios=KNOWN, builtin=False)
    simulator = write_profile(
        tmp_path, {"connector": "sandbox", "environment": "simulator"}, "sim.json"
    )
    profile = load_sandbox_profile("sandbox", "replay", [simulator], builtin=False)
    assert profile.files == [str(simulator)]  # replay takes simulator files, as documented
    typo = write_profile(tmp_path, {"connector": "sandbox", "environment": "staging"}, "t.json")
    with pytest.raises(SandboxProfileError, match="environment"):
        load_sandbox_profile("sandbox", "live", [typo], builtin=False)


def test_a_live_profile_may_not_hold_credentials(tmp_path: Path) -> None:
    secret = write_profile(
        tmp_path,
        {"connector": "sandbox", "environment": "live", "credentials": {"api_key": "sk_x"}},
    )
    with pytest.raises(SandboxProfileError, match="must not hold credentials") as raised:
        load_sandbox_profile("sandbox", "live", [secret], builtin=False)
    assert "sk_x" not in str(raised.value)


def _result(
    scenario_id: str, verdict: Verdict, reason: str = "", missing_input: str | None = None
) -> ScenarioResult:
    return ScenarioResult(
        scenario_id=scenario_id,
        title=scenario_id,
        profile="card-acquirer",
        covers=("operation:void",),
        verdict=verdict,
        reason=reason,
        missing_input=missing_input,
    )


def test_an_uncovered_capability_names_the_skipped_scenarios_and_why() -> None:
    from conformance.capabilities import compute_coverage

    report = RunReport("sandbox", "Sandbox", "card-acquirer", "live", "live", "", "now")
    report.scenarios = [_result("card.void", Verdict.SKIPPED, "skipped by the sandbox profile: x")]
    report.coverage = compute_coverage(["operation:void", "operation:verify"], report.scenarios)
    problems = report.problems()
    assert sorted(problems) == [
        "declared capability 'operation:verify' is not covered by any scenario that ran and "
        "passed (no scenario in the profile exercises it)",
        "declared capability 'operation:void' is not covered by any scenario that ran and passed "
        "(skipped: card.void (skipped by the sandbox profile: x))",
    ]


def test_a_partial_run_does_not_judge_coverage_and_says_so() -> None:
    run = ConformanceRun(RunConfig(connector="sandbox"))  # constructing starts nothing
    run.report.scenarios.append(_result("card.void", Verdict.PASSED))  # as after `-k void`
    report = run.finish()
    assert report.coverage_skip is not None and "did not run" in report.coverage_skip
    assert report.status is RunStatus.PASSED and report.problems() == []
    assert report.to_dict()["coverage_skip"] == report.coverage_skip


@pytest.mark.parametrize("unhealthy", [False, True])
def test_junit_counts_match_its_cases_when_coverage_is_not_judged(unhealthy: bool) -> None:
    report = RunReport("sandbox", "Sandbox", "card-acquirer", "live", "live", "", "now")
    report.scenarios = [_result("card.void", Verdict.SKIPPED, "why"), _result("a", Verdict.PASSED)]
    if unhealthy:
        report.skip_reason = "sandbox unhealthy: GET / answered 503"
    report.coverage_skip = "not judged: " + (report.skip_reason or "--select ran part of it")
    suite = ET.fromstring(render_junit(report)).find("testsuite")  # noqa: S314 - our own XML
    assert suite is not None
    cases = suite.findall("testcase")
    assert suite.get("tests") == str(len(cases)) == "4"
    # An unhealthy sandbox also skips the leak-scan case: nothing ran, so nothing was scanned.
    skipped = "3" if unhealthy else "2"
    assert suite.get("skipped") == str(sum(c.find("skipped") is not None for c in cases)) == skipped
    assert suite.get("failures") == str(sum(c.find("failure") is not None for c in cases)) == "0"
    coverage = next(c for c in cases if c.get("name") == "coverage").find("skipped")
    assert coverage is not None and coverage.get("message", "").startswith("coverage not judged")


def test_a_plugin_run_that_cannot_start_fails_each_item_with_the_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest_subprocess(
        "--tessera-connector",
        "sandbox",
        "--tessera-mode",
        "live",
        "--tessera-vault-path",
        "secret/tessera/sandbox",
        "-k",
        "authorize.approved or coverage",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*the conformance run of 'sandbox' could not start: --tessera-vault-path needs "
            "VAULT_ADDR*"
        ]
    )
    assert "Traceback" not in result.stdout.str() and "CallInfo" not in result.stdout.str()


def test_the_plugin_refuses_report_paths_as_the_cli_does(pytester: pytest.Pytester) -> None:
    """One rule (``conformance.reports.check_report_paths``) for both: a usage error before
    anything runs, naming the plugin's option."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest_subprocess(
        "--tessera-connector",
        "sandbox",
        "--tessera-html",
        str(pytester.path),
        "-p",
        "no:cacheprovider",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--tessera-html *: is a directory; give a file name.*"])


def test_scenarios_skipped_for_want_of_a_magic_value_are_named_even_when_quiet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Under ``--quiet`` only failures are printed: a profile short of decline inputs used to
    pass with "24 skipped" and no word on which inputs to add. The summary, the JSON and the
    HTML reports now name each input and the scenarios it would run."""
    inputs = Inputs(
        SandboxProfile(connector="sandbox", environment="simulator"),
        SandboxConnector.manifest,
        FakeTokenRevealer(),
        Canary("4000000000000002", "123"),
        LeakScanner(),
    )
    with pytest.raises(MissingInputError) as raised:
        inputs.require("card.declined.lost_card")
    assert raised.value.name == "card.declined.lost_card"
    lost = raised.value.name
    report = RunReport("sandbox", "Sandbox", "card-acquirer", "simulator", "simulator", "", "now")
    report.scenarios = [
        _result("card.decline[lost_card]", Verdict.SKIPPED, str(raised.value), lost),
        _result("card.decline.sync[lost_card]", Verdict.SKIPPED, str(raised.value), lost),
        _result(
            "card.decline[stolen_card]",
            Verdict.SKIPPED,
            "no magic value for 'card.declined.stolen_card' in the sandbox profile (x.json)",
            "card.declined.stolen_card",
        ),
        _result("card.verify", Verdict.SKIPPED, "the manifest does not declare verify"),
        _result("card.void", Verdict.PASSED),
    ]
    assert report.missing_inputs() == {
        "card.declined.lost_card": ["card.decline[lost_card]", "card.decline.sync[lost_card]"],
        "card.declined.stolen_card": ["card.decline[stolen_card]"],
    }
    _summary(report, sys.stdout, {})
    out = capsys.readouterr().out
    assert (
        "skipped for want of a magic value in the sandbox profile: card.declined.lost_card "
        "(2 scenarios), card.declined.stolen_card (card.decline[stolen_card])"
    ) in out
    assert json.loads(render_json(report))["missing_inputs"] == report.missing_inputs()
    assert "No magic value for card.declined.stolen_card" in render_html(report)


async def test_a_run_names_the_inputs_its_scenarios_were_skipped_for(
    register: Register, tmp_path: Path
) -> None:
    """The runner takes the input from the ``MissingInputError`` a scenario raised (through
    ``Inputs.require``), not from the skip's wording; a skip that merely mentions an input (a
    profile's own reason) names none."""
    register(RailOpenBankingConnector, create_ob_app)
    profile = {
        **OB_PROFILE,
        "inputs": {"consent.expired": OB_PROFILE["inputs"]["consent.expired"]},
        "scenarios": {"ob.sync": {"skip": "no magic value for 'consent.approve', says the bank"}},
    }
    report = await run_kit(
        "rail_ob",
        overrides=(write_profile(tmp_path, profile),),
        select=("ob.payment.completed", "ob.consent.rejected", "ob.sync"),
    )
    results = by_id(report)
    assert {r.verdict for r in results.values()} == {Verdict.SKIPPED}
    completed = results["ob.payment.completed"]
    assert completed.missing_input == "consent.approve"
    assert completed.reason.startswith("no magic value for 'consent.approve' in the sandbox ")
    assert results["ob.sync"].missing_input is None
    assert report.missing_inputs() == {
        "consent.approve": ["ob.payment.completed"],
        "consent.reject": ["ob.consent.rejected"],
    }
    assert json.loads(render_json(report))["missing_inputs"] == report.missing_inputs()


async def test_a_one_unit_approved_card_is_still_captured_and_refunded_in_part(
    tmp_path: Path,
) -> None:
    """Half of one minor unit is one unit (``flows.half``), never 0: a capture or refund of 0
    is refused by ``Money``'s request models, and the scenarios crashed on it."""
    data = json.loads((BUILTIN_DIR / "sandbox" / "simulator.json").read_text())
    data["inputs"]["card.approved"] = {"amount": 1, "currency": "EUR"}
    selected = ("card.capture.partial", "fault.retry_safe[capture]", "fault.retry_safe[refund]")
    report = await run_kit(
        "sandbox", overrides=(write_profile(tmp_path, data),), select=selected, faults=True
    )
    results = by_id(report)
    for scenario_id in selected:
        result = results[scenario_id]
        assert result.verdict is Verdict.PASSED, (scenario_id, result.reason)
    captured = [a for a in results["card.capture.partial"].assertions if a.step == "capture"]
    amount = {a.path: a.actual for a in captured}["amount_captured"]
    assert json.loads(amount) == {"value": 1, "currency": "EUR"}
