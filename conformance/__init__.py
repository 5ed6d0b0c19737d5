"""The conformance kit: scenario catalogue, profiles, runner, fault proxy, OpenAPI traffic
validation, leak scanner, reports, the pytest plugin and the CLI.

Imports ``sdk`` and ``normalization``; finds connectors through the registry and simulators
through the ``tessera.simulators`` entry points, never by name. ``docs/conformance.md`` is the
user guide.

| module | holds |
| --- | --- |
| ``cli`` / ``__main__`` | ``tessera conformance run`` (``add_arguments``, ``run``); ``-m`` |
| ``pytest_plugin`` | ``pytest --tessera-connector NAME`` |
| ``runner`` | ``ConformanceRun``: plan, run, judge coverage and leaks |
| ``environment`` | ``RunConfig``, the modes (simulator, replay, live), what a run shares |
| ``harness`` | ``ScenarioContext``: what scenarios call the connector and check facts with |
| ``scenarios`` | the catalogue: card-acquirer, bank-rail, open-banking, faults, webhooks |
| ``expectations`` | baseline expectations, merge patches, checking facts |
| ``sandboxes`` | sandbox profile files: magic values, patches, reasons (``sandboxes/<id>/``) |
| ``inputs`` | abstract inputs to requests; the canary card |
| ``capabilities`` | declared capabilities and coverage |
| ``proxy`` / ``traffic`` | the fault proxy; the tap that sees the real bytes |
| ``webhook_faults`` | the webhook receiver and delivery faults |
| ``contract`` / ``formbody`` | OpenAPI validation; form bodies as JSON |
| ``leaks`` / ``logcapture`` | the canary scanner; log capture |
| ``polling`` | waiting with a deadline |
| ``cassettes`` / ``simulators`` | replay recordings (``cassettes/<id>/``); simulator discovery |
| ``results`` / ``reports`` | the run's data; JUnit, JSON and HTML |

The names below are importable from ``conformance`` itself; they load on first use, so that the
pytest plugin (loaded by every pytest session of a project) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conformance.contract import ContractValidator
    from conformance.environment import Mode, RunConfig, SetupError
    from conformance.harness import ScenarioContext
    from conformance.leaks import LeakScanner
    from conformance.polling import PollPolicy, poll
    from conformance.proxy import Fault, FaultProxy
    from conformance.reports import render_reports, write_reports
    from conformance.results import RunReport, RunStatus, ScenarioResult, Verdict
    from conformance.runner import ConformanceRun
    from conformance.sandboxes import SandboxProfileError, load_sandbox_profile
    from conformance.scenarios import CATALOGUE, Requirement, scenario
    from conformance.simulators import register_simulator, unregister_simulator

__all__ = [
    "CATALOGUE",
    "ConformanceRun",
    "ContractValidator",
    "Fault",
    "FaultProxy",
    "LeakScanner",
    "Mode",
    "PollPolicy",
    "Requirement",
    "RunConfig",
    "RunReport",
    "RunStatus",
    "SandboxProfileError",
    "ScenarioContext",
    "ScenarioResult",
    "SetupError",
    "Verdict",
    "load_sandbox_profile",
    "poll",
    "register_simulator",
    "render_reports",
    "scenario",
    "unregister_simulator",
    "write_reports",
]

_HOMES = {
    "CATALOGUE": "scenarios",
    "ConformanceRun": "runner",
    "ContractValidator": "contract",
    "Fault": "proxy",
    "FaultProxy": "proxy",
    "LeakScanner": "leaks",
    "Mode": "environment",
    "PollPolicy": "polling",
    "Requirement": "scenarios",
    "RunConfig": "environment",
    "RunReport": "results",
    "RunStatus": "results",
    "SandboxProfileError": "sandboxes",
    "ScenarioContext": "harness",
    "ScenarioResult": "results",
    "SetupError": "environment",
    "Verdict": "results",
    "load_sandbox_profile": "sandboxes",
    "poll": "polling",
    "register_simulator": "simulators",
    "render_reports": "reports",
    "scenario": "scenarios",
    "unregister_simulator": "simulators",
    "write_reports": "reports",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'conformance' has no attribute {name!r}")
    return getattr(importlib.import_module(f"conformance.{home}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
