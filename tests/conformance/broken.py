"""Deliberately broken connectors: the sandbox connector with one defect each.

Each copies the sandbox manifest under its own id and talks to the sandbox simulator, so the only
difference from a passing run is the defect. The test that uses each names the scenario that
must catch it.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict, CIMultiDictProxy

from connectors.sandbox import MANIFEST, SandboxConnector
from connectors.sandbox.server import create_app
from normalization import (
    AuthorizeRequest,
    CardMethod,
    Money,
    NotSupportedError,
    PaymentResult,
    PaymentStatus,
    SyncRequest,
    VoidRequest,
)
from sdk import CallContext, Manifest, Operation, OutcomeUnknownError


def broken_manifest(connector_id: str, **update: Any) -> Manifest:
    return MANIFEST.model_copy(
        update={"id": connector_id, "display_name": f"Broken sandbox ({connector_id})", **update}
    )


class WrongStatusConnector(SandboxConnector):
    """Maps the provider's ``authorized`` to ``captured``."""

    manifest = broken_manifest("broken_status")

    async def authorize(self, request: AuthorizeRequest, ctx: CallContext) -> PaymentResult:
        result = await super().authorize(request, ctx)
        if result.status is PaymentStatus.AUTHORIZED:
            return result.model_copy(update={"status": PaymentStatus.CAPTURED})
        return result


class PanInLogConnector(SandboxConnector):
    """Logs the card number of inline card data."""

    manifest = broken_manifest("broken_log")

    async def authorize(self, request: AuthorizeRequest, ctx: CallContext) -> PaymentResult:
        method = request.payment_method
        if isinstance(method, CardMethod) and method.card is not None:
            ctx.logger.info("authorizing_card", number=method.card.number.reveal())
        return await super().authorize(request, ctx)


class PanInStdlibLogConnector(SandboxConnector):
    """Logs the card number through the standard library's ``logging`` at INFO (below the root
    logger's default level, WARNING)."""

    manifest = broken_manifest("broken_stdlog")

    async def authorize(self, request: AuthorizeRequest, ctx: CallContext) -> PaymentResult:
        method = request.payment_method
        if isinstance(method, CardMethod) and method.card is not None:
            logging.getLogger("tessera_broken").info("card %s", method.card.number.reveal())
        return await super().authorize(request, ctx)


class PanPrintedConnector(SandboxConnector):
    """Prints the card number (debugging output left in)."""

    manifest = broken_manifest("broken_print")

    async def authorize(self, request: AuthorizeRequest, ctx: CallContext) -> PaymentResult:
        method = request.payment_method
        if isinstance(method, CardMethod) and method.card is not None:
            print("authorizing", method.card.number.reveal())  # noqa: T201 - the defect
        return await super().authorize(request, ctx)


class RetriesAfterResetConnector(SandboxConnector):
    """Does not declare authorize safe to retry, then re-sends it itself after a reset."""

    manifest = broken_manifest(
        "broken_retry", retry_safe=MANIFEST.retry_safe - {Operation.AUTHORIZE}
    )

    async def authorize(self, request: AuthorizeRequest, ctx: CallContext) -> PaymentResult:
        try:
            return await super().authorize(request, ctx)
        except OutcomeUnknownError:
            return await super().authorize(request, ctx)


class FloatAmountConnector(SandboxConnector):
    """Converts amounts through a binary float: 10.29 EUR goes out as 1028 cents."""

    manifest = broken_manifest("broken_float")

    async def authorize(self, request: AuthorizeRequest, ctx: CallContext) -> PaymentResult:
        amount = request.amount
        major = float(amount.to_major_string())
        minor = int(major * 10**amount.exponent)
        floated = request.model_copy(update={"amount": Money(minor, amount.currency)})
        return await super().authorize(floated, ctx)


class NoVoidConnector(SandboxConnector):
    """Declares void (the sandbox manifest does) but its verb does not work."""

    manifest = broken_manifest("broken_void")

    async def void(self, request: VoidRequest, ctx: CallContext) -> PaymentResult:
        raise NotSupportedError("Void is not implemented yet.")


class SyncByReferenceConnector(SandboxConnector):
    """Looks a payment up by its reference at the provider-id path: after an ``unknown``
    authorize the sync finds nothing, and the payment the provider holds reads as lost. Every
    call is retry-safe (as the sandbox's are), so only a run that proves the sync by reference
    with retries used up sees it."""

    manifest = broken_manifest("broken_sync_ref")

    async def sync(self, request: SyncRequest, ctx: CallContext) -> PaymentResult:
        if request.provider_reference is None and request.reference is not None:
            request = request.model_copy(update={"provider_reference": request.reference})
        return await super().sync(request, ctx)


class ForgetfulProviderConnector(SandboxConnector):
    """Declares every call safe to retry and sends the key, but its provider (``forgetful_
    simulator``) ignores idempotency keys: a retry after the provider acted makes a second
    authorization."""

    manifest = broken_manifest("broken_dedup")


@functools.wraps(create_app)  # its signature: the kit passes only the options it accepts
def forgetful_simulator(**options: Any) -> web.Application:
    """The sandbox simulator with its idempotency keys ignored (dropped before it sees them)."""

    @web.middleware
    async def forget_keys(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "idempotency-key"}
        return await handler(request.clone(headers=CIMultiDictProxy(CIMultiDict(headers))))

    app = create_app(**options)
    app.middlewares.append(forget_keys)
    return app


BROKEN = (
    WrongStatusConnector,
    PanInLogConnector,
    RetriesAfterResetConnector,
    FloatAmountConnector,
    NoVoidConnector,
    SyncByReferenceConnector,
    ForgetfulProviderConnector,
)
