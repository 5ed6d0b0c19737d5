"""Reports of a run: JUnit XML (CI), JSON (machines) and a self-contained HTML page (people).

``render_reports`` renders the requested formats, scans each rendering for the run's canaries
(a report is one more place a leak can end up), records any finding in the report (so the run
fails) and renders again, redacted. ``write_reports`` does that and writes the files.
"""

from __future__ import annotations

from pathlib import Path

from conformance.leaks import LeakScanner
from conformance.reports.html import render_html
from conformance.reports.json_report import render_json
from conformance.reports.junit import render_junit
from conformance.results import RunReport

__all__ = ["render_html", "render_json", "render_junit", "render_reports", "write_reports"]

_RENDERERS = {"junit": render_junit, "json": render_json, "html": render_html}


def render_reports(report: RunReport, scanner: LeakScanner, formats: list[str]) -> dict[str, str]:
    """``{format: text}`` for ``formats``, scanned for canaries and redacted."""
    rendered = {name: _RENDERERS[name](report) for name in formats}
    findings = []
    for name, text in rendered.items():
        findings += scanner.scan(f"report:{name}", [(name, text)])
    if findings:
        report.leaks.extend(findings)
        rendered = {name: _RENDERERS[name](report) for name in formats}
    return {name: scanner.redact(text) for name, text in rendered.items()}


def write_reports(report: RunReport, scanner: LeakScanner, paths: dict[str, Path]) -> None:
    """Write each requested format to its path (parents created)."""
    rendered = render_reports(report, scanner, list(paths))
    for name, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered[name], encoding="utf-8")
