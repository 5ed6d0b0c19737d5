"""What a conformance run found, as plain data: per-scenario results, coverage, leaks, the run.

Every report format (``conformance.reports``) renders a ``RunReport``; nothing here does I/O.
Values in these objects are already scrubbed (transcripts by the SDK, texts by the leak scanner's
redaction), so a report can be written anywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "AssertionOutcome",
    "CoverageReport",
    "ExchangeView",
    "LeakFinding",
    "RemovedAssertion",
    "RunReport",
    "RunStatus",
    "ScenarioResult",
    "Verdict",
    "Violation",
]


class Verdict(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


class RunStatus(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    #: The live sandbox failed its preflight: nothing was judged.
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class AssertionOutcome:
    """One expectation leaf checked against what a step observed."""

    step: str
    path: str
    expected: str
    actual: str
    passed: bool

    @property
    def label(self) -> str:
        return f"{self.step}.{self.path}"


@dataclass(frozen=True, slots=True)
class RemovedAssertion:
    """A baseline assertion a sandbox profile removed, and why (shown in every report)."""

    path: str
    reason: str
    source: str


@dataclass(frozen=True, slots=True)
class Violation:
    """A contract violation: one exchange's request or response against the OpenAPI spec."""

    direction: str  # "request" | "response"
    method: str
    path: str
    json_path: str
    message: str


@dataclass(frozen=True, slots=True)
class ExchangeView:
    """One scrubbed provider exchange, as shown for a failing scenario."""

    operation: str
    method: str
    url: str
    request_body: str
    status_code: int | None
    response_body: str
    error: str | None
    elapsed_ms: float


@dataclass
class ScenarioResult:
    scenario_id: str
    title: str
    profile: str
    covers: tuple[str, ...]
    verdict: Verdict
    reason: str = ""
    duration_s: float = 0.0
    assertions: list[AssertionOutcome] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    removed: list[RemovedAssertion] = field(default_factory=list)
    exchanges: list[ExchangeView] = field(default_factory=list)
    error: str | None = None
    #: For a scenario skipped for want of a magic value: the input the sandbox profile lacks.
    missing_input: str | None = None

    @property
    def failed_assertions(self) -> list[AssertionOutcome]:
        return [a for a in self.assertions if not a.passed]


@dataclass(frozen=True, slots=True)
class LeakFinding:
    """A canary (card data or a credential) found where it must never be."""

    secret: str  # "canary PAN", "canary CVC", "credential api_key", ... never the value
    encoding: str  # raw, spaced/dashed, base64, hex, url-encoded, in-context
    source: str  # transcript, log, exception, report:<format>
    location: str  # scenario id, log record number, ...


@dataclass
class CoverageReport:
    """Declared capabilities and the scenarios that ran and passed for each."""

    declared: list[str] = field(default_factory=list)
    covered_by: dict[str, list[str]] = field(default_factory=dict)
    attempted_by: dict[str, list[str]] = field(default_factory=dict)
    #: Scenarios covering the capability that were skipped, with their reasons.
    skipped_by: dict[str, list[str]] = field(default_factory=dict)

    @property
    def uncovered(self) -> list[str]:
        return [c for c in self.declared if not self.covered_by.get(c)]


@dataclass
class RunReport:
    connector: str
    display_name: str
    profile: str
    mode: str
    environment: str
    base_url: str
    started_at: str
    duration_s: float = 0.0
    scenarios: list[ScenarioResult] = field(default_factory=list)
    coverage: CoverageReport = field(default_factory=CoverageReport)
    leaks: list[LeakFinding] = field(default_factory=list)
    sandbox_files: list[str] = field(default_factory=list)
    openapi: str | None = None
    #: Known authoring defects of the ``--openapi`` spec, repaired in memory (a warning each).
    openapi_defects: list[str] = field(default_factory=list)
    faults: bool = False
    skip_reason: str | None = None
    #: Why coverage was not judged (a partial run, an unhealthy sandbox), or None.
    coverage_skip: str | None = None

    @property
    def leak_scan_skip(self) -> str | None:
        """Why the leak scan judged nothing, or None when it did: with no scenario run (the
        live sandbox failed its preflight, or every scenario was skipped) there was nothing to
        scan, and "no leak found" would claim a pass that was never earned."""
        if self.skip_reason is not None:
            return f"not run: {self.skip_reason}"
        if all(result.verdict is Verdict.SKIPPED for result in self.scenarios):
            return "not run: no scenario ran"
        return None

    @property
    def status(self) -> RunStatus:
        if self.skip_reason is not None:
            return RunStatus.SKIPPED
        if self.problems():
            return RunStatus.FAILED
        return RunStatus.PASSED

    def problems(self) -> list[str]:
        """Every reason the run fails, one sentence each."""
        found = [
            f"scenario {r.scenario_id} failed: {r.reason}"
            for r in self.scenarios
            if r.verdict is Verdict.FAILED
        ]
        found += [
            f"declared capability {cap!r} is not covered by any scenario that ran and passed"
            + _attempts(
                self.coverage.attempted_by.get(cap, []), self.coverage.skipped_by.get(cap, [])
            )
            for cap in self.coverage.uncovered
        ]
        found += [
            f"leak: {leak.secret} ({leak.encoding}) in {leak.source} at {leak.location}"
            for leak in self.leaks
        ]
        return found

    def missing_inputs(self) -> dict[str, list[str]]:
        """The abstract inputs the sandbox profile has no magic value for, each with the
        scenarios skipped for want of it (``inputs`` in a profile adds them)."""
        missing: dict[str, list[str]] = {}
        for result in self.scenarios:
            if result.verdict is Verdict.SKIPPED and result.missing_input is not None:
                missing.setdefault(result.missing_input, []).append(result.scenario_id)
        return dict(sorted(missing.items()))

    def counts(self) -> dict[str, int]:
        counts = {verdict.value: 0 for verdict in Verdict}
        for result in self.scenarios:
            counts[result.verdict.value] += 1
        return counts

    def exit_code(self) -> int:
        """0 passed, 1 failed, 3 skipped (sandbox unhealthy). 2 is for usage errors."""
        return {RunStatus.PASSED: 0, RunStatus.FAILED: 1, RunStatus.SKIPPED: 3}[self.status]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["counts"] = self.counts()
        data["problems"] = self.problems()
        data["coverage"]["uncovered"] = self.coverage.uncovered
        data["leak_scan_skip"] = self.leak_scan_skip
        data["missing_inputs"] = self.missing_inputs()
        return data


def _attempts(failed: list[str], skipped: list[str]) -> str:
    parts = []
    if failed:
        parts.append(f"attempted by: {', '.join(failed)}")
    if skipped:
        parts.append(f"skipped: {'; '.join(skipped)}")
    if not parts:
        return " (no scenario in the profile exercises it)"
    return f" ({'; '.join(parts)})"
