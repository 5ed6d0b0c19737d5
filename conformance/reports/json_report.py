"""The JSON report: ``RunReport.to_dict()`` as indented JSON (status, counts, problems,
scenarios with their assertions, removed assertions, violations and failing exchanges,
coverage, leaks, and the inputs the sandbox profile has no magic value for)."""

from __future__ import annotations

import json

from conformance.results import RunReport

__all__ = ["render_json"]


def render_json(report: RunReport) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=False, default=str) + "\n"
