"""The registry: entry-point discovery, load-time validation with reasons naming the plugin,
programmatic registration, and the listing ``tessera connector list`` prints."""

from __future__ import annotations

import re
from importlib.metadata import EntryPoint

import pytest

from normalization import ConnectorConfigurationError, PaymentResult
from sdk import (
    ENTRY_POINT_GROUP,
    CallContext,
    Connector,
    ConnectorRegistry,
    describe_manifest,
    format_manifest_table,
    implemented_operations,
    load_connectors,
    load_registry,
    register_connector,
    unregister_connector,
    validate_connector_class,
)
from sdk.operations import Operation
from tests.sdk.demo_connector import MANIFEST, DemoConnector


def ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


DEMO = ep("demo", "tests.sdk.demo_connector:DemoConnector")


def test_entry_points_load_and_validate() -> None:
    connectors = load_connectors([DEMO])
    assert connectors == {"demo": DemoConnector}
    assert implemented_operations(DemoConnector) == MANIFEST.operations


@pytest.mark.parametrize(
    ("entry_point", "message"),
    [
        (ep("broken", "tests.sdk.broken_plugin:BrokenConnector"), "invalid manifest: .*capture"),
        (ep("missing", "tests.sdk.no_such_module:X"), "failed to load: ModuleNotFoundError"),
        (ep("demo", "tests.sdk.demo_connector:MANIFEST"), "not name a subclass"),
        (ep("acme", "tests.sdk.demo_connector:DemoConnector"), "must be the manifest id"),
    ],
)
def test_bad_plugins_are_refused_with_a_reason_naming_the_plugin(
    entry_point: EntryPoint, message: str
) -> None:
    # Loading the installed set records a bad plugin (tests/sdk/test_registry_isolation.py) ...
    registry = load_registry([entry_point])
    assert load_connectors([entry_point]) == {} and len(registry) == 0
    [broken] = registry.broken()
    assert broken.plugin == f"{entry_point.name} = {entry_point.value}"
    assert re.search(message, broken.reason), broken.reason
    # ... loading that one plugin on purpose raises, naming it.
    with pytest.raises(ConnectorConfigurationError, match=message) as caught:
        ConnectorRegistry().load_entry_point(entry_point)
    assert entry_point.name in str(caught.value)


class DeclaresVoidWithoutVerb(DemoConnector):
    manifest = MANIFEST.model_copy(update={"id": "lazy"})

    void = Connector.void  # the base's "not supported" verb


class ImplementsUndeclared(DemoConnector):
    manifest = MANIFEST.model_copy(update={"id": "eager"})

    async def verify(self, request: object, ctx: CallContext) -> PaymentResult:
        raise NotImplementedError


class SyncVerb(DemoConnector):
    manifest = MANIFEST.model_copy(update={"id": "syncy"})

    def sync(self, request: object, ctx: CallContext) -> PaymentResult:  # type: ignore[override]
        raise NotImplementedError


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (DeclaresVoidWithoutVerb, "declares 'void' but does not implement void()"),
        (ImplementsUndeclared, "implements verify\\(\\) but its manifest does not declare"),
        (SyncVerb, "sync\\(\\) must be async"),
    ],
)
def test_verbs_and_declared_operations_must_match(cls: type[Connector], message: str) -> None:
    with pytest.raises(ConnectorConfigurationError, match=message):
        validate_connector_class(cls, plugin="tests:plugin")


def test_duplicate_ids_are_refused_naming_both_plugins() -> None:
    class Twin(DemoConnector):
        pass

    registry = ConnectorRegistry()
    registry.load_entry_points([DEMO])
    with pytest.raises(ConnectorConfigurationError, match="already registered by 'demo = "):
        registry.register(Twin, plugin="twin-plugin")


def test_programmatic_registration_for_tests() -> None:
    class Other(DemoConnector):
        manifest = MANIFEST.model_copy(update={"id": "other_demo", "display_name": "Other"})

    register_connector(Other)
    try:
        assert load_connectors([DEMO]) == {"demo": DemoConnector, "other_demo": Other}
    finally:
        unregister_connector("other_demo")
    assert "other_demo" not in load_connectors([DEMO])


def test_listing_shows_each_manifest() -> None:
    table = format_manifest_table([MANIFEST])
    header, row = table.splitlines()
    assert header.split()[:3] == ["ID", "NAME", "CATEGORY"]
    assert row.startswith("demo") and "card-acquirer" in row and "authorize" in row
    assert format_manifest_table([]) == "No connectors installed."
    detail = describe_manifest(MANIFEST)
    assert "header Idempotency-Key, retained 86400s" in detail
    assert "https://sandbox.demo-acquirer.example" in detail
    assert Operation.REFUND.value in detail
