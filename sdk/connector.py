"""The ``Connector`` base class: the contract a provider adapter implements.

A connector is a class with a capability ``manifest``, an ``error_map`` and async verbs. Each
verb takes a normalized request and a ``CallContext`` and returns a ``PaymentResult``::

    class AcmeConnector(Connector):
        manifest = MANIFEST            # sdk.Manifest
        error_map = ERROR_MAP          # sdk.ErrorMap

        async def authorize(self, request: AuthorizeRequest, ctx: CallContext) -> PaymentResult:
            card = ctx.card(request.payment_method)          # placeholders, never card data
            response = await ctx.send("POST", "/payments", json=build_payment(request, card))
            return parse_payment(response, ctx)               # declines are values

Verbs a connector does not declare are not implemented: the base raises ``NotSupportedError``.
``validate_connector_class`` (run by the registry at load time) insists that the verbs a
connector overrides and the operations its manifest declares match exactly, in both directions.
Connectors do not retry, time out, count failures or catch transport errors: the resilience
runtime does that around every verb.
"""

from __future__ import annotations

import inspect
from typing import ClassVar

from normalization import (
    AuthorizeRequest,
    CaptureRequest,
    ConnectorConfigurationError,
    ConsentRequest,
    DebitRequest,
    NotSupportedError,
    PaymentResult,
    PayoutRequest,
    RefundRequest,
    SyncRequest,
    VerifyRequest,
    VoidRequest,
)
from sdk.context import CallContext
from sdk.credentials import Credentials
from sdk.error_map import ErrorMap
from sdk.manifest import Manifest
from sdk.operations import VERB_NAMES, CompleteAuthorizationRequest, Operation, SubmitRequest
from sdk.webhooks import WebhookEvent, WebhookRequest

__all__ = ["Connector", "implemented_operations", "validate_connector_class"]

_SYNC_VERBS = frozenset({"verify_webhook", "parse_webhook"})


class Connector:
    """Base class of every connector. See the module docstring."""

    manifest: ClassVar[Manifest]
    error_map: ClassVar[ErrorMap] = ErrorMap({})

    def __repr__(self) -> str:
        manifest = getattr(type(self), "manifest", None)
        return f"<{type(self).__name__} {manifest.id if manifest else '?'}>"

    def _unsupported(self, operation: Operation) -> NotSupportedError:
        connector_id = type(self).manifest.id if hasattr(type(self), "manifest") else "?"
        return NotSupportedError(f"Connector {connector_id!r} does not support {operation.value}.")

    # -- cards ----------------------------------------------------------------------------------

    async def authorize(self, request: AuthorizeRequest, ctx: CallContext) -> PaymentResult:
        """Authorize (``request.capture`` false) or purchase (true)."""
        raise self._unsupported(Operation.AUTHORIZE)

    async def capture(self, request: CaptureRequest, ctx: CallContext) -> PaymentResult:
        raise self._unsupported(Operation.CAPTURE)

    async def void(self, request: VoidRequest, ctx: CallContext) -> PaymentResult:
        raise self._unsupported(Operation.VOID)

    async def refund(self, request: RefundRequest, ctx: CallContext) -> PaymentResult:
        raise self._unsupported(Operation.REFUND)

    async def sync(self, request: SyncRequest, ctx: CallContext) -> PaymentResult:
        """Ask the provider for the payment's current state (reconciliation after unknown)."""
        raise self._unsupported(Operation.SYNC)

    async def verify(self, request: VerifyRequest, ctx: CallContext) -> PaymentResult:
        """Zero-amount verification of a card or account."""
        raise self._unsupported(Operation.VERIFY)

    # -- bank rails -----------------------------------------------------------------------------

    async def credit(self, request: PayoutRequest, ctx: CallContext) -> PaymentResult:
        """Pay out to a bank account."""
        raise self._unsupported(Operation.CREDIT)

    async def debit(self, request: DebitRequest, ctx: CallContext) -> PaymentResult:
        """Pull from a bank account."""
        raise self._unsupported(Operation.DEBIT)

    # -- open banking ---------------------------------------------------------------------------

    async def create_consent(self, request: ConsentRequest, ctx: CallContext) -> PaymentResult:
        """Create a consent; the result is ``requires_action`` with the bank's redirect."""
        raise self._unsupported(Operation.CREATE_CONSENT)

    async def complete_authorization(
        self, request: CompleteAuthorizationRequest, ctx: CallContext
    ) -> PaymentResult:
        """The customer returned from the bank: check the callback and finish."""
        raise self._unsupported(Operation.COMPLETE_AUTHORIZATION)

    async def submit(self, request: SubmitRequest, ctx: CallContext) -> PaymentResult:
        """Submit an authorized consent as a payment."""
        raise self._unsupported(Operation.SUBMIT)

    # -- webhooks (no network: not run through the resilience runtime) ---------------------------

    def verify_webhook(self, request: WebhookRequest, credentials: Credentials) -> None:
        """Raise ``sdk.webhooks.WebhookVerificationError`` unless the webhook is authentic."""
        raise self._unsupported(Operation.WEBHOOKS)

    def parse_webhook(self, request: WebhookRequest) -> list[WebhookEvent]:
        """The normalized events of a verified webhook."""
        raise self._unsupported(Operation.WEBHOOKS)


def _overrides(cls: type[Connector], name: str) -> bool:
    return getattr(cls, name, None) is not getattr(Connector, name)


def implemented_operations(cls: type[Connector]) -> frozenset[Operation]:
    """Operations whose verbs ``cls`` overrides (all of them, for webhooks)."""
    return frozenset(
        op for op, verbs in VERB_NAMES.items() if all(_overrides(cls, v) for v in verbs)
    )


def validate_connector_class(cls: object, *, plugin: str) -> type[Connector]:
    """Check a connector class against its manifest; raise a clear error naming ``plugin``."""

    def fail(problem: str) -> ConnectorConfigurationError:
        return ConnectorConfigurationError(f"Connector plugin {plugin!r}: {problem}.")

    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        raise fail("does not name a subclass of sdk.Connector")
    manifest = getattr(cls, "manifest", None)
    if not isinstance(manifest, Manifest):
        raise fail(f"{cls.__name__}.manifest is not an sdk.Manifest")
    if not isinstance(cls.error_map, ErrorMap):
        raise fail(f"{cls.__name__}.error_map is not an sdk.ErrorMap")
    problems: list[str] = []
    for op, verbs in VERB_NAMES.items():
        overridden = [v for v in verbs if _overrides(cls, v)]
        declared = op in manifest.operations
        if declared and len(overridden) < len(verbs):
            missing = ", ".join(v for v in verbs if v not in overridden)
            problems.append(f"declares {op.value!r} but does not implement {missing}()")
        elif not declared and overridden:
            problems.append(
                f"implements {', '.join(overridden)}() but its manifest does not declare "
                f"{op.value!r}"
            )
        for verb in overridden:
            is_async = inspect.iscoroutinefunction(getattr(cls, verb))
            if verb in _SYNC_VERBS and is_async:
                problems.append(f"{verb}() must be a plain method, not async")
            elif verb not in _SYNC_VERBS and not is_async:
                problems.append(f"{verb}() must be async")
    if problems:
        raise fail("; ".join(problems))
    return cls
