"""The JUnit XML report: one ``testcase`` per scenario instance, plus ``coverage`` and
``leak-scan`` cases, so a CI dashboard shows exactly what failed and why. The suite's ``tests``,
``failures`` and ``skipped`` counts are those of its cases (``coverage`` is a skipped case when
it was not judged: a partial run, an unhealthy sandbox; ``leak-scan`` when there was nothing to
scan: an unhealthy sandbox, no scenario run). Every case's ``classname`` is ``junit_classname``,
which the pytest plugin gives its items too.

Failed scenarios carry their failed assertions, contract violations and scrubbed exchanges in
the failure text; skipped ones their reason; removed assertions (and their reasons) go to
``system-out``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from conformance.results import RunReport, ScenarioResult, Verdict

__all__ = ["junit_classname", "render_junit"]


def junit_classname(connector: str, profile: str) -> str:
    """The ``classname`` of a run's test cases: ``conformance.<connector>.<profile>``."""
    return f"conformance.{connector}.{profile}"


def _details(result: ScenarioResult) -> str:
    lines = [result.reason]
    for assertion in result.failed_assertions:
        lines.append(
            f"assertion {assertion.label}: expected {assertion.expected}, got {assertion.actual}"
        )
    for violation in result.violations:
        lines.append(
            f"contract {violation.direction} {violation.method} {violation.path} "
            f"{violation.json_path}: {violation.message}"
        )
    for exchange in result.exchanges:
        lines.append(
            f"exchange {exchange.operation} {exchange.method} {exchange.url} -> "
            f"{exchange.status_code or exchange.error}\n  request: {exchange.request_body}\n"
            f"  response: {exchange.response_body}"
        )
    if result.error:
        lines.append(result.error)
    return "\n".join(lines)


def render_junit(report: RunReport) -> str:
    counts = report.counts()
    coverage_skip = report.coverage_skip
    coverage_failed = coverage_skip is None and bool(report.coverage.uncovered)
    leaks_failed = bool(report.leaks)
    leak_skip = None if leaks_failed else report.leak_scan_skip
    suites = ET.Element("testsuites")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"tessera-conformance.{report.connector}",
        tests=str(len(report.scenarios) + 2),
        failures=str(counts["failed"] + int(coverage_failed) + int(leaks_failed)),
        errors="0",
        skipped=str(
            counts["skipped"] + int(coverage_skip is not None) + int(leak_skip is not None)
        ),
        time=f"{report.duration_s:.3f}",
        timestamp=report.started_at,
    )
    properties = ET.SubElement(suite, "properties")
    for name, value in (
        ("connector", report.connector),
        ("profile", report.profile),
        ("mode", report.mode),
        ("base_url", report.base_url),
        ("status", report.status.value),
        ("openapi", report.openapi or ""),
        ("faults", str(report.faults).lower()),
        *(("openapi_defect", defect) for defect in report.openapi_defects),
    ):
        ET.SubElement(properties, "property", name=name, value=value)
    classname = junit_classname(report.connector, report.profile)
    for result in report.scenarios:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=classname,
            name=result.scenario_id,
            time=f"{result.duration_s:.3f}",
        )
        if result.verdict is Verdict.FAILED:
            failure = ET.SubElement(
                case, "failure", message=result.reason[:500], type="conformance"
            )
            failure.text = _details(result)
        elif result.verdict is Verdict.SKIPPED:
            ET.SubElement(case, "skipped", message=result.reason[:500])
        if result.removed:
            out = ET.SubElement(case, "system-out")
            out.text = "\n".join(
                f"removed assertion {r.path} ({r.source}): {r.reason}" for r in result.removed
            )
    coverage = ET.SubElement(suite, "testcase", classname=classname, name="coverage", time="0")
    if coverage_skip is not None:
        ET.SubElement(coverage, "skipped", message=f"coverage {coverage_skip}"[:500])
    elif coverage_failed:
        failure = ET.SubElement(
            coverage,
            "failure",
            message=f"uncovered capabilities: {', '.join(report.coverage.uncovered)}",
            type="coverage",
        )
        failure.text = "\n".join(
            p for p in report.problems() if p.startswith("declared capability")
        )
    leaks = ET.SubElement(suite, "testcase", classname=classname, name="leak-scan", time="0")
    if leaks_failed:
        failure = ET.SubElement(
            leaks, "failure", message=f"{len(report.leaks)} canary leak(s)", type="leak"
        )
        failure.text = "\n".join(p for p in report.problems() if p.startswith("leak"))
    elif leak_skip is not None:
        ET.SubElement(leaks, "skipped", message=f"leak scan {leak_skip}"[:500])
    ET.indent(suites)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
    )
