"""Capabilities: what a manifest declares, spelled as the strings coverage is counted in.

``declared_capabilities`` turns a ``Manifest`` into a sorted list such as::

    operation:authorize  operation:capture  capture:partial  capture:multiple
    refund:partial  method:card  currency:JPY  idempotency  retry_safe:capture  ...

Each scenario says which of them it *covers* (proves when it passes). After a run,
``compute_coverage`` maps every declared capability to the scenarios that ran and passed for it;
one left empty fails the run, naming the capability (no silent gaps). ``retry_safe:*`` are only
declared-for-coverage when fault injection is on, because only fault scenarios can prove a retry;
``operation:webhooks`` is not judged in live mode, where the kit cannot receive the provider's
webhooks.
"""

from __future__ import annotations

from collections.abc import Iterable

from conformance.results import CoverageReport, ScenarioResult, Verdict
from sdk import Manifest

__all__ = ["compute_coverage", "declared_capabilities"]


def declared_capabilities(manifest: Manifest, *, faults: bool, webhooks: bool = True) -> list[str]:
    caps: set[str] = {f"operation:{op.value}" for op in manifest.operations}
    if not webhooks:
        caps.discard("operation:webhooks")
    for name, multi in (("capture", manifest.capture), ("refund", manifest.refund)):
        if multi.partial:
            caps.add(f"{name}:partial")
        if multi.multiple:
            caps.add(f"{name}:multiple")
    caps |= {f"method:{method.value}" for method in manifest.payment_methods}
    caps |= {f"currency:{currency}" for currency in manifest.currencies}
    if manifest.idempotency is not None:
        caps.add("idempotency")
    if faults:
        caps |= {f"retry_safe:{op.value}" for op in manifest.retry_safe}
    return sorted(caps)


def compute_coverage(declared: Iterable[str], results: Iterable[ScenarioResult]) -> CoverageReport:
    declared_list = list(declared)
    report = CoverageReport(
        declared=declared_list,
        covered_by={cap: [] for cap in declared_list},
        attempted_by={cap: [] for cap in declared_list},
        skipped_by={cap: [] for cap in declared_list},
    )
    for result in results:
        for cap in result.covers:
            if cap not in report.covered_by:
                continue
            if result.verdict is Verdict.PASSED:
                report.covered_by[cap].append(result.scenario_id)
            elif result.verdict is Verdict.FAILED:
                report.attempted_by[cap].append(result.scenario_id)
            else:
                report.skipped_by[cap].append(f"{result.scenario_id} ({result.reason})")
    return report
