"""The connectors this gateway forwards to: one ``ConnectorRuntime`` each, built at start-up.

Connectors are found through the SDK registry (the ``tessera.connectors`` entry points), never
imported by name; a broken plugin stops the gateway only when the configuration names it, and is
otherwise logged (``installed_connectors``). Each ``[connectors.<id>]`` section of the
configuration turns into runtime settings (base URL, environment, breaker, bulkhead, retries) and
credentials. Card data reaches a connector only through ``VaultRevealer``, the vault's
tokenization service seen through the SDK's ``TokenRevealer`` protocol: every reveal is audited
with its purpose, and the CVV held for a token is consumed by the first authorization.

One payment's authorization may try several connectors (failover after ``not_sent``). Inside
``reveal_scope()`` each token is revealed (decrypted, audited, its CVV consumed) at most once and
the card is handed to every later candidate: a first connector that revealed the card and then
failed to connect must not leave the backup without the CVV. The card lives only as long as the
scope; the CVV is still consumed by the vault, so no *later* payment can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import structlog

from gateway.config import ConfigError, ConnectorSettings
from normalization.errors import (
    ConnectorConfigurationError,
    ConnectorUnavailableError,
    NotSupportedError,
    TesseraError,
    VaultNotFoundError,
    VaultPermissionDeniedError,
)
from sdk import (
    BreakerSettings,
    BulkheadSettings,
    Connector,
    ConnectorMetrics,
    ConnectorRuntime,
    Credentials,
    HttpSettings,
    Manifest,
    RetrySettings,
    RevealedCard,
    RuntimeSettings,
    load_registry,
)
from sdk.manifest import Environment
from sdk.resilience.breaker import STATE_OPEN
from vault.client import VaultClient
from vault.token_store import TokenRecord
from vault.tokenization import TokenizationService

__all__ = [
    "ConnectorPool",
    "VaultRevealer",
    "credentials_path",
    "installed_connectors",
    "read_credentials",
    "reveal_scope",
]

_LOG = structlog.get_logger("tessera.gateway.connectors")


def credentials_path(connector_id: str) -> str:
    """Where a connector's credentials live in Vault KV v2 (under the KV mount, ``secret/``)."""
    return f"tessera/connectors/{connector_id}"


async def read_credentials(
    vault: VaultClient, connector_id: str, manifest: Manifest
) -> Credentials:
    """``connector_id``'s credentials from Vault KV, checked against its manifest.

    Raises ``ConnectorConfigurationError`` when Vault has none for the connector, refuses the
    gateway's token for that path, or they miss a required credential; the vault error family
    when Vault cannot be asked (unreachable, sealed).
    """
    path = credentials_path(connector_id)
    try:
        values = await vault.kv_read(path)
    except VaultNotFoundError:
        raise ConnectorConfigurationError(
            f"Connector {connector_id!r} takes its credentials from Vault, which has none at "
            f"KV {path} (tessera connector credentials set {connector_id} writes them)."
        ) from None
    except VaultPermissionDeniedError:
        raise ConnectorConfigurationError(
            f"Vault refused to read connector {connector_id!r}'s credentials at KV {path}: the "
            "gateway's role needs the tessera-reveal policy (tessera vault provision writes it)."
        ) from None
    credentials = Credentials(values)
    try:
        credentials.check_against(manifest)
    except ConnectorConfigurationError as exc:
        raise ConnectorConfigurationError(f"{exc} (read from Vault KV at {path})") from None
    return credentials


@dataclass(slots=True)
class _Scope:
    # (tenant, token, consumes the CVV) -> the card revealed in the current scope.
    cards: dict[tuple[str, str, bool], RevealedCard] = field(default_factory=dict)
    record: TokenRecord | None = None


_SCOPE: ContextVar[_Scope | None] = ContextVar("tessera_reveal_scope", default=None)


@contextmanager
def reveal_scope(record: TokenRecord | None = None) -> Iterator[None]:
    """Within: ``VaultRevealer`` reveals each token at most once and reuses the card after.

    Used around one payment's authorization (all its failover candidates). The scope belongs to
    the current task (a ``ContextVar``), so concurrent payments never share cards; on exit the
    cards are dropped. ``record``: the token record the payment already read (and found live),
    which the first reveal uses instead of reading it again.
    """
    scope = _Scope(record=record)
    reset = _SCOPE.set(scope)
    try:
        yield
    finally:
        _SCOPE.reset(reset)
        scope.cards.clear()
        scope.record = None


class VaultRevealer:
    """``sdk.TokenRevealer`` over the tokenization service (used only by egress)."""

    def __init__(self, tokens: TokenizationService) -> None:
        self._tokens = tokens

    async def reveal(self, tenant: str, token: str, *, purpose: str) -> RevealedCard:
        consume = purpose.endswith(":authorize")
        scope = _SCOPE.get()
        if scope is None:
            return await self._reveal(tenant, token, purpose=purpose, consume=consume, record=None)
        card = scope.cards.get((tenant, token, consume))
        if card is not None:
            # Revealed (and audited) for an earlier candidate of this same authorization.
            return card
        card = await self._reveal(
            tenant, token, purpose=purpose, consume=consume, record=scope.record
        )
        scope.cards[(tenant, token, consume)] = card
        return card

    async def _reveal(
        self, tenant: str, token: str, *, purpose: str, consume: bool, record: TokenRecord | None
    ) -> RevealedCard:
        card = await self._tokens.reveal(
            tenant,
            token,
            purpose=purpose,
            actor="gateway:egress",
            consume_cvc=consume,
            record=record,
        )
        return RevealedCard(
            number=card.number,
            cvc=card.cvc,
            exp_month=card.exp_month,
            exp_year=card.exp_year,
            holder_name=card.holder_name,
        )


def installed_connectors(
    configured: Iterable[str], *, warn: bool = True
) -> dict[str, type[Connector]]:
    """The class of each ``configured`` connector, from the SDK registry (every plugin loaded in
    isolation: a broken one fails only what needs it).

    Raises ``ConfigError`` (exit 2), one line per ``[connectors.<id>]`` section, when a configured
    connector is not installed or its plugin is broken, saying why. With ``warn``, logs one
    ``connector_plugin_broken`` warning per broken plugin the configuration does not use, which
    the gateway starts without.
    """
    registry = load_registry()
    wanted = list(dict.fromkeys(configured))
    classes: dict[str, type[Connector]] = {}
    problems: list[str] = []
    for connector_id in wanted:
        try:
            classes[connector_id] = registry.get(connector_id)
        except ConnectorConfigurationError as exc:
            problems.append(f"[connectors.{connector_id}]: {exc}")
    if problems:
        raise ConfigError("\n".join(problems))
    if warn:
        for broken in registry.broken():
            if broken.connector_id not in wanted:
                _LOG.warning(
                    "connector_plugin_broken",
                    connector=broken.connector_id,
                    plugin=broken.plugin,
                    reason=broken.reason,
                )
    return classes


def runtime_settings(config: ConnectorSettings) -> RuntimeSettings:
    return RuntimeSettings(
        environment=Environment(config.environment),
        base_url=config.base_url,
        test_mode=config.test_mode,
        breaker=BreakerSettings(
            fail_max=config.breaker_fail_max, reset_timeout=config.breaker_reset_seconds
        ),
        bulkhead=BulkheadSettings(
            max_concurrent=config.max_concurrent, max_queued=config.max_queued
        ),
        retry=RetrySettings(max_attempts=config.retry_attempts),
        http=HttpSettings(ca_bundle=config.ca_bundle),
    )


class ConnectorPool:
    """Runtimes by connector id, for the connectors that are both installed and configured."""

    def __init__(
        self, runtimes: Mapping[str, ConnectorRuntime], configs: Mapping[str, ConnectorSettings]
    ) -> None:
        self._runtimes = dict(runtimes)
        self._configs = dict(configs)

    @classmethod
    def build(
        cls,
        configs: Mapping[str, ConnectorSettings],
        *,
        revealer: VaultRevealer,
        metrics: ConnectorMetrics,
    ) -> ConnectorPool:
        installed = installed_connectors(configs)  # ConfigError: configured but broken/missing
        runtimes: dict[str, ConnectorRuntime] = {}
        for connector_id, config in configs.items():
            cls_ = installed[connector_id]
            credentials = Credentials(config.credentials)
            runtimes[connector_id] = ConnectorRuntime(
                cls_(),
                settings=runtime_settings(config),
                revealer=revealer,
                credentials=credentials,
                metrics=metrics,
            )
        return cls(runtimes, configs)

    def vault_sourced(self) -> list[str]:
        """The connectors whose credentials come from Vault KV (``credentials_from = "vault"``)."""
        return [c for c, config in self._configs.items() if config.credentials_from == "vault"]

    async def load_credentials(self, vault: VaultClient, connector_id: str) -> None:
        """Read ``connector_id``'s credentials from Vault KV and use them from the next call on.

        Calls already running keep the credentials they started with. Raises what
        ``read_credentials`` raises, changing nothing.
        """
        runtime = self.runtime(connector_id)
        runtime.credentials = await read_credentials(vault, connector_id, runtime.manifest)

    async def load_all_credentials(self, vault: VaultClient) -> None:
        """At start-up: every Vault-sourced connector's credentials, or the error that stops it
        (``tessera serve`` checks the same before it starts, in ``gateway.server.preflight``)."""
        for connector_id in self.vault_sourced():
            await self.load_credentials(vault, connector_id)

    async def refresh_credentials_forever(self, vault: VaultClient, stop: asyncio.Event) -> None:
        """Re-read Vault-sourced credentials, each at its ``credentials_refresh_seconds``.

        A failed read keeps the credentials in use (a rotation half-written, Vault briefly
        down) and logs ``connector_credentials_refresh_failed`` with the reason's code.
        """
        due = {c: self._configs[c].credentials_refresh_seconds for c in self.vault_sourced()}
        if not due:
            return
        loop = asyncio.get_running_loop()
        next_at = {c: loop.time() + seconds for c, seconds in due.items()}
        while not stop.is_set():
            wait = max(0.0, min(next_at.values()) - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                return
            now = loop.time()
            for connector_id, at in next_at.items():
                if at > now:
                    continue
                next_at[connector_id] = now + due[connector_id]
                try:
                    await self.load_credentials(vault, connector_id)
                except TesseraError as exc:
                    _LOG.warning(
                        "connector_credentials_refresh_failed",
                        connector=connector_id,
                        code=exc.code,
                        reason=str(exc),
                    )
                except Exception:  # noqa: BLE001 - a bug must not end rotation for good
                    _LOG.exception("connector_credentials_refresh_crashed", connector=connector_id)

    def __contains__(self, connector_id: object) -> bool:
        return connector_id in self._runtimes

    def ids(self) -> list[str]:
        return list(self._runtimes)

    def runtime(self, connector_id: str) -> ConnectorRuntime:
        try:
            return self._runtimes[connector_id]
        except KeyError:
            raise NotSupportedError(f"Connector {connector_id!r} is not configured.") from None

    def manifest(self, connector_id: str) -> Manifest:
        return self.runtime(connector_id).manifest

    def config(self, connector_id: str) -> ConnectorSettings:
        return self._configs[connector_id]

    def breaker_refusal(self, connector_id: str) -> ConnectorUnavailableError | None:
        """The refusal the connector's runtime would give right now, if its breaker is open.

        Read only (the breaker is not touched): a breaker open and not yet due for a trial call
        gives a ``ConnectorUnavailableError`` with its ``retry_after``; closed, half-open, or
        open past its reset timeout gives None (the runtime decides, as for any call).
        """
        breaker = self.runtime(connector_id).breaker
        if breaker.state != STATE_OPEN:
            return None
        wait = breaker.retry_after()
        if wait <= 0:
            return None
        return ConnectorUnavailableError(
            f"Connector {connector_id!r} is unavailable (circuit open).", retry_after=wait
        )

    def count_refusal(self, connector_id: str, operation: str) -> None:
        """Count a call refused for an open breaker without reaching the runtime, the way the
        runtime counts its own refusals (so the metrics say the same either way)."""
        metrics = self.runtime(connector_id).metrics
        metrics.rejections.labels(connector_id, "breaker_open").inc()
        metrics.calls.labels(connector_id, operation, "rejected").inc()

    async def close(self, *, drain_seconds: float = 10.0) -> None:
        """Let calls in flight finish (up to ``drain_seconds``), then close the pools."""
        for runtime in self._runtimes.values():
            await runtime.drain(drain_seconds)
            await runtime.aclose()
