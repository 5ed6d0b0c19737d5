"""The conformance kit's pytest plugin (``pytest11`` entry point ``tessera_conformance``).

``pytest --tessera-connector NAME [--tessera-mode simulator|replay|live]`` runs the kit's
scenarios for that connector as test items, one per scenario instance, named like parametrized
tests (``conformance[sandbox:card.authorize.approved]``, so ``-k authorize`` selects), followed
by two items that judge the run: ``conformance[sandbox:coverage]`` (every declared capability
covered by a scenario that ran and passed) and ``conformance[sandbox:leak-scan]``. Skipped
scenarios are skipped items with the kit's reason; failures show the failed assertions, contract
violations and scrubbed exchanges.

Without ``--tessera-connector`` the plugin adds nothing. With it and no test paths on the
command line, only the conformance items run (the project's own tests are not collected); with
paths, both. One run per connector is shared by its items, on the plugin's own event loop.

Errors name the plugin's options (``--tessera-mode``), not the CLI's, and under ``--junitxml``
every item's ``classname`` is the kit's own JUnit report's (``conformance.<connector>.<profile>``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    # The kit is imported only when a conformance run is asked for: every pytest session of
    # the project loads this plugin, and the kit (aiohttp, openapi-core, ...) takes a second.
    from conformance.environment import RunConfig
    from conformance.results import RunReport, ScenarioResult
    from conformance.runner import ConformanceRun, Planned

MODES = ("simulator", "replay", "live")
_STATE = pytest.StashKey["_PluginState"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tessera", "Tessera connector conformance")
    group.addoption(
        "--tessera-connector",
        action="append",
        default=[],
        metavar="NAME",
        help="Run the conformance scenarios for this connector (repeatable).",
    )
    group.addoption(
        "--tessera-mode",
        choices=MODES,
        default="simulator",
        help="Where the provider is: the kit's simulator, recorded cassettes, or a live sandbox.",
    )
    group.addoption(
        "--tessera-profile",
        default=None,
        metavar="PROFILE",
        help="Scenario profile (card-acquirer, bank-rail, open-banking); default: the manifest's.",
    )
    group.addoption("--tessera-base-url", default=None, metavar="URL", help="Live sandbox URL.")
    group.addoption(
        "--tessera-openapi", default=None, metavar="SPEC", help="Validate traffic against SPEC."
    )
    group.addoption(
        "--tessera-faults", action="store_true", help="Run the fault-injection scenarios."
    )
    group.addoption(
        "--tessera-overrides",
        action="append",
        default=[],
        metavar="FILE",
        help="Sandbox profile file layered over the built-in one (repeatable).",
    )
    group.addoption(
        "--tessera-cassettes", default=None, metavar="DIR", help="Cassette directory (replay)."
    )
    group.addoption(
        "--tessera-vault-path",
        default=None,
        metavar="MOUNT/PATH",
        help="Live mode: read the connector's credentials from Vault/OpenBao KV v2.",
    )
    group.addoption(
        "--tessera-html", default=None, metavar="FILE", help="Write the kit's HTML report here."
    )
    group.addoption(
        "--tessera-json", default=None, metavar="FILE", help="Write the kit's JSON report here."
    )


class ConformanceFailure(Exception):
    """A scenario (or the coverage or leak judgement) failed; the text says how."""


@dataclass
class _ConnectorRun:
    run: ConformanceRun
    #: The kit's reports to write when the session ends: ``{"html"|"json": path}``.
    reports: dict[str, Path] = field(default_factory=dict)
    started: bool = False
    finished: RunReport | None = None
    #: Why the run could not start (Vault unreachable, a bad OpenAPI file, ...), or None.
    error: str | None = None


# Not ``eq``: registered with pluggy (``pytest_runtest_logreport``), which keeps plugins in a
# set, and a dataclass that compares by value is unhashable.
@dataclass(eq=False)
class _PluginState:
    config: pytest.Config
    runs: dict[str, _ConnectorRun] = field(default_factory=dict)
    loop: asyncio.Runner = field(default_factory=asyncio.Runner)
    #: The ``--junitxml`` classname of each item, by node id (see ``pytest_runtest_logreport``).
    classnames: dict[str, str] = field(default_factory=dict)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Give each item's ``--junitxml`` test case the kit's classname. pytest derives it from
        the node id's file part, which these items do not have: it was empty, so CI dashboards
        filed every connector's scenarios under nothing. Set on the setup report, before the
        junitxml plugin writes anything for the item, as ``record_xml_attribute`` does: pytest
        keeps such attributes over its own when it writes the case."""
        classname = self.classnames.get(report.nodeid)
        if classname is None or report.when != "setup":
            return
        from _pytest.junitxml import xml_key  # where the junitxml plugin keeps its writer

        xml = self.config.stash.get(xml_key, None)
        if xml is None:
            return
        if xml.prefix:  # --junit-prefix: pytest puts it first in every classname
            classname = f"{xml.prefix}.{classname}"
        # Keyed by the report, as the junitxml plugin's own lookups are (pytest 8 and 9 differ).
        xml.node_reporter(report).add_attribute("classname", classname)

    def started(self, connector: str) -> ConformanceRun:
        """The connector's run, started on first use. When it cannot start, every item of that
        connector fails with the reason (not a traceback, and no scenario runs half set up)."""
        from conformance.environment import SetupError  # lazy: see the imports above

        entry = self.runs[connector]
        if not entry.started:
            entry.started = True
            try:
                self.loop.run(entry.run.start())
            except SetupError as exc:
                entry.error = f"the conformance run of {connector!r} could not start: {exc}"
        if entry.error is not None:
            raise ConformanceFailure(entry.error)
        return entry.run

    def finish(self, connector: str) -> RunReport:
        entry = self.runs[connector]
        if entry.finished is None:
            entry.finished = entry.run.finish()
        return entry.finished

    def close(self) -> None:
        from conformance.reports import write_reports  # lazy: see the imports above

        try:
            for connector, entry in self.runs.items():
                if entry.started:
                    self.loop.run(entry.run.close())
                    if entry.reports and entry.error is None:  # a run that never started: none
                        write_reports(self.finish(connector), entry.run.env.scanner, entry.reports)
        finally:
            self.loop.close()


def _details(result: ScenarioResult) -> str:
    lines = [f"{result.scenario_id}: {result.reason}"]
    lines += [
        f"  assertion {a.label}: expected {a.expected}, got {a.actual}"
        for a in result.failed_assertions
    ]
    lines += [
        f"  contract {v.direction} {v.method} {v.path} {v.json_path}: {v.message}"
        for v in result.violations
    ]
    for exchange in result.exchanges:
        answer = exchange.status_code if exchange.status_code is not None else exchange.error
        lines.append(
            f"  exchange {exchange.operation}: {exchange.method} {exchange.url} -> {answer}"
        )
        lines.append(f"    request:  {exchange.request_body[:2000]}")
        lines.append(f"    response: {exchange.response_body[:2000]}")
    if result.error:
        lines.append(result.error)
    return "\n".join(lines)


class ScenarioItem(pytest.Item):
    """One scenario instance of one connector's run."""

    def __init__(self, *, connector: str, planned: Planned, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.connector = connector
        self.planned = planned
        self.add_marker(pytest.mark.tessera_conformance)

    def runtest(self) -> None:
        from conformance.results import Verdict  # lazy: see the imports above

        state = self.config.stash[_STATE]
        run = state.started(self.connector)
        result = state.loop.run(run.run_one(self.planned))
        if result.verdict is Verdict.SKIPPED:
            pytest.skip(result.reason or "skipped")
        if result.verdict is Verdict.FAILED:
            raise ConformanceFailure(_details(result))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ConformanceFailure):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"conformance {self.connector}: {self.planned.instance.id}"


class JudgementItem(pytest.Item):
    """Coverage or the leak scan of one connector's run, judged after its scenarios."""

    def __init__(self, *, connector: str, judgement: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.connector = connector
        self.judgement = judgement
        self.add_marker(pytest.mark.tessera_conformance)

    def runtest(self) -> None:
        state = self.config.stash[_STATE]
        state.started(self.connector)
        report = state.finish(self.connector)
        if report.skip_reason is not None:
            pytest.skip(report.skip_reason)
        if self.judgement == "coverage" and report.coverage_skip is not None:
            pytest.skip(f"coverage {report.coverage_skip}")
        leak_skip = report.leak_scan_skip
        if self.judgement == "leak-scan" and leak_skip is not None and not report.leaks:
            pytest.skip(f"leak scan {leak_skip}")
        prefix = "declared capability" if self.judgement == "coverage" else "leak"
        problems = [p for p in report.problems() if p.startswith(prefix)]
        if problems:
            raise ConformanceFailure("\n".join(problems))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ConformanceFailure):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"conformance {self.connector}: {self.judgement}"


def _config(config: pytest.Config, connector: str) -> RunConfig:
    from conformance.environment import Mode, RunConfig  # lazy: see the imports above

    option = config.getoption
    openapi, cassettes = option("tessera_openapi"), option("tessera_cassettes")
    return RunConfig(
        connector=connector,
        profile=option("tessera_profile"),
        mode=Mode(option("tessera_mode")),
        base_url=option("tessera_base_url"),
        openapi=Path(openapi) if openapi else None,
        faults=bool(option("tessera_faults")),
        overrides=tuple(Path(p) for p in option("tessera_overrides")),
        cassettes=Path(cassettes) if cassettes else None,
        vault_path=option("tessera_vault_path"),
        option_prefix="--tessera-",  # errors name --tessera-mode, the option the user typed
    )


def _only_conformance(config: pytest.Config) -> bool:
    return bool(config.getoption("tessera_connector")) and (
        config.args_source is not pytest.Config.ArgsSource.ARGS
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "tessera_conformance: a conformance-kit scenario (added by the plugin)"
    )
    connectors = config.getoption("tessera_connector")
    if not connectors:
        return
    from conformance.environment import SetupError  # lazy: see the imports above
    from conformance.reports import check_report_paths
    from conformance.runner import ConformanceRun

    state = _PluginState(config)
    connectors = list(dict.fromkeys(connectors))
    for connector in connectors:
        # With several connectors, each writes its own files (report.<connector>.html).
        reports = _report_paths(config, f".{connector}" if len(connectors) > 1 else "")
        try:
            check_report_paths(reports, option_prefix="--tessera-")
            state.runs[connector] = _ConnectorRun(
                ConformanceRun(_config(config, connector)), reports
            )
        except SetupError as exc:
            raise pytest.UsageError(f"--tessera-connector {connector}: {exc}") from None
    config.stash[_STATE] = state
    config.pluginmanager.register(state, "tessera-conformance-state")


def _report_paths(config: pytest.Config, suffix: str) -> dict[str, Path]:
    """``{"html"|"json": path}`` from ``--tessera-html``/``--tessera-json``, ``suffix`` added to
    each file's stem."""
    paths: dict[str, Path] = {}
    for name in ("html", "json"):
        if value := config.getoption(f"tessera_{name}"):
            path = Path(value)
            paths[name] = path.with_name(path.stem + suffix + path.suffix)
    return paths


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """A conformance run without test paths collects nothing but its own items."""
    return True if _only_conformance(config) else None


def _items(session: pytest.Session, state: _PluginState) -> Iterator[pytest.Item]:
    from conformance.reports.junit import junit_classname  # lazy: see the imports above

    for connector, entry in state.runs.items():
        report = entry.run.report
        classname = junit_classname(report.connector, report.profile)
        items: list[pytest.Item] = [
            ScenarioItem.from_parent(
                session,
                name=f"conformance[{connector}:{planned.instance.id}]",
                connector=connector,
                planned=planned,
            )
            for planned in entry.run.plan
        ]
        items += [
            JudgementItem.from_parent(
                session,
                name=f"conformance[{connector}:{judgement}]",
                connector=connector,
                judgement=judgement,
            )
            for judgement in ("coverage", "leak-scan")
        ]
        for item in items:
            state.classnames[item.nodeid] = classname  # the kit's own JUnit report's
        yield from items


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None:
        items.extend(_items(session, state))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is not None:
        state.close()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """The ``--tessera-openapi`` spec's tolerated defects, one warning line each (as the CLI
    prints them): the run went on, and whoever owns the spec should hear of them."""
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    for connector, entry in state.runs.items():
        for defect in entry.run.report.openapi_defects:
            terminalreporter.write_line(
                f"tessera conformance ({connector}): warning: OpenAPI spec defect tolerated: "
                f"{defect}"
            )
