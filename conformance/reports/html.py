"""The HTML report: one self-contained page (inline CSS, no scripts, no external resources).

Sections: the verdict and run facts; every problem in one list; the capability x scenario
matrix (a row per scenario, a column per declared capability, the cell coloured by the verdict
of a scenario that covers it; the header row says whether the capability is covered); the
scenarios with their verdicts, reasons, timings, removed assertions and, for failures, the failed
assertions, contract violations, the scrubbed exchanges and the error; leaks.
"""

from __future__ import annotations

from html import escape

from conformance.results import RunReport, ScenarioResult, Verdict

__all__ = ["render_html"]

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#1d2330;background:#fff}
h1{font-size:1.5rem;margin:0 0 .5rem}h2{font-size:1.15rem;margin:2rem 0 .5rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #d5d9e0;padding:.25rem .5rem;
vertical-align:top;text-align:left}th{background:#f3f5f8}
.badge{display:inline-block;padding:.15rem .6rem;border-radius:1rem;color:#fff;font-weight:600}
.passed{background:#1f883d}.failed{background:#cf222e}.skipped{background:#8c959f}
td.passed,td.failed,td.skipped{color:#fff;text-align:center;font-weight:700}
td.none{background:#fff}.matrix th.cap{writing-mode:vertical-rl;transform:rotate(180deg);
white-space:nowrap;font-weight:500}.uncovered{background:#ffebe9}.covered{background:#dafbe1}
pre{background:#f6f8fa;padding:.5rem;white-space:pre-wrap;word-break:break-all;margin:.25rem 0}
.reason{max-width:60rem}details{margin:.25rem 0}.muted{color:#57606a}
"""
_SYMBOL = {Verdict.PASSED: "&#10003;", Verdict.FAILED: "&#10007;", Verdict.SKIPPED: "&ndash;"}


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _badge(verdict: str) -> str:
    return f'<span class="badge {_e(verdict)}">{_e(verdict)}</span>'


def _facts(report: RunReport) -> str:
    counts = report.counts()
    rows = [
        ("Connector", f"{report.display_name} ({report.connector})"),
        ("Profile", report.profile),
        ("Mode", report.mode),
        ("Base URL", report.base_url or "-"),
        ("Started", report.started_at),
        ("Duration", f"{report.duration_s:.2f} s"),
        ("Scenarios", ", ".join(f"{n} {v}" for v, n in counts.items())),
        ("Sandbox profile files", ", ".join(report.sandbox_files) or "none"),
        ("OpenAPI", report.openapi or "not validated"),
        ("Fault injection", "on" if report.faults else "off"),
    ]
    rows.extend(("OpenAPI spec defect tolerated", d) for d in report.openapi_defects)
    if report.skip_reason:
        rows.append(("Skipped", report.skip_reason))
    rows.extend(
        (f"No magic value for {name}", f"skipped: {', '.join(ids)}")
        for name, ids in report.missing_inputs().items()
    )
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _matrix(report: RunReport) -> str:
    caps = report.coverage.declared
    if report.coverage_skip is not None:
        return f'<p class="muted">Coverage {_e(report.coverage_skip)}.</p>'
    if not caps:
        return '<p class="muted">No coverage was judged for this run.</p>'
    head = "".join(f'<th class="cap">{_e(cap)}</th>' for cap in caps)
    status = "".join(
        f'<td class="{"covered" if report.coverage.covered_by.get(cap) else "uncovered"}">'
        f"{'covered' if report.coverage.covered_by.get(cap) else 'NOT covered'}</td>"
        for cap in caps
    )
    rows = []
    for result in report.scenarios:
        cells = []
        for cap in caps:
            if cap in result.covers:
                cells.append(f'<td class="{result.verdict.value}">{_SYMBOL[result.verdict]}</td>')
            else:
                cells.append('<td class="none"></td>')
        rows.append(f"<tr><th>{_e(result.scenario_id)}</th>{''.join(cells)}</tr>")
    return (
        f'<table class="matrix"><tr><th>scenario \\ capability</th>{head}</tr>'
        f"<tr><th>coverage</th>{status}</tr>{''.join(rows)}</table>"
    )


def _failure_details(result: ScenarioResult) -> str:
    parts: list[str] = []
    failed = result.failed_assertions
    if failed:
        rows = "".join(
            f"<tr><td>{_e(a.label)}</td><td>{_e(a.expected)}</td><td>{_e(a.actual)}</td></tr>"
            for a in failed
        )
        parts.append(
            "<table><tr><th>assertion</th><th>expected</th><th>actual</th></tr>" + rows + "</table>"
        )
    if result.violations:
        rows = "".join(
            f"<tr><td>{_e(v.direction)}</td><td>{_e(v.method)} {_e(v.path)}</td>"
            f"<td><code>{_e(v.json_path)}</code></td><td>{_e(v.message)}</td></tr>"
            for v in result.violations
        )
        parts.append(
            "<table><tr><th>contract</th><th>operation</th>"
            "<th>JSON path</th><th>violation</th></tr>" + rows + "</table>"
        )
    for exchange in result.exchanges:
        answer = exchange.status_code if exchange.status_code is not None else exchange.error
        parts.append(
            f"<details><summary>{_e(exchange.operation)}: {_e(exchange.method)} "
            f"{_e(exchange.url)} &rarr; {_e(answer)} ({exchange.elapsed_ms:.1f} ms)</summary>"
            f"<pre>request: {_e(exchange.request_body)}</pre>"
            f"<pre>response: {_e(exchange.response_body)}</pre></details>"
        )
    if result.error:
        parts.append(f"<details><summary>error</summary><pre>{_e(result.error)}</pre></details>")
    return "".join(parts)


def _scenarios(report: RunReport) -> str:
    rows = []
    for result in report.scenarios:
        removed = "".join(
            f'<div class="muted">removed <code>{_e(r.path)}</code> ({_e(r.source)}): '
            f"{_e(r.reason)}</div>"
            for r in result.removed
        )
        details = _failure_details(result) if result.verdict is Verdict.FAILED else ""
        rows.append(
            f'<tr id="{_e(result.scenario_id)}"><td><code>{_e(result.scenario_id)}</code><br>'
            f'<span class="muted">{_e(result.title)}</span></td>'
            f"<td>{_badge(result.verdict.value)}</td><td>{result.duration_s * 1000:.0f} ms</td>"
            f'<td class="reason">{_e(result.reason)}{removed}{details}</td></tr>'
        )
    return (
        "<table><tr><th>scenario</th><th>verdict</th><th>time</th><th>reason and details</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _no_leaks(report: RunReport) -> str:
    if report.leak_scan_skip is not None:
        return f'<p class="muted">Leak scan {_e(report.leak_scan_skip)}.</p>'
    return '<p class="muted">No canary found in transcripts, logs, errors or reports.</p>'


def render_html(report: RunReport) -> str:
    problems = report.problems()
    problem_list = (
        "<ul>" + "".join(f"<li>{_e(p)}</li>" for p in problems) + "</ul>"
        if problems
        else '<p class="muted">None.</p>'
    )
    leaks = (
        "<ul>"
        + "".join(
            f"<li>{_e(leak.secret)} ({_e(leak.encoding)}) in {_e(leak.source)} at "
            f"{_e(leak.location)}</li>"
            for leak in report.leaks
        )
        + "</ul>"
        if report.leaks
        else _no_leaks(report)
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Conformance: {_e(report.connector)} ({_e(report.status.value)})</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>Conformance of {_e(report.display_name)} {_badge(report.status.value)}</h1>"
        f"{_facts(report)}<h2>Problems</h2>{problem_list}"
        f"<h2>Capabilities &times; scenarios</h2>{_matrix(report)}"
        f"<h2>Scenarios</h2>{_scenarios(report)}<h2>Leak scan</h2>{leaks}"
        "</body></html>\n"
    )
