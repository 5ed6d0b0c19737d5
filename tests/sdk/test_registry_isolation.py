"""A broken connector plugin is isolated: the others load, the broken one is recorded with a
one-line reason, an id two plugins claim is refused whole, and only what needs a refused id
fails (``registry.get``, the generator's installed-id check)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import sdk.registry
from normalization import ConnectorConfigurationError
from sdk.generator import generate_connector
from sdk.registry import (
    ENTRY_POINT_GROUP,
    BrokenPlugin,
    ConnectorRegistry,
    format_broken_plugins,
    load_connectors,
    load_registry,
    register_connector,
    unregister_connector,
)
from tests.sdk.demo_connector import DemoConnector
from tests.sdk.registry_plugins import CARD_IN_ERROR, TwinDemoConnector


def ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def spec(entry_point: EntryPoint) -> str:
    return f"{entry_point.name} = {entry_point.value}"


DEMO = ep("demo", "tests.sdk.demo_connector:DemoConnector")
TWIN = ep("demo", "tests.sdk.registry_plugins:TwinDemoConnector")
NO_MODULE = "No module named 'tests.sdk.no_such_module'"
MISSING = ep("missing", "tests.sdk.no_such_module:X")
INVALID = ep("broken", "tests.sdk.broken_plugin:BrokenConnector")
MISNAMED = ep("acme", "tests.sdk.demo_connector:DemoConnector")
EXITS = ep("exits", "tests.sdk.registry_plugins:Exits")
CRASHES = ep("crashes", "tests.sdk.registry_plugins:Crashes")


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[EntryPoint]]:
    """Entry points added to the really installed ones, for code that loads the default set."""
    extra: list[EntryPoint] = []
    real = importlib.metadata.entry_points

    def entry_points(*, group: str) -> list[EntryPoint]:
        return [*real(group=group), *extra]

    monkeypatch.setattr(sdk.registry, "entry_points", entry_points)
    yield extra


def test_one_broken_plugin_does_not_stop_the_others() -> None:
    plugins = [MISSING, INVALID, DEMO, MISNAMED, EXITS, CRASHES]
    registry = load_registry(plugins)
    assert registry.classes() == {"demo": DemoConnector}
    assert load_connectors(plugins) == {"demo": DemoConnector}
    reasons = {b.plugin: b.reason for b in registry.broken()}
    assert reasons == {
        spec(MISSING): f"failed to load: ModuleNotFoundError: {NO_MODULE}",
        spec(INVALID): reasons[spec(INVALID)],
        spec(MISNAMED): "the entry-point name must be the manifest id 'demo'",
        spec(EXITS): "failed to load: SystemExit: plugin called sys.exit() while importing",
        spec(CRASHES): reasons[spec(CRASHES)],
    }
    assert reasons[spec(INVALID)].startswith("invalid manifest: ")
    assert "capture" in reasons[spec(INVALID)]
    # The claimed id is the entry-point name: a misnamed plugin claims "acme", not "demo".
    assert [b.connector_id for b in registry.broken()] == [
        "acme",
        "broken",
        "crashes",
        "exits",
        "missing",
    ]


def test_a_reason_is_one_line_and_never_shows_a_card_number() -> None:
    [broken] = load_registry([CRASHES]).broken()
    assert "\n" not in broken.reason
    assert broken.reason.startswith("failed to load: RuntimeError: settings file missing; the")
    assert CARD_IN_ERROR not in broken.reason and CARD_IN_ERROR not in str(broken)
    assert str(broken) == f"{spec(CRASHES)}: {broken.reason}"


def test_two_plugins_claiming_one_id_are_both_refused_naming_each_other() -> None:
    registry = load_registry([DEMO, TWIN, INVALID])
    assert "demo" not in registry and load_connectors([DEMO, TWIN]) == {}
    refused = registry.broken("demo")
    assert [b.plugin for b in refused] == [spec(DEMO), spec(TWIN)]
    assert refused[0].reason == (
        f"id 'demo' is also claimed by {spec(TWIN)!r}, so neither is used (uninstall all but one)"
    )
    assert spec(DEMO) in refused[1].reason
    with pytest.raises(ConnectorConfigurationError) as caught:
        registry.get("demo")
    message = str(caught.value)
    assert message.startswith("Connector 'demo' cannot be used: 2 plugins claim it")
    assert spec(DEMO) in message and spec(TWIN) in message
    # The same class under two entry points is no conflict: nothing to choose between.
    alias = ep("demo", "tests.sdk.registry_plugins:DemoConnector")
    assert load_connectors([DEMO, alias]) == {"demo": DemoConnector}


def test_an_id_shared_with_a_broken_plugin_is_refused_too() -> None:
    """The broken one may be the package the operator meant: using the other would be a guess."""
    crashing_demo = ep("demo", "tests.sdk.registry_plugins:Crashes")
    registry = load_registry([DEMO, crashing_demo])
    assert len(registry) == 0
    good, crashing = registry.broken("demo")
    assert good.plugin == spec(DEMO)
    assert good.reason == (
        f"id 'demo' is also claimed by {spec(crashing_demo)!r}, so neither is used "
        "(uninstall all but one)"
    )
    assert crashing.plugin == spec(crashing_demo)
    assert crashing.reason.startswith("failed to load: RuntimeError: ")


def test_a_programmatic_class_and_a_plugin_with_one_id_are_both_refused() -> None:
    register_connector(TwinDemoConnector)
    try:
        with pytest.raises(ConnectorConfigurationError, match="already registered by"):
            register_connector(DemoConnector)  # the mistake at the call site still raises
        registry = load_registry([DEMO])
        assert "demo" not in registry
        assert {b.plugin for b in registry.broken("demo")} == {
            spec(DEMO),
            "tests.sdk.registry_plugins:TwinDemoConnector",
        }
    finally:
        unregister_connector("demo")
    assert load_connectors([DEMO]) == {"demo": DemoConnector}


def test_get_says_why_a_connector_cannot_be_used() -> None:
    registry = load_registry([DEMO, MISSING])
    assert registry.get("demo") is DemoConnector
    with pytest.raises(ConnectorConfigurationError) as caught:
        registry.get("missing")
    assert str(caught.value) == (
        f"Connector 'missing' cannot be used: its plugin {spec(MISSING)!r} is broken: failed to "
        f"load: ModuleNotFoundError: {NO_MODULE}."
    )
    with pytest.raises(ConnectorConfigurationError, match=r"^No connector 'nope' is installed"):
        registry.get("nope")
    # A later registration cannot take an id a broken plugin claims.
    with pytest.raises(ConnectorConfigurationError, match=r"already claimed by .* \(broken\)"):
        registry.register(_with_id("missing"))


def _with_id(connector_id: str) -> type[DemoConnector]:
    class Other(DemoConnector):
        manifest = DemoConnector.manifest.model_copy(update={"id": connector_id})

    return Other


def test_loading_more_entry_points_later_refuses_a_conflict_with_earlier_ones() -> None:
    registry = ConnectorRegistry()
    registry.load_entry_points([DEMO, MISSING])
    registry.load_entry_points([TWIN, ep("missing", "tests.sdk.demo_connector:DemoConnector")])
    assert len(registry) == 0
    assert [b.plugin for b in registry.broken("demo")] == [spec(DEMO), spec(TWIN)]
    assert len(registry.broken("missing")) == 2


def test_the_listing_of_broken_plugins() -> None:
    broken = [
        BrokenPlugin("a = x:A", "a", "failed to load: ImportError: no"),
        BrokenPlugin("b = y:B", "b", "invalid manifest: id: bad"),
    ]
    assert format_broken_plugins(broken) == (
        "  a = x:A: failed to load: ImportError: no\n  b = y:B: invalid manifest: id: bad"
    )


def test_the_generator_refuses_the_id_of_a_broken_plugin(
    installed: list[EntryPoint], tmp_path: Path
) -> None:
    installed += [ep("acme", "tests.sdk.no_such_module:X"), MISNAMED, CRASHES]
    # Two with the name "acme": a broken one and a misnamed one; both claim the id.
    with pytest.raises(ConnectorConfigurationError) as caught:
        generate_connector("Acme", "card-acquirer", tmp_path)
    assert "'acme' is already installed, from a broken plugin" in str(caught.value)
    assert "ModuleNotFoundError" in str(caught.value)
    with pytest.raises(ConnectorConfigurationError, match="'crashes' is already installed"):
        generate_connector("crashes", "bank-rail", tmp_path)
    assert list(tmp_path.iterdir()) == []
    # A usable one is still refused as before, and a free name is generated.
    with pytest.raises(ConnectorConfigurationError, match="'sandbox' is already installed \\("):
        generate_connector("sandbox", "card-acquirer", tmp_path)
    assert generate_connector("acme2", "card-acquirer", tmp_path).is_dir()
