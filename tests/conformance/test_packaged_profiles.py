"""Sandbox profiles a connector package ships (``tessera.sandboxes`` entry points).

A third-party connector's simulator needs its own magic values and credentials; its package
declares where its profiles live, so the kit finds them without ``--overrides``.
"""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

import conformance.sandboxes
from conformance.sandboxes import PROFILE_GROUP, SandboxProfileError, load_sandbox_profile


def _package(root: Path, name: str, *, init: bool = True, profiles: dict[str, Any]) -> Path:
    directory = root / name / "sandboxes"
    directory.mkdir(parents=True)
    if init:
        (root / name / "__init__.py").write_text("")
        (directory / "__init__.py").write_text("")
    for file_name, content in profiles.items():
        (directory / file_name).write_text(json.dumps(content))
    return directory


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[EntryPoint]:
    """Entry points the kit sees (as an installed package's metadata would declare them)."""
    points: list[EntryPoint] = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def fake_entry_points(*, group: str, name: str) -> list[EntryPoint]:
        return [p for p in points if p.group == group and p.name == name]

    monkeypatch.setattr(conformance.sandboxes, "entry_points", fake_entry_points)
    return points


@pytest.mark.parametrize("init", [True, False], ids=["package", "namespace-package"])
def test_a_connector_package_ships_its_own_profile(
    registered: list[EntryPoint], tmp_path: Path, init: bool
) -> None:
    package = f"acme_connector_{int(init)}"
    simulator = {
        "connector": "acme",
        "environment": "simulator",
        "credentials": {"api_key": "sk_sim_acme"},
        "inputs": {"card.declined.insufficient_funds": {"amount": 5100}},
    }
    _package(tmp_path, package, init=init, profiles={"simulator.json": simulator})
    registered.append(EntryPoint("acme", f"{package}.sandboxes", PROFILE_GROUP))
    profile = load_sandbox_profile("acme", "simulator")
    assert profile.credentials == {"api_key": "sk_sim_acme"}
    assert profile.input("card.declined.insufficient_funds") == {"amount": 5100}
    assert [Path(f).name for f in profile.files] == ["simulator.json"]
    # A replay run falls back to the simulator profile, as the kit's own do.
    assert load_sandbox_profile("acme", "replay").credentials == {"api_key": "sk_sim_acme"}
    # No live profile shipped: a live run starts from nothing.
    assert load_sandbox_profile("acme", "live").files == []


def test_overrides_layer_on_top_of_the_packaged_profile(
    registered: list[EntryPoint], tmp_path: Path
) -> None:
    base = {"connector": "acme", "environment": "simulator"}
    _package(
        tmp_path,
        "acme_layers",
        profiles={"simulator.json": {**base, "credentials": {"api_key": "a", "region": "eu"}}},
    )
    registered.append(EntryPoint("acme", "acme_layers.sandboxes", PROFILE_GROUP))
    override = tmp_path / "mine.json"
    override.write_text(json.dumps({**base, "credentials": {"api_key": "b"}}))
    profile = load_sandbox_profile("acme", "simulator", [override])
    assert profile.credentials == {"api_key": "b", "region": "eu"}
    assert [Path(f).name for f in profile.files] == ["simulator.json", "mine.json"]


def test_a_broken_entry_point_is_named(registered: list[EntryPoint], tmp_path: Path) -> None:
    registered.append(EntryPoint("acme", "no_such_package.sandboxes", PROFILE_GROUP))
    with pytest.raises(SandboxProfileError, match=r"entry point acme = 'no_such_package"):
        load_sandbox_profile("acme", "simulator")


def test_a_packaged_profile_for_another_connector_is_refused(
    registered: list[EntryPoint], tmp_path: Path
) -> None:
    _package(
        tmp_path,
        "acme_wrong",
        profiles={"simulator.json": {"connector": "other", "environment": "simulator"}},
    )
    registered.append(EntryPoint("acme", "acme_wrong.sandboxes", PROFILE_GROUP))
    with pytest.raises(SandboxProfileError, match="written for connector 'other'"):
        load_sandbox_profile("acme", "simulator")
