"""The kit next to broken connector plugins: a run against a good connector is set up as usual,
a run against a broken one is refused naming the reason (``SetupError``, exit 2 from the CLI)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from importlib.metadata import EntryPoint

import pytest

import sdk.registry
from conformance.environment import RunConfig, RunEnvironment, SetupError
from sdk import ENTRY_POINT_GROUP


@pytest.fixture(autouse=True)
def broken_installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    extra = [
        EntryPoint("acme", "tests.no_such_module:AcmeConnector", ENTRY_POINT_GROUP),
        EntryPoint("invalid", "tests.sdk.broken_plugin:BrokenConnector", ENTRY_POINT_GROUP),
    ]
    real = importlib.metadata.entry_points

    def entry_points(*, group: str) -> list[EntryPoint]:
        return [*real(group=group), *extra]

    monkeypatch.setattr(sdk.registry, "entry_points", entry_points)
    yield


def test_a_run_against_a_good_connector_ignores_unrelated_broken_plugins() -> None:
    env = RunEnvironment(RunConfig(connector="sandbox"))
    assert env.manifest.id == "sandbox"


@pytest.mark.parametrize(
    ("connector", "reason"),
    [
        ("acme", "failed to load: ModuleNotFoundError: No module named 'tests.no_such_module'."),
        ("invalid", "invalid manifest: "),
    ],
)
def test_a_run_against_a_broken_plugin_names_the_reason(connector: str, reason: str) -> None:
    with pytest.raises(SetupError) as caught:
        RunEnvironment(RunConfig(connector=connector))
    message = str(caught.value)
    assert message.startswith(f"Connector {connector!r} cannot be used: its plugin '{connector} = ")
    assert reason in message
