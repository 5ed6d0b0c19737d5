"""Reports of a run: JUnit XML (CI), JSON (machines) and a self-contained HTML page (people).

``render_reports`` renders the requested formats, scans each rendering for the run's canaries
(a report is one more place a leak can end up), records any finding in the report (so the run
fails) and renders again, redacted. ``write_reports`` does that and writes the files;
``check_report_paths`` refuses, before a run, paths it could not write (the CLI and the pytest
plugin both call it).
"""

from __future__ import annotations

import os
from pathlib import Path

from conformance.leaks import LeakScanner
from conformance.reports.html import render_html
from conformance.reports.json_report import render_json
from conformance.reports.junit import render_junit
from conformance.results import RunReport

__all__ = [
    "check_report_paths",
    "render_html",
    "render_json",
    "render_junit",
    "render_reports",
    "write_reports",
]

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


def check_report_paths(paths: dict[str, Path], option_prefix: str = "--") -> None:
    """Refuse (``SetupError``), before anything runs, report paths that cannot be written: two
    reports on one file, a directory, a directory that cannot be created or written. A typo in
    a directory would otherwise surface as a traceback after the whole run. The messages name
    the option ``option_prefix`` + format (``--junit``, ``--tessera-html``)."""
    from conformance.environment import SetupError  # lazy: the kit's runner is heavy to import

    seen: dict[Path, str] = {}
    for format_name, path in paths.items():
        name = option_prefix + format_name
        resolved = path.resolve()
        if resolved in seen:
            raise SetupError(f"{seen[resolved]} and {name} both write {path}.")
        seen[resolved] = name
        if path.is_dir():
            raise SetupError(f"{name} {path}: is a directory; give a file name.")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SetupError(f"{name} {path}: cannot create its directory ({exc}).") from None
        if not os.access(path.parent, os.W_OK):
            raise SetupError(f"{name} {path}: its directory is not writable.")
