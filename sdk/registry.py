"""The connector registry: discovery through entry points, load-time validation, listing.

Connectors, reference and third-party alike, register in the ``tessera.connectors`` entry-point
group, the entry-point name being the connector's slug::

    [project.entry-points."tessera.connectors"]
    acme = "tessera_acme.connector:AcmeConnector"

``load_connectors()`` loads every entry point and validates each class (``sdk.connector.
validate_connector_class``): an import error, an invalid manifest, a declared operation without
its verb or a verb without its declaration, an entry-point name that is not the manifest id, or
two plugins with one id all raise ``ConnectorConfigurationError`` naming the plugin.

Tests register classes without packaging them: ``register_connector(cls)`` (also a decorator)
adds to what ``load_connectors()`` returns, ``unregister_connector(id)`` removes it.
``format_manifest_table`` and ``describe_manifest`` render what ``tessera connector list`` prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from importlib.metadata import EntryPoint, entry_points
from typing import TypeVar

from pydantic import ValidationError

from normalization import ConnectorConfigurationError
from sdk.connector import Connector, validate_connector_class
from sdk.manifest import Manifest

__all__ = [
    "ENTRY_POINT_GROUP",
    "ConnectorRegistry",
    "describe_manifest",
    "format_manifest_table",
    "load_connectors",
    "register_connector",
    "unregister_connector",
]

ENTRY_POINT_GROUP = "tessera.connectors"

C = TypeVar("C", bound=type[Connector])


def _validation_summary(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'manifest'}: {error['msg']}"
        for error in exc.errors()
    )


class ConnectorRegistry:
    """Validated connector classes by id, remembering which plugin brought each."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Connector]] = {}
        self._plugins: dict[str, str] = {}

    def __contains__(self, connector_id: object) -> bool:
        return connector_id in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._classes))

    def __len__(self) -> int:
        return len(self._classes)

    def register(self, cls: type[Connector], *, plugin: str | None = None) -> type[Connector]:
        """Validate and add ``cls``; ``plugin`` names it in errors (default: its import path)."""
        plugin = plugin or f"{cls.__module__}:{cls.__qualname__}"
        validate_connector_class(cls, plugin=plugin)
        connector_id = cls.manifest.id
        existing = self._classes.get(connector_id)
        if existing is not None and existing is not cls:
            raise ConnectorConfigurationError(
                f"Connector plugin {plugin!r}: id {connector_id!r} is already registered by "
                f"{self._plugins[connector_id]!r}."
            )
        self._classes[connector_id] = cls
        self._plugins[connector_id] = plugin
        return cls

    def unregister(self, connector_id: str) -> None:
        self._classes.pop(connector_id, None)
        self._plugins.pop(connector_id, None)

    def get(self, connector_id: str) -> type[Connector]:
        try:
            return self._classes[connector_id]
        except KeyError:
            raise ConnectorConfigurationError(
                f"No connector {connector_id!r} is installed."
            ) from None

    def plugin(self, connector_id: str) -> str:
        return self._plugins[connector_id]

    def classes(self) -> dict[str, type[Connector]]:
        return dict(sorted(self._classes.items()))

    def manifests(self) -> list[Manifest]:
        return [cls.manifest for _, cls in sorted(self._classes.items())]

    def load_entry_point(self, entry_point: EntryPoint) -> type[Connector]:
        plugin = f"{entry_point.name} = {entry_point.value}"
        try:
            loaded = entry_point.load()
        except ValidationError as exc:
            raise ConnectorConfigurationError(
                f"Connector plugin {plugin!r}: invalid manifest: {_validation_summary(exc)}."
            ) from exc
        except Exception as exc:
            raise ConnectorConfigurationError(
                f"Connector plugin {plugin!r} failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        cls = validate_connector_class(loaded, plugin=plugin)
        if cls.manifest.id != entry_point.name:
            raise ConnectorConfigurationError(
                f"Connector plugin {plugin!r}: the entry-point name must be the manifest id "
                f"{cls.manifest.id!r}."
            )
        return self.register(cls, plugin=plugin)

    def load_entry_points(self, selected: Iterable[EntryPoint] | None = None) -> None:
        """Load ``selected`` entry points (default: the installed ``tessera.connectors`` ones)."""
        if selected is None:
            selected = entry_points(group=ENTRY_POINT_GROUP)
        for entry_point in sorted(selected, key=lambda ep: ep.name):
            self.load_entry_point(entry_point)


_REGISTERED = ConnectorRegistry()


def register_connector(cls: C) -> C:
    """Register a connector class programmatically (tests, embedding); usable as a decorator."""
    _REGISTERED.register(cls)
    return cls


def unregister_connector(connector_id: str) -> None:
    _REGISTERED.unregister(connector_id)


def load_connectors(
    selected: Iterable[EntryPoint] | None = None,
) -> dict[str, type[Connector]]:
    """Every installed connector plus the programmatically registered ones, by id, validated."""
    registry = ConnectorRegistry()
    registry.load_entry_points(selected)
    for connector_id in _REGISTERED:
        registry.register(_REGISTERED.get(connector_id), plugin=_REGISTERED.plugin(connector_id))
    return registry.classes()


def _join(values: Iterable[str], limit: int = 6) -> str:
    items = sorted(values)
    if not items:
        return "-"
    shown = ",".join(items[:limit])
    return shown if len(items) <= limit else f"{shown},+{len(items) - limit}"


def format_manifest_table(manifests: Iterable[Manifest]) -> str:
    """A plain-text table, one connector per row, for ``tessera connector list``."""
    header = ("ID", "NAME", "CATEGORY", "OPERATIONS", "METHODS", "CURRENCIES", "RETRY-SAFE")
    rows = [header]
    for m in sorted(manifests, key=lambda m: m.id):
        rows.append(
            (
                m.id,
                m.display_name,
                m.category.value,
                _join((op.value for op in m.operations), limit=20),
                _join(pm.value for pm in m.payment_methods),
                _join(m.currencies),
                _join(op.value for op in m.retry_safe),
            )
        )
    if len(rows) == 1:
        return "No connectors installed."
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def describe_manifest(manifest: Manifest) -> str:
    """Every field of one manifest, one per line, for ``tessera connector list --verbose``."""
    m = manifest
    idempotency = (
        f"header {m.idempotency.header}" if m.idempotency and m.idempotency.header else None
    ) or (f"body field {m.idempotency.body_field}" if m.idempotency else "none")
    retention = f", retained {m.idempotency.retention_seconds}s" if m.idempotency else ""
    exponents = ", ".join(f"{c}={e}" for c, e in sorted(m.currency_exponents.items()))
    lines = [
        f"{m.id}: {m.display_name} ({m.category.value})",
        f"  operations:       {_join((op.value for op in m.operations), limit=20)}",
        f"  capture:          partial={m.capture.partial} multiple={m.capture.multiple}",
        f"  refund:           partial={m.refund.partial} multiple={m.refund.multiple}",
        f"  payment methods:  {_join(pm.value for pm in m.payment_methods)}",
        f"  currencies:       {_join(m.currencies, limit=50)}"
        + (f" (exponents: {exponents})" if exponents else ""),
        f"  countries:        {_join(m.countries, limit=50) if m.countries else 'any'}",
        f"  idempotency:      {idempotency}{retention}",
        f"  retry-safe:       {_join(op.value for op in m.retry_safe)}",
        f"  webhook events:   {_join(m.webhook_events, limit=20)}",
        f"  sandbox URL:      {m.base_urls.sandbox}",
        f"  live URL:         {m.base_urls.live or '-'}",
        f"  credentials:      {_join(f.name for f in m.credentials)}",
    ]
    return "\n".join(lines)
