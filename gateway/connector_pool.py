"""The connectors this gateway forwards to: one ``ConnectorRuntime`` each, built at start-up.

Connectors are found through the SDK registry (the ``tessera.connectors`` entry points), never
imported by name. Each ``[connectors.<id>]`` section of the configuration turns into runtime
settings (base URL, environment, breaker, bulkhead, retries) and credentials. Card data reaches a
connector only through ``VaultRevealer``, the vault's tokenization service seen through the SDK's
``TokenRevealer`` protocol: every reveal is audited with its purpose, and the CVV held for a
token is consumed by the first authorization.

One payment's authorization may try several connectors (failover after ``not_sent``). Inside
``reveal_scope()`` each token is revealed (decrypted, audited, its CVV consumed) at most once and
the card is handed to every later candidate: a first connector that revealed the card and then
failed to connect must not leave the backup without the CVV. The card lives only as long as the
scope; the CVV is still consumed by the vault, so no *later* payment can use it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from gateway.config import ConnectorSettings
from normalization.errors import ConnectorUnavailableError, NotSupportedError
from sdk import (
    BreakerSettings,
    BulkheadSettings,
    ConnectorMetrics,
    ConnectorRuntime,
    Credentials,
    Manifest,
    RetrySettings,
    RevealedCard,
    RuntimeSettings,
    load_connectors,
)
from sdk.manifest import Environment
from sdk.resilience.breaker import STATE_OPEN
from vault.token_store import TokenRecord
from vault.tokenization import TokenizationService

__all__ = ["ConnectorPool", "VaultRevealer", "reveal_scope"]


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
        installed = load_connectors()
        runtimes: dict[str, ConnectorRuntime] = {}
        for connector_id, config in configs.items():
            cls_ = installed.get(connector_id)
            if cls_ is None:
                raise NotSupportedError(
                    f"Connector {connector_id!r} is configured but not installed "
                    f"(installed: {', '.join(sorted(installed)) or 'none'})."
                )
            credentials = Credentials(config.credentials)
            runtimes[connector_id] = ConnectorRuntime(
                cls_(),
                settings=runtime_settings(config),
                revealer=revealer,
                credentials=credentials,
                metrics=metrics,
            )
        return cls(runtimes, configs)

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
