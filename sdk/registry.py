"""The connector registry: discovery through entry points, load-time validation, listing.

Connectors, reference and third-party alike, register in the ``tessera.connectors`` entry-point
group, the entry-point name being the connector's slug::

    [project.entry-points."tessera.connectors"]
    acme = "tessera_acme.connector:AcmeConnector"

``load_registry()`` loads every entry point **on its own** and validates each class
(``sdk.connector.validate_connector_class``). A broken plugin never stops the others from
loading: an import error (or any exception, ``SystemExit`` included, while importing it), an
invalid manifest, a declared operation without its verb or a verb without its declaration, or an
entry-point name that is not the manifest id is recorded as a ``BrokenPlugin`` (the plugin as
``name = module:attr``, the id it claims, a one-line reason) in ``ConnectorRegistry.broken()``.
An id claimed by two plugins is refused whole: neither class is used (no silent pick), and each
is recorded broken with a reason naming the other. ``registry.get(id)`` returns the class, or
raises ``ConnectorConfigurationError`` saying whether the id is not installed or why its plugin
is broken; what needs that connector fails, and only that. ``load_connectors()`` is
``load_registry().classes()``: the usable connectors by id, as before, without raising.

Tests register classes without packaging them: ``register_connector(cls)`` (also a decorator)
adds to what ``load_registry()`` and ``load_connectors()`` return, ``unregister_connector(id)``
removes it. Registering an invalid class, or a second class under a registered id, raises at
once (``ConnectorRegistry.register`` is strict: the mistake is at the call site).
``format_manifest_table``, ``describe_manifest`` and ``format_broken_plugins`` render what
``tessera connector list`` prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TypeAlias, TypeVar

from pydantic import ValidationError

from normalization import ConnectorConfigurationError
from normalization.redaction import redact_card_text
from sdk.connector import Connector, validate_connector_class
from sdk.manifest import Manifest

__all__ = [
    "ENTRY_POINT_GROUP",
    "BrokenPlugin",
    "ConnectorRegistry",
    "describe_manifest",
    "format_broken_plugins",
    "format_manifest_table",
    "load_connectors",
    "load_registry",
    "register_connector",
    "unregister_connector",
]

ENTRY_POINT_GROUP = "tessera.connectors"

C = TypeVar("C", bound=type[Connector])

#: A reason longer than this is cut (an exception's text is the plugin's, of any length).
_REASON_LIMIT = 1000


def _validation_summary(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'manifest'}: {error['msg']}"
        for error in exc.errors()
    )


def _spec(entry_point: EntryPoint) -> str:
    return f"{entry_point.name} = {entry_point.value}"


def _one_line(text: str) -> str:
    """``text`` on one line, card-number-shaped digits masked, at most ``_REASON_LIMIT`` long."""
    line = redact_card_text(" ".join(text.split())).rstrip(".")
    return line if len(line) <= _REASON_LIMIT else line[: _REASON_LIMIT - 3] + "..."


def _reason(exc: BaseException, plugin: str) -> str:
    """Why ``plugin`` was refused, without the ``Connector plugin '...'`` prefix the SDK's
    errors start with (``BrokenPlugin`` names the plugin itself)."""
    if not isinstance(exc, ConnectorConfigurationError):
        return _one_line(f"failed to load: {type(exc).__name__}: {exc}")
    text = str(exc)
    for prefix in (f"Connector plugin {plugin!r}: ", f"Connector plugin {plugin!r} "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    return _one_line(text)


@dataclass(frozen=True, slots=True)
class BrokenPlugin:
    """A connector plugin the registry refused: ``plugin`` (``name = module:attr``), the
    ``connector_id`` it claims (its entry-point name) and the ``reason``, one line."""

    plugin: str
    connector_id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.plugin}: {self.reason}"


#: (plugin, its class), the class None when the plugin is broken.
Claim: TypeAlias = tuple[str, type[Connector] | None]


class ConnectorRegistry:
    """Validated connector classes by id, remembering which plugin brought each, and the
    plugins that were refused (``broken()``)."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Connector]] = {}
        self._plugins: dict[str, str] = {}
        self._broken: list[BrokenPlugin] = []

    def __contains__(self, connector_id: object) -> bool:
        return connector_id in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._classes))

    def __len__(self) -> int:
        return len(self._classes)

    def register(self, cls: type[Connector], *, plugin: str | None = None) -> type[Connector]:
        """Validate and add ``cls``; ``plugin`` names it in errors (default: its import path).

        Strict: an invalid class, or an id already registered (or claimed by a broken plugin),
        raises ``ConnectorConfigurationError``.
        """
        plugin = plugin or f"{cls.__module__}:{cls.__qualname__}"
        validate_connector_class(cls, plugin=plugin)
        connector_id = cls.manifest.id
        existing = self._classes.get(connector_id)
        if existing is not None and existing is not cls:
            raise ConnectorConfigurationError(
                f"Connector plugin {plugin!r}: id {connector_id!r} is already registered by "
                f"{self._plugins[connector_id]!r}."
            )
        refused = self.broken(connector_id)
        if refused:
            raise ConnectorConfigurationError(
                f"Connector plugin {plugin!r}: id {connector_id!r} is already claimed by "
                f"{', '.join(repr(b.plugin) for b in refused)} (broken)."
            )
        self._classes[connector_id] = cls
        self._plugins[connector_id] = plugin
        return cls

    def unregister(self, connector_id: str) -> None:
        self._classes.pop(connector_id, None)
        self._plugins.pop(connector_id, None)

    def get(self, connector_id: str) -> type[Connector]:
        """The class for ``connector_id``; ``ConnectorConfigurationError`` saying why not:
        its plugin is broken (with the reason), or no plugin provides it."""
        cls = self._classes.get(connector_id)
        if cls is not None:
            return cls
        refused = self.broken(connector_id)
        if len(refused) == 1:
            raise ConnectorConfigurationError(
                f"Connector {connector_id!r} cannot be used: its plugin {refused[0].plugin!r} "
                f"is broken: {refused[0].reason}."
            )
        if refused:
            details = "; ".join(f"{b.plugin!r}: {b.reason}" for b in refused)
            raise ConnectorConfigurationError(
                f"Connector {connector_id!r} cannot be used: {len(refused)} plugins claim it "
                f"and none is used ({details})."
            )
        raise ConnectorConfigurationError(
            f"No connector {connector_id!r} is installed (installed: {', '.join(self) or 'none'})."
        )

    def plugin(self, connector_id: str) -> str:
        return self._plugins[connector_id]

    def classes(self) -> dict[str, type[Connector]]:
        return dict(sorted(self._classes.items()))

    def manifests(self) -> list[Manifest]:
        return [cls.manifest for _, cls in sorted(self._classes.items())]

    def broken(self, connector_id: str | None = None) -> tuple[BrokenPlugin, ...]:
        """The refused plugins (those claiming ``connector_id``, if given), by id then plugin."""
        return tuple(
            sorted(
                (b for b in self._broken if connector_id is None or b.connector_id == connector_id),
                key=lambda b: (b.connector_id, b.plugin),
            )
        )

    def _checked(self, entry_point: EntryPoint) -> type[Connector]:
        """Import and validate one entry point; ``ConnectorConfigurationError`` naming it."""
        plugin = _spec(entry_point)
        try:
            loaded = entry_point.load()
        except ValidationError as exc:
            raise ConnectorConfigurationError(
                f"Connector plugin {plugin!r}: invalid manifest: {_validation_summary(exc)}."
            ) from exc
        except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() on import, too
            raise ConnectorConfigurationError(
                f"Connector plugin {plugin!r} failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        cls = validate_connector_class(loaded, plugin=plugin)
        if cls.manifest.id != entry_point.name:
            raise ConnectorConfigurationError(
                f"Connector plugin {plugin!r}: the entry-point name must be the manifest id "
                f"{cls.manifest.id!r}."
            )
        return cls

    def load_entry_point(self, entry_point: EntryPoint) -> type[Connector]:
        """Load and register one entry point, strictly: any problem raises (``register``)."""
        return self.register(self._checked(entry_point), plugin=_spec(entry_point))

    def load_entry_points(self, selected: Iterable[EntryPoint] | None = None) -> None:
        """Load ``selected`` entry points (default: the installed ``tessera.connectors`` ones),
        each in isolation: a plugin that fails is recorded in ``broken()``, never raised, and an
        id claimed by more than one plugin (here or already in the registry) is refused whole."""
        if selected is None:
            selected = entry_points(group=ENTRY_POINT_GROUP)
        claims: dict[str, list[Claim]] = {}
        for connector_id, cls in self._classes.items():
            claims.setdefault(connector_id, []).append((self._plugins[connector_id], cls))
        for refused in self._broken:
            claims.setdefault(refused.connector_id, []).append((refused.plugin, None))
        for entry_point in sorted(selected, key=lambda ep: (ep.name, ep.value)):
            plugin = _spec(entry_point)
            try:
                claim: Claim = (plugin, self._checked(entry_point))
            except Exception as exc:  # noqa: BLE001 - isolation: whatever one plugin raises
                self._broken.append(BrokenPlugin(plugin, entry_point.name, _reason(exc, plugin)))
                claim = (plugin, None)
            claims.setdefault(entry_point.name, []).append(claim)
        for connector_id, claimed in claims.items():
            self._settle(connector_id, claimed)

    def _settle(self, connector_id: str, claimed: list[Claim]) -> None:
        """Register the one class that claims ``connector_id``, or refuse the id when several
        plugins do (a class claimed twice, by the same object, counts once)."""
        distinct: list[Claim] = []
        for plugin, cls in claimed:
            if cls is None or all(cls is not other for _, other in distinct):
                distinct.append((plugin, cls))
        if len(distinct) == 1:
            plugin, cls = distinct[0]
            if cls is not None:
                self._classes[connector_id] = cls
                self._plugins[connector_id] = plugin
            return
        self.unregister(connector_id)
        neither = "neither" if len(distinct) == 2 else "none"
        for plugin, cls in distinct:
            if cls is None:
                continue  # recorded with its own reason already
            others = ", ".join(repr(p) for p, _ in distinct if p != plugin)
            self._broken.append(
                BrokenPlugin(
                    plugin,
                    connector_id,
                    f"id {connector_id!r} is also claimed by {others}, so {neither} is used "
                    "(uninstall all but one)",
                )
            )


_REGISTERED = ConnectorRegistry()


def register_connector(cls: C) -> C:
    """Register a connector class programmatically (tests, embedding); usable as a decorator."""
    _REGISTERED.register(cls)
    return cls


def unregister_connector(connector_id: str) -> None:
    _REGISTERED.unregister(connector_id)


def load_registry(selected: Iterable[EntryPoint] | None = None) -> ConnectorRegistry:
    """Every installed connector plus the programmatically registered ones, each plugin loaded
    and validated in isolation: the usable ones by id, the refused ones in ``broken()``."""
    registry = ConnectorRegistry()
    for connector_id in _REGISTERED:
        registry.register(_REGISTERED.get(connector_id), plugin=_REGISTERED.plugin(connector_id))
    registry.load_entry_points(selected)
    return registry


def load_connectors(
    selected: Iterable[EntryPoint] | None = None,
) -> dict[str, type[Connector]]:
    """The usable connectors by id (``load_registry().classes()``): broken plugins are left
    out, never raised; ask ``load_registry()`` for them."""
    return load_registry(selected).classes()


def format_broken_plugins(broken: Iterable[BrokenPlugin]) -> str:
    """The refused plugins, one per line, for ``tessera connector list`` (on stderr)."""
    return "\n".join(f"  {b.plugin}: {b.reason}" for b in broken)


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
    if m.sensitive_headers:
        lines.append(f"  secret headers:   {_join(m.sensitive_headers)}")
    if m.client_tls:
        lines.append("  client TLS:       presents tls_client_certificate on every https call")
    return "\n".join(lines)
