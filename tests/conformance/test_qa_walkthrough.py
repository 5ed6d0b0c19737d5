"""Defects a QA walkthrough of the kit found, each pinned by a test that failed before its fix:

1. a connector whose parser raises: the failure names the exception (type and message, redacted
   and scrubbed) and keeps its traceback, where it used to say only ``unknown``;
2. a sandbox profile removing an assertion the scenario does not have is refused, naming it, the
   closest assertion and all of them (it loaded, and removed nothing);
3. ``--profile`` other than the manifest's category is refused up front (exit 2), unless the run
   names its scenarios with ``--select``;
4. replay hints name the cassette directory the run used, in a command that works (they named
   no directory, or told the user to record into the kit's own);
5. the pytest plugin's errors name its own options (``--tessera-mode``), not the CLI's;
6. ``--verbose`` prints the connector's standard-library log records too, redacted;
7. under ``pytest --junitxml`` the items' ``classname`` is the kit's (it was empty);
8. a live run whose preflight failed reports the leak scan as not run, not as passed;
9. a connector sending its own idempotency key is told so, and what to do (the assertion said
   ``expected true, got false``, which reads as "no key was sent").
"""

from __future__ import annotations

import json
import logging
import re
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import pytest

from conformance.cassettes import BUILTIN_CASSETTES
from conformance.cli import main
from conformance.environment import Mode, RunConfig, SetupError
from conformance.reports import render_reports
from conformance.results import RunStatus, Verdict
from conformance.runner import ConformanceRun
from conformance.sandboxes import SandboxProfileError, load_sandbox_profile
from connectors.sandbox import SandboxConnector
from connectors.sandbox.server import create_app
from normalization import AuthorizeRequest, CardMethod, PaymentResult
from sdk import CallContext
from tests.conformance.broken import broken_manifest
from tests.conformance.conftest import Register, by_id, run_kit, sandbox_profile_as, write_profile

pytest_plugins = ["pytester"]

_INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
#: A Luhn-valid card number no sandbox profile names: only the generic scrubber can catch it.
_STRAY_PAN = "5105105105105100"


class ParserCrashConnector(SandboxConnector):
    """Its reply parser raises after the request went out (the runtime: outcome ``unknown``)."""

    manifest = broken_manifest("walk_parser")

    async def authorize(self, request: AuthorizeRequest, ctx: CallContext) -> PaymentResult:
        await super().authorize(request, ctx)
        method = request.payment_method
        if isinstance(method, CardMethod) and method.card is not None:
            # The leak probe's inline card: a message quoting card data must not reach a report.
            number = method.card.number.reveal()
            raise ValueError(f"cannot parse the reply for {number} (echoed as {_STRAY_PAN})")
        raise KeyError("authorization_id")


class StdlibLoggingConnector(SandboxConnector):
    """Logs through the standard library at INFO, once with the inline card's number."""

    manifest = broken_manifest("walk_stdlog")

    async def authorize(self, request: AuthorizeRequest, ctx: CallContext) -> PaymentResult:
        logger = logging.getLogger("tessera_walk")
        logger.info("authorizing %s %s", request.amount.value, request.amount.currency)
        method = request.payment_method
        if isinstance(method, CardMethod) and method.card is not None:
            logger.info("inline card %s", method.card.number.reveal())
        return await super().authorize(request, ctx)


class OwnKeyConnector(SandboxConnector):
    """Sets an idempotency key of its own (a fresh UUID per request) instead of letting
    ``ctx.send`` add the request's."""

    manifest = broken_manifest("walk_own_key")

    async def _send(self, ctx: CallContext, *args: Any, **kwargs: Any) -> httpx.Response:
        send = ctx.send

        async def own_key(*a: Any, headers: dict[str, str] | None = None, **kw: Any) -> Any:
            own = {**(headers or {}), "Idempotency-Key": f"own-{uuid.uuid4().hex}"}
            return await send(*a, headers=own, **kw)

        ctx.send = own_key  # type: ignore[method-assign]
        return await super()._send(ctx, *args, **kwargs)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["run", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- 1. a connector's exception is named in the failure -------------------------------------------


async def test_a_parser_exception_is_named_with_its_traceback(
    register: Register, tmp_path: Path
) -> None:
    register(ParserCrashConnector, create_app)
    profile = sandbox_profile_as("walk_parser", tmp_path)
    run = ConformanceRun(
        RunConfig(
            connector="walk_parser",
            overrides=(profile,),
            select=("card.authorize.approved", "card.leak.inline_card"),
        )
    )
    report = await run.run_all()
    approved = by_id(report)["card.authorize.approved"]
    assert approved.verdict is Verdict.FAILED
    assert 'authorize.status: expected "authorized", got "unknown"' in approved.reason
    assert "the connector's authorize raised KeyError: 'authorization_id'" in approved.reason
    assert "reports an exception after sending as unknown" in approved.reason
    assert approved.error is not None
    assert 'raise KeyError("authorization_id")' in approved.error  # the line that broke
    rendered = render_reports(report, run.env.scanner, ["json", "html", "junit"])
    for text in rendered.values():
        assert "KeyError: &#x27;authorization_id&#x27;" in text or "KeyError: 'author" in text

    # The message quoted card data: the reason and the traceback show neither number, and the
    # leak scan still finds the canary where it was written.
    probe = by_id(report)["card.leak.inline_card"]
    assert probe.verdict is Verdict.FAILED
    assert "raised ValueError: cannot parse the reply for [CANARY]" in probe.reason
    assert "leak: canary PAN" in probe.reason and "exception or result text" in probe.reason
    assert len(report.leaks) == 1  # found once, where it was written
    canary = run.env.canary.pan
    for text in (probe.reason, probe.error or "", *rendered.values()):
        assert canary not in text and _STRAY_PAN not in text
    assert probe.error is not None and "510510******5100" in probe.error  # masked, as transcripts


def test_the_console_names_the_parser_exception(
    register: Register, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register(ParserCrashConnector, create_app)
    profile = sandbox_profile_as("walk_parser", tmp_path)
    code, out, _ = _cli(
        capsys,
        "--connector",
        "walk_parser",
        "--overrides",
        str(profile),
        "--select",
        "card.authorize.approved",
        "--quiet",
    )
    assert code == 1
    assert "FAIL card.authorize.approved" in out
    assert "raised KeyError: 'authorization_id'" in out


# -- 2. a removal must name an assertion -----------------------------------------------------------

_KNOWN = frozenset({"card.authorize.approved", "card.capture.full"})


def _assertions() -> dict[str, frozenset[str]]:
    """The two scenarios' baseline assertions, as the runner derives them from the catalogue."""
    from conformance.expectations import flatten
    from conformance.scenarios import CATALOGUE

    return {
        item.id: frozenset(path for path, _ in flatten(item.expect))
        for scenarios in CATALOGUE.values()
        for item in scenarios
        if item.id in _KNOWN
    }


def _removing(tmp_path: Path, patch: dict[str, object], reasons: dict[str, str]) -> Path:
    return write_profile(
        tmp_path,
        {
            "connector": "sandbox",
            "environment": "simulator",
            "scenarios": {"card.authorize.approved": {"patch": patch, "reasons": reasons}},
        },
    )


def test_removing_an_assertion_the_scenario_does_not_have_is_refused(tmp_path: Path) -> None:
    typo = _removing(
        tmp_path,
        {"authorize": {"amount_authorised": None}},
        {"authorize.amount_authorised": "not echoed"},
    )
    with pytest.raises(SandboxProfileError) as raised:
        load_sandbox_profile(
            "sandbox",
            "simulator",
            [typo],
            known_scenarios=_KNOWN,
            known_assertions=_assertions(),
            builtin=False,
        )
    message = str(raised.value)
    assert "removes 'authorize.amount_authorised', which is not one of its assertions" in message
    assert "did you mean 'authorize.amount_authorized'?" in message
    assert "its assertions are: authorize.amount_authorized, authorize.decline," in message

    toml = tmp_path / "typo.toml"
    toml.write_text(
        'connector = "sandbox"\nenvironment = "simulator"\n'
        '[scenarios."card.authorize.approved".remove]\n"capture.status" = "no capture step"\n'
    )
    with pytest.raises(SandboxProfileError, match=r"removes 'capture\.status', which is not"):
        load_sandbox_profile(
            "sandbox", "simulator", [toml], known_assertions=_assertions(), builtin=False
        )


def test_removing_a_step_a_group_or_an_added_assertion_is_accepted(tmp_path: Path) -> None:
    adds = write_profile(
        tmp_path,
        {
            "connector": "sandbox",
            "environment": "simulator",
            "scenarios": {"card.authorize.approved": {"patch": {"authorize": {"raw": "x"}}}},
        },
        "adds.json",
    )
    removes = _removing(
        tmp_path,
        {"authorize": {"raw": None, "status": None}},
        {"authorize.raw": "added above", "authorize.status": "pending here"},
    )
    whole_step = write_profile(
        tmp_path,
        {
            "connector": "sandbox",
            "environment": "simulator",
            "scenarios": {
                "card.capture.full": {"patch": {"capture": None}, "reasons": {"capture": "why"}}
            },
        },
        "step.json",
    )
    profile = load_sandbox_profile(
        "sandbox",
        "simulator",
        [adds, removes, whole_step],
        known_scenarios=_KNOWN,
        known_assertions=_assertions(),
        builtin=False,
    )
    assert {r.path for r in profile.scenarios["card.authorize.approved"].removed} == {
        "authorize.raw",
        "authorize.status",
    }


def test_the_cli_refuses_an_unknown_removal_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = _removing(tmp_path, {"authorize": {"amount": None}}, {"authorize.amount": "why"})
    code, out, err = _cli(capsys, "--connector", "sandbox", "--overrides", str(typo), "--quiet")
    assert code == 2 and out == ""  # nothing ran
    assert err.startswith("conformance: error: ") and "removes 'authorize.amount'" in err


# -- 3. a profile must match the manifest's category -------------------------------------------


def test_a_profile_of_another_category_is_refused_up_front(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = _cli(capsys, "--connector", "sandbox", "--profile", "bank-rail", "--quiet")
    assert code == 2 and out == ""
    assert (
        "--profile bank-rail does not match connector 'sandbox', whose manifest's category is "
        "card-acquirer" in err
    )
    assert "Leave --profile out" in err and "--select PATTERN" in err
    # The manifest's own category, named or not, runs as before.
    ConformanceRun(RunConfig(connector="sandbox", profile="card-acquirer"))


async def test_a_cross_category_run_stays_possible_with_select() -> None:
    report = await run_kit("sandbox", profile="bank-rail", select=("bank.*",))
    assert report.profile == "bank-rail" and report.scenarios
    assert report.coverage_skip is not None  # a partial run: coverage is not judged
    assert report.status is RunStatus.PASSED


# -- 4. replay hints name the directory the run used ---------------------------------------------


async def test_replay_hints_name_the_cassette_directory_used(tmp_path: Path) -> None:
    cassettes = tmp_path / "qa cassettes"  # a space: the command is quoted for a shell
    selected = ("card.authorize.approved", "card.void")
    recorded = await run_kit("sandbox", record=True, cassettes=cassettes, select=selected)
    assert recorded.status is RunStatus.PASSED
    (cassettes / "card.void.json").unlink()
    stale = cassettes / "card.authorize.approved.json"
    data = json.loads(stale.read_text())
    for interaction in data["interactions"]:
        interaction["url"] = interaction["url"].replace("authorizations", "authorisations")
    stale.write_text(json.dumps(data))

    report = await run_kit("sandbox", mode=Mode.REPLAY, cassettes=cassettes, select=selected)
    results = by_id(report)
    command = (
        f"tessera conformance run --connector sandbox --mode simulator --record --cassettes "
        f"'{cassettes}' --select"
    )
    failed = results["card.authorize.approved"]
    assert failed.verdict is Verdict.FAILED
    assert f"re-record the cassette {stale} with: {command} card.authorize.approved" in (
        failed.reason
    )
    skipped = results["card.void"]
    assert skipped.verdict is Verdict.SKIPPED
    assert skipped.reason == (
        f"no cassette recorded in {cassettes} (record it with: {command} card.void)"
    )


def test_a_replay_without_cassettes_does_not_send_the_user_into_the_kit(
    register: Register,
) -> None:
    register(ParserCrashConnector, create_app)  # any connector the kit ships no cassettes for
    with pytest.raises(SetupError) as raised:
        ConformanceRun(RunConfig(connector="walk_parser", mode=Mode.REPLAY))
    message = str(raised.value)
    kit_dir = BUILTIN_CASSETTES / "walk_parser"
    assert message.startswith(f"No cassette directory {kit_dir} (without --cassettes")
    assert f"--cassettes {kit_dir}" not in message  # never "record into the installed kit"
    assert "--mode simulator --record --cassettes DIR, then replay them with" in message
    assert message.endswith("--mode replay --cassettes DIR).")


# -- 5. the plugin's errors name the plugin's options ----------------------------------------------

_CLI_OPTION = re.compile(
    r"(?<![\w-])--(mode|profile|base-url|vault-path|faults|cassettes|record|select|openapi)\b"
)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"base_url": "http://127.0.0.1:9"}, "--tessera-base-url is for --tessera-mode live"),
        ({"mode": Mode.REPLAY, "vault_path": "a/b"}, "--tessera-vault-path is for --tessera-mode"),
        ({"mode": Mode.LIVE, "faults": True}, "use it with --tessera-mode simulator"),
        ({"cassettes": Path("x")}, "--tessera-cassettes without --tessera-record"),
        ({"profile": "bank"}, "--tessera-profile bank: unknown profile"),
        ({"profile": "bank-rail"}, "Leave --tessera-profile out"),
    ],
)
def test_plugin_errors_name_the_plugin_options(
    options: dict[str, object], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESSERA_SANDBOX_API_KEY", "sk_test_walkthrough")
    monkeypatch.setenv("TESSERA_SANDBOX_WEBHOOK_SECRET", "whsec_walkthrough")
    config = RunConfig(connector="sandbox", option_prefix="--tessera-", **options)  # type: ignore[arg-type]
    with pytest.raises(SetupError) as raised:
        ConformanceRun(config)
    message = str(raised.value)
    assert expected in message
    # The one CLI command a message may quote (how to run other profiles' scenarios) aside,
    # no option is named the CLI's way.
    own = message.split("tessera conformance run", 1)[0]
    assert _CLI_OPTION.search(own) is None, message


def test_the_plugin_usage_error_names_what_was_typed(pytester: pytest.Pytester) -> None:
    pytester.makeini(_INI)
    result = pytester.runpytest_subprocess(
        "--tessera-connector",
        "sandbox",
        "--tessera-base-url",
        "http://127.0.0.1:9",
        "-p",
        "no:cacheprovider",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--tessera-base-url is for --tessera-mode live; this simulator run would ignore it.*"]
    )


# -- 6. --verbose shows the standard library's log records -----------------------------------------


def test_verbose_prints_stdlib_log_records_redacted(
    register: Register, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register(StdlibLoggingConnector, create_app)
    profile = sandbox_profile_as("walk_stdlog", tmp_path)
    select = ("--select", "card.authorize.approved", "--select", "card.leak.inline_card")
    code, out, _ = _cli(
        capsys, "--connector", "walk_stdlog", "--overrides", str(profile), *select, "--verbose"
    )
    assert code == 1  # the inline card was logged: a leak
    assert re.search(r"\[info +\] tessera_walk: authorizing 1050 EUR", out), out
    assert re.search(r"\[info +\] tessera_walk: inline card \[CANARY\]", out), out
    assert not re.search(r"inline card \d", out)
    # Without --verbose the connector's log lines stay off the progress output.
    code, out, _ = _cli(capsys, "--connector", "walk_stdlog", "--overrides", str(profile), *select)
    assert "tessera_walk: authorizing" not in out


# -- 7. the plugin's JUnit classname ---------------------------------------------------------------


def test_junitxml_classname_is_the_kits(pytester: pytest.Pytester) -> None:
    pytester.makeini(_INI)
    result = pytester.runpytest_subprocess(
        "--tessera-connector",
        "sandbox",
        "--junitxml",
        "junit.xml",
        "-k",
        "authorize.approved or fault.breaker or coverage or leak-scan",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=2, skipped=2)
    tree = ET.parse(pytester.path / "junit.xml")  # noqa: S314 - pytest's own XML
    cases = tree.getroot().iter("testcase")
    assert {(case.get("name"), case.get("classname")) for case in cases} == {
        (f"conformance[sandbox:{name}]", "conformance.sandbox.card-acquirer")
        for name in ("card.authorize.approved", "fault.breaker", "coverage", "leak-scan")
    }


# -- 8. a failed preflight does not pass the leak scan ---------------------------------------------


async def test_a_failed_preflight_reports_the_leak_scan_as_not_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TESSERA_SANDBOX_API_KEY", "sk_test_walkthrough")
    monkeypatch.setenv("TESSERA_SANDBOX_WEBHOOK_SECRET", "whsec_walkthrough")
    run = ConformanceRun(
        RunConfig(connector="sandbox", mode=Mode.LIVE, base_url="http://127.0.0.1:9")
    )
    report = await run.run_all()
    assert report.status is RunStatus.SKIPPED and report.skip_reason is not None
    rendered = render_reports(report, run.env.scanner, ["junit", "json", "html"])
    suite = ET.fromstring(rendered["junit"]).find("testsuite")  # noqa: S314 - our own XML
    assert suite is not None
    leak_case = next(c for c in suite.iter("testcase") if c.get("name") == "leak-scan")
    skipped = leak_case.find("skipped")
    assert skipped is not None, "the leak-scan case passed, though nothing was scanned"
    assert skipped.get("message", "").startswith("leak scan not run: sandbox unhealthy")
    assert suite.get("skipped") == str(len(report.scenarios) + 2)  # coverage and leak-scan too
    assert "Leak scan not run: sandbox unhealthy" in rendered["html"]
    assert "No canary found" not in rendered["html"]
    assert report.leak_scan_skip == f"not run: {report.skip_reason}"
    assert json.loads(rendered["json"])["leak_scan_skip"] == report.leak_scan_skip


# -- 9. a connector's own idempotency key ----------------------------------------------------------


async def test_a_connector_sending_its_own_idempotency_key_is_told_so(
    register: Register, tmp_path: Path
) -> None:
    register(OwnKeyConnector, create_app)
    report = await run_kit(
        "walk_own_key",
        overrides=(sandbox_profile_as("walk_own_key", tmp_path),),
        select=("card.authorize.idempotent_replay",),
    )
    result = by_id(report)["card.authorize.idempotent_replay"]
    assert result.verdict is Verdict.FAILED
    assert "authorize.idempotency_key_sent: expected true, got false (" in result.reason
    assert re.search(
        r"the connector sent its own key in the Idempotency-Key header \('own-[0-9a-f]{32}'\), "
        r"not the request's \('conformance-[0-9a-f]+'\)",
        result.reason,
    ), result.reason
    assert "do not set Idempotency-Key yourself: ctx.send adds it" in result.reason
    failed = result.failed_assertions
    assert [a.label for a in failed] == ["authorize.idempotency_key_sent"]
    assert "sent its own key" in failed[0].actual  # the reports' assertion tables say it too


async def test_a_live_run_probes_with_the_client_certificate_and_names_an_expired_one(
    register: Register, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A bank that wants mutual TLS is probed with the certificate too; one that cannot be
    presented (expired) skips the run naming why, before any scenario reveals a card."""
    import datetime as dt

    from tests.sdk.pki import make_pki
    from tests.sdk.test_client_tls import MutualTlsDemo

    register(MutualTlsDemo)
    now = dt.datetime.now(dt.UTC)
    cert, key = make_pki(tmp_path).client(
        "expired", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
    )
    monkeypatch.setenv("TESSERA_DEMO_MTLS_API_KEY", "sk_test_walkthrough")
    monkeypatch.setenv("TESSERA_DEMO_MTLS_TLS_CLIENT_CERTIFICATE", cert)
    monkeypatch.setenv("TESSERA_DEMO_MTLS_TLS_CLIENT_KEY", key)
    run = ConformanceRun(
        RunConfig(connector="demo_mtls", mode=Mode.LIVE, base_url="https://127.0.0.1:9")
    )
    report = await run.run_all()
    assert report.status is RunStatus.SKIPPED and report.skip_reason is not None
    assert report.skip_reason.startswith("sandbox not probed: The TLS client certificate")
    assert "expired on" in report.skip_reason and "BEGIN" not in report.skip_reason
