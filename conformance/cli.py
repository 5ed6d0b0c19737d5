"""The conformance CLI: ``tessera conformance run`` (wired by the gateway's CLI) and
``python -m conformance run`` (standalone), with the same arguments::

    run --connector NAME [--profile P] [--mode simulator|replay|live] [--base-url URL]
        [--openapi SPEC] [--faults] [--junit F] [--json F] [--html F]
        [--overrides FILE]... [--cassettes DIR] [--record] [--vault-path MOUNT/PATH]
        [--select PATTERN]... [--quiet | --verbose]

``add_arguments(parser)`` adds them to any ``argparse`` parser; ``run(args)`` runs and returns
the exit code: 0 every scenario passed and every declared capability is covered, 1 anything
failed (a scenario, coverage, a leak), 2 the run could not start (usage, setup: an unknown
connector, a bad sandbox profile, an option the mode would ignore, a ``--profile`` other than the
manifest's category without ``--select``, ``--record`` without
``--cassettes DIR``, a replay without cassettes, ``--select`` matching nothing, missing live
credentials, a report path that cannot be written) or its reports could not be written, 3 the
live sandbox failed its preflight (skipped: sandbox unhealthy). Progress goes to stdout as each
scenario finishes; the summary names every problem. ``--verbose`` adds the log lines, structlog's
and the standard library's, redacted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import structlog

from conformance.logcapture import ConsoleHandler
from conformance.reports import check_report_paths, write_reports
from conformance.results import RunReport, ScenarioResult, Verdict
from sdk import Category

if TYPE_CHECKING:
    # The runner (openapi-core, aiohttp, ...) is imported by ``run`` only: ``tessera`` builds
    # its whole parser, ``add_arguments`` included, for every command.
    from conformance.environment import RunConfig
    from conformance.runner import ProgressCallback

__all__ = ["add_arguments", "main", "run"]

MODES = ("simulator", "replay", "live")

_MARK = {Verdict.PASSED: "PASS", Verdict.FAILED: "FAIL", Verdict.SKIPPED: "SKIP"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``conformance run`` (see the module docstring)."""
    parser.add_argument("--connector", required=True, metavar="NAME", help="connector id")
    parser.add_argument(
        "--profile",
        choices=[c.value for c in Category],
        default=None,
        help="scenario profile (default: the manifest's category)",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="simulator",
        help="the kit's simulator, recorded cassettes, or a live sandbox (default: simulator)",
    )
    parser.add_argument("--base-url", default=None, metavar="URL", help="live sandbox URL")
    parser.add_argument(
        "--openapi", type=Path, default=None, metavar="SPEC", help="validate traffic against SPEC"
    )
    parser.add_argument("--faults", action="store_true", help="run the fault-injection scenarios")
    parser.add_argument("--junit", type=Path, default=None, metavar="FILE", help="JUnit XML report")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="JSON report")
    parser.add_argument("--html", type=Path, default=None, metavar="FILE", help="HTML report")
    parser.add_argument(
        "--overrides",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="sandbox profile file (JSON/TOML) layered over the built-in one; repeatable",
    )
    parser.add_argument(
        "--cassettes",
        type=Path,
        default=None,
        metavar="DIR",
        help="cassettes to replay (default: the kit's own), or where --record writes them",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="record cassettes of passing simulator scenarios into --cassettes DIR (required)",
    )
    parser.add_argument(
        "--vault-path", default=None, metavar="MOUNT/PATH", help="live credentials in Vault KV v2"
    )
    parser.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only scenarios whose id matches (glob); coverage is not judged then",
    )
    parser.add_argument("--quiet", action="store_true", help="print failures and the summary only")
    parser.add_argument(
        "--verbose", action="store_true", help="also print the connector's and SDK's log lines"
    )


def _config(args: argparse.Namespace) -> RunConfig:
    from conformance.environment import Mode, RunConfig  # lazy: see the imports above

    return RunConfig(
        connector=args.connector,
        profile=args.profile,
        mode=Mode(args.mode),
        base_url=args.base_url,
        openapi=args.openapi,
        faults=bool(args.faults),
        overrides=tuple(args.overrides),
        cassettes=args.cassettes,
        record=bool(args.record),
        vault_path=args.vault_path,
        select=tuple(args.select),
    )


def _progress(out: TextIO, quiet: bool) -> ProgressCallback:
    def show(result: ScenarioResult, index: int, total: int) -> None:
        if quiet and result.verdict is not Verdict.FAILED:
            return
        width = len(str(total))
        line = (
            f"[{index:>{width}}/{total}] {_MARK[result.verdict]} {result.scenario_id} "
            f"({result.duration_s * 1000:.0f} ms)"
        )
        if result.reason and result.verdict is not Verdict.PASSED:
            line += f": {result.reason}"
        out.write(line + "\n")
        out.flush()

    return show


def _summary(report: RunReport, out: TextIO, written: dict[str, Path]) -> None:
    counts = report.counts()
    out.write(
        f"\n{report.connector} ({report.profile}, {report.mode}): {report.status.value.upper()} "
        f"- {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
        f"in {report.duration_s:.1f} s\n"
    )
    missing = report.missing_inputs()
    if missing:
        named = ", ".join(
            name + (f" ({len(ids)} scenarios)" if len(ids) > 1 else f" ({ids[0]})")
            for name, ids in missing.items()
        )
        out.write(f"skipped for want of a magic value in the sandbox profile: {named}\n")
    for defect in report.openapi_defects:
        out.write(f"warning: OpenAPI spec defect tolerated: {defect}\n")
    if report.skip_reason:
        out.write(f"skipped: {report.skip_reason}\n")
    covered = len(report.coverage.declared) - len(report.coverage.uncovered)
    if report.coverage_skip is not None and report.skip_reason is None:
        out.write(f"coverage: {report.coverage_skip}\n")
    elif report.coverage.declared:
        out.write(f"coverage: {covered}/{len(report.coverage.declared)} declared capabilities\n")
    if report.leak_scan_skip is not None and report.skip_reason is None and not report.leaks:
        out.write(f"leak scan: {report.leak_scan_skip}\n")
    for problem in report.problems():
        out.write(f"  - {problem}\n")
    for name, path in written.items():
        out.write(f"{name} report: {path}\n")
    out.flush()


@contextlib.contextmanager
def _stdlib_logs_shown(out: TextIO, redact: Callable[[str], str]) -> Iterator[None]:
    """``--verbose``: print the standard library's log records (a connector's
    ``logging.getLogger(__name__).info(...)``) with structlog's lines, redacted like them.
    Without a handler of ours, the root logger has none: only WARNING and above reached the
    console, through logging's last resort, and on stderr."""
    handler = ConsoleHandler(out, redact)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


@contextlib.contextmanager
def _silent_structlog(verbose: bool) -> Iterator[None]:
    """Keep log lines off the progress output. Events are still produced at every level (the
    leak scan captures them before rendering); only the final output is dropped."""
    if verbose:
        yield
        return
    previous = structlog.get_config()
    structlog.configure(
        processors=[structlog.processors.add_log_level],
        logger_factory=structlog.ReturnLoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    try:
        yield
    finally:
        structlog.configure(**previous)


def run(args: argparse.Namespace) -> int:
    """Run ``conformance run`` with parsed ``args``; returns the exit code."""
    from conformance.environment import SetupError  # lazy: see the imports above
    from conformance.runner import ConformanceRun

    out, err = sys.stdout, sys.stderr
    paths = {
        name: path
        for name, path in (("junit", args.junit), ("json", args.json), ("html", args.html))
        if path is not None
    }
    try:
        check_report_paths(paths)
        conformance = ConformanceRun(_config(args), progress=_progress(out, args.quiet))
        verbose = bool(getattr(args, "verbose", False))
        with contextlib.ExitStack() as stack:
            stack.enter_context(_silent_structlog(verbose))
            if verbose:
                stack.enter_context(_stdlib_logs_shown(out, conformance.env.scanner.redact))
            report = asyncio.run(conformance.run_all())
    except SetupError as exc:
        err.write(f"conformance: error: {exc}\n")
        return 2
    try:
        write_reports(report, conformance.env.scanner, paths)
    except OSError as exc:
        _summary(report, out, {})
        err.write(f"conformance: error: cannot write a report: {exc}\n")
        return 2
    _summary(report, out, paths)
    return report.exit_code()


def main(argv: list[str] | None = None) -> int:
    """``python -m conformance run ...``"""
    parser = argparse.ArgumentParser(
        prog="python -m conformance", description="Tessera connector conformance kit."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_arguments(commands.add_parser("run", help="run the conformance scenarios"))
    args = parser.parse_args(argv)
    return run(args)
