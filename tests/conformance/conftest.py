"""Fixtures for the conformance kit's tests: connectors and simulators registered for one test,
sandbox profile files written for them, and running the kit in-process."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance import simulators
from conformance.environment import Mode, RunConfig
from conformance.results import RunReport, ScenarioResult
from conformance.runner import ConformanceRun
from conformance.sandboxes import BUILTIN_DIR
from sdk import Connector, register_connector, unregister_connector

Register = Callable[[type[Connector], Callable[..., Any] | None], None]


@pytest.fixture
def register() -> Iterator[Register]:
    """Register connector classes (and their simulators) for this test only."""
    registered: list[str] = []

    def add(cls: type[Connector], simulator: Callable[..., Any] | None = None) -> None:
        register_connector(cls)
        registered.append(cls.manifest.id)
        if simulator is not None:
            simulators.register_simulator(cls.manifest.id, simulator)

    yield add
    for connector_id in registered:
        unregister_connector(connector_id)
        simulators.unregister_simulator(connector_id)


def write_profile(directory: Path, data: dict[str, Any], name: str = "profile.json") -> Path:
    path = directory / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def sandbox_profile_as(connector_id: str, directory: Path) -> Path:
    """The built-in sandbox simulator profile, for a connector talking to the same simulator."""
    data = json.loads((BUILTIN_DIR / "sandbox" / "simulator.json").read_text())
    data["connector"] = connector_id
    return write_profile(directory, data, f"{connector_id}.json")


async def run_kit(connector: str, **options: Any) -> RunReport:
    options.setdefault("mode", Mode.SIMULATOR)
    return await ConformanceRun(RunConfig(connector=connector, **options)).run_all()


def by_id(report: RunReport) -> dict[str, ScenarioResult]:
    return {result.scenario_id: result for result in report.scenarios}


def specs_dir() -> Path:
    """The official provider specs (CI sets TESSERA_SPECS_DIR); skip naming it when unset."""
    value = os.environ.get("TESSERA_SPECS_DIR")
    if not value:
        pytest.skip("TESSERA_SPECS_DIR is not set: contract tests need the official provider specs")
    return Path(value)
