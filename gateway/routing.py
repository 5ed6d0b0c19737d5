"""Routing: which connectors may carry a payment, in order.

Rules come from configuration (``[[routing.rules]]``); the first rule whose every condition holds
gives an ordered list, later entries being fallbacks; ``routing.default`` applies when none does.
A merchant naming ``connector`` in the request gets exactly that connector. Candidates whose
manifest cannot carry the payment (method type, currency, country, an operation that starts a
payment of that method: ``CREATE_OPERATIONS``) are dropped before any call.

Failover is decided by the payments service, not here: the next candidate is tried **only** when
the previous attempt's outcome was ``not_sent`` (or its breaker was open / bulkhead full); a
payment whose attempt may have reached a provider (``unknown``) never goes to a second one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import RouteRule, RoutingSettings
from normalization.errors import NotSupportedError
from normalization.methods import PaymentMethodType
from sdk import Manifest, Operation

__all__ = ["CREATE_OPERATIONS", "RouteQuery", "Router", "create_operation"]

#: The operations that start a payment of each method type, preferred first: a card is
#: authorized; a bank account is authorized where the connector can, else debited (bank rails);
#: an open-banking payer gets a consent (then complete_authorization and submit).
CREATE_OPERATIONS: dict[PaymentMethodType, tuple[Operation, ...]] = {
    PaymentMethodType.CARD: (Operation.AUTHORIZE,),
    PaymentMethodType.BANK_ACCOUNT: (Operation.AUTHORIZE, Operation.DEBIT),
    PaymentMethodType.OPEN_BANKING: (Operation.CREATE_CONSENT,),
}


def create_operation(manifest: Manifest, method: PaymentMethodType) -> Operation | None:
    """The operation that starts a payment of ``method`` on this connector; None: none does."""
    return next((op for op in CREATE_OPERATIONS[method] if manifest.supports(op)), None)


@dataclass(frozen=True, slots=True)
class RouteQuery:
    merchant_id: str
    method: PaymentMethodType
    currency: str
    amount: int
    country: str | None = None
    brand: str | None = None
    bin: str | None = None
    connector: str | None = None


def _matches(rule: RouteRule, q: RouteQuery) -> bool:
    checks = (
        rule.payment_method is None or rule.payment_method == q.method.value,
        rule.currencies is None or q.currency in rule.currencies,
        rule.countries is None or (q.country is not None and q.country in rule.countries),
        rule.brands is None or (q.brand is not None and q.brand in rule.brands),
        rule.bin_prefixes is None
        or (q.bin is not None and any(q.bin.startswith(p) for p in rule.bin_prefixes)),
        rule.min_amount is None or q.amount >= rule.min_amount,
        rule.max_amount is None or q.amount <= rule.max_amount,
        rule.merchants is None or q.merchant_id in rule.merchants,
    )
    return all(checks)


def can_carry(manifest: Manifest, q: RouteQuery) -> bool:
    """Whether the manifest declares the payment's currency and country (its method and an
    operation that starts it are ``Router.start_operations``)."""
    if q.currency not in manifest.currencies:
        return False
    return not (manifest.countries and q.country and q.country not in manifest.countries)


class Router:
    def __init__(self, settings: RoutingSettings, manifests: dict[str, Manifest]) -> None:
        self._settings = settings
        self._manifests = manifests
        #: Per method type (keyed by its value), each connector that can carry it and the
        #: operation that starts it there: decided once, so a payment only looks it up.
        self.start_operations: Mapping[str, Mapping[str, Operation]] = {
            method.value: {
                connector_id: operation
                for connector_id, manifest in manifests.items()
                if method in manifest.payment_methods
                and (operation := create_operation(manifest, method)) is not None
            }
            for method in PaymentMethodType
        }

    def candidates(self, q: RouteQuery) -> list[str]:
        """Connector ids to try, in order; ``NotSupportedError`` when none can carry it."""
        if q.connector is not None:
            ordered = [q.connector]
            if q.connector not in self._manifests:
                # Not echoed: the field is the merchant's free text (a card number put there
                # by mistake must not come back in the error, or go to its log line).
                raise NotSupportedError("The connector named in the request is not available.")
        else:
            ordered = next(
                (rule.connectors for rule in self._settings.rules if _matches(rule, q)),
                self._settings.default or sorted(self._manifests),
            )
        starts = self.start_operations[q.method]
        usable = [
            c for c in dict.fromkeys(ordered) if c in starts and can_carry(self._manifests[c], q)
        ]
        if not usable:
            raise NotSupportedError(
                f"No connector can carry a {q.method.value} payment in {q.currency}"
                + (f" to {q.country}" if q.country else "")
                + "."
            )
        return usable
