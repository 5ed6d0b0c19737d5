"""The correct sandbox connector passes everything, in every mode, and the CLI writes reports.

- the CLI (``python -m conformance run``, as ``tessera conformance run`` runs it) in simulator
  mode with fault injection exits 0 and writes JUnit, JSON and HTML reports;
- replay: a recorded simulator run replays from its cassettes, deterministically, and the
  cassettes hold no canary;
- live: against a sandbox server started elsewhere, with credentials from the environment;
  an unreachable one is "skipped: sandbox unhealthy" (exit code 3), not failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from conformance.environment import Mode, RunConfig, SetupError
from conformance.results import RunStatus, Verdict
from conformance.runner import ConformanceRun
from conformance.simulators import bound_port
from connectors.sandbox.server import DEFAULT_API_KEY, create_app
from tests.conformance.conftest import by_id, run_kit

REPO = Path(__file__).resolve().parents[2]


def test_cli_run_against_the_simulator_exits_0_and_writes_all_reports(tmp_path: Path) -> None:
    junit, json_path, html = tmp_path / "r.xml", tmp_path / "r.json", tmp_path / "r.html"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "conformance",
            "run",
            "--connector",
            "sandbox",
            "--mode",
            "simulator",
            "--faults",
            "--junit",
            str(junit),
            "--json",
            str(json_path),
            "--html",
            str(html),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "PASS card.authorize.approved" in completed.stdout  # live progress, per scenario
    assert "sandbox (card-acquirer, simulator): PASSED" in completed.stdout

    report = json.loads(json_path.read_text())
    assert report["status"] == "passed"
    assert report["counts"]["failed"] == 0 and report["counts"]["passed"] >= 50
    assert report["coverage"]["uncovered"] == []
    assert "retry_safe:authorize" in report["coverage"]["declared"]
    assert report["leaks"] == []

    suite = ET.parse(junit).getroot().find("testsuite")  # noqa: S314 - the kit's own report
    assert suite is not None and suite.get("failures") == "0"
    cases = suite.findall("testcase")
    assert suite.get("tests") == str(len(cases)) == str(len(report["scenarios"]) + 2)
    assert suite.get("skipped") == str(sum(c.find("skipped") is not None for c in cases))
    names = {case.get("name") for case in cases}
    assert {"card.authorize.approved", "fault.reset_after_send", "coverage", "leak-scan"} <= names

    page = html.read_text()
    assert "Capabilities &times; scenarios" in page and "card.3ds.complete" in page
    assert "<script" not in page and "<link" not in page  # self-contained


def test_cli_refuses_an_unknown_connector(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "conformance", "run", "--connector", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert completed.returncode == 2
    assert "No connector 'nope' is installed" in completed.stderr


async def test_replay_of_a_recorded_run_is_deterministic_and_holds_no_canary(
    tmp_path: Path,
) -> None:
    recorder = ConformanceRun(
        RunConfig(connector="sandbox", mode=Mode.SIMULATOR, record=True, cassettes=tmp_path)
    )
    recorded = await recorder.run_all()
    assert recorded.status is RunStatus.PASSED, recorded.problems()
    files = sorted(p for p in os.listdir(tmp_path) if p.endswith(".json"))
    assert len(files) == recorded.counts()["passed"]
    for name in files:
        text = (tmp_path / name).read_text()
        assert recorder.env.canary.pan not in text
        assert "127.0.0.1" not in text  # rebased on replay.invalid

    first = await run_kit("sandbox", mode=Mode.REPLAY, cassettes=tmp_path)
    second = await run_kit("sandbox", mode=Mode.REPLAY, cassettes=tmp_path)
    assert first.status is RunStatus.PASSED, first.problems()
    verdicts = [(r.scenario_id, r.verdict, r.reason) for r in first.scenarios]
    assert verdicts == [(r.scenario_id, r.verdict, r.reason) for r in second.scenarios]
    assert by_id(first)["webhooks.duplicate"].verdict is Verdict.PASSED  # recorded deliveries


@pytest.fixture
async def sandbox_server() -> AsyncIterator[str]:
    runner = web.AppRunner(create_app(settle_delay=0.2), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{bound_port(site)}"
    await runner.cleanup()


async def test_live_mode_against_a_running_sandbox(
    sandbox_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESSERA_SANDBOX_API_KEY", DEFAULT_API_KEY)
    report = await run_kit("sandbox", mode=Mode.LIVE, base_url=sandbox_server)
    assert report.status is RunStatus.PASSED, report.problems()
    assert "operation:webhooks" not in report.coverage.declared
    assert by_id(report)["webhooks.verified"].verdict is Verdict.SKIPPED


async def test_live_mode_without_credentials_does_not_start(
    sandbox_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TESSERA_SANDBOX_API_KEY", raising=False)
    with pytest.raises(SetupError, match="TESSERA_SANDBOX_API_KEY"):  # before anything starts
        ConformanceRun(RunConfig(connector="sandbox", mode=Mode.LIVE, base_url=sandbox_server))


async def test_an_unhealthy_live_sandbox_skips_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from vault.devserver import free_port  # a loopback port nothing listens on

    monkeypatch.setenv("TESSERA_SANDBOX_API_KEY", DEFAULT_API_KEY)
    report = await run_kit("sandbox", mode=Mode.LIVE, base_url=f"http://127.0.0.1:{free_port()}")
    assert report.status is RunStatus.SKIPPED and report.exit_code() == 3
    assert report.skip_reason is not None and report.skip_reason.startswith("sandbox unhealthy")
    assert {r.verdict for r in report.scenarios} == {Verdict.SKIPPED}
    assert report.problems() == []


async def test_the_shipped_sandbox_cassettes_replay_green() -> None:
    """``conformance/cassettes/sandbox`` (re-record with ``python -m conformance run --connector
    sandbox --record --cassettes conformance/cassettes/sandbox`` when the sandbox's wire format
    changes)."""
    report = await run_kit("sandbox", mode=Mode.REPLAY)
    assert report.status is RunStatus.PASSED, report.problems()
    assert report.counts()["passed"] >= 30
