"""The built-in ``sandbox`` connector: a card acquirer whose provider is Tessera's own simulator.

Anatomy (Active Merchant / hyperswitch): the capability manifest first, then the public verbs,
then webhooks, then scrubbing, then the one private ``_send``. Wire models, builders, parsers and
the status and decline maps are in ``transformers.py``; the provider itself is ``server.py``.

The manifest's sandbox URL (``https://sandbox.tessera.invalid``) never resolves: the simulator
runs on a dynamic loopback port, so every runtime overrides it::

    runtime = ConnectorRuntime(
        SandboxConnector(),
        settings=RuntimeSettings(base_url="http://127.0.0.1:PORT", test_mode=True),
        revealer=revealer,
        credentials=Credentials({"api_key": "...", "webhook_secret": "..."}),
    )

Retry safety is declared for every operation, honestly only because the sandbox deduplicates on
the ``Idempotency-Key`` header (24 h): a retried authorize, capture, void or refund that carries
the same key gets the stored reply and moves no money twice. A call that has no key has nothing
to make a retry safe, so these verbs refuse to send again on a second attempt without one (see
``_blind_retry``).

Imports ``sdk`` and ``normalization`` only.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
from pydantic import BaseModel

from connectors.sandbox.transformers import (
    ERROR_MAP,
    EVENT_TYPES,
    WEBHOOK_SCHEME,
    SandboxCredentials,
    build_authorization,
    build_capture,
    build_refund,
    build_verification,
    card_method_of,
    occurred_at,
    parse_authorization_list,
    parse_authorization_reply,
    parse_event,
    parse_verification_reply,
    webhook_secrets,
)
from normalization import (
    AuthorizeRequest,
    CaptureRequest,
    ConnectorConfigurationError,
    InvalidRequestError,
    PaymentMethodType,
    PaymentResult,
    RefundRequest,
    SyncRequest,
    VerifyRequest,
    VoidRequest,
)
from sdk import (
    BaseUrls,
    CallContext,
    Category,
    CompleteAuthorizationRequest,
    Connector,
    CredentialField,
    Credentials,
    IdempotencySupport,
    Manifest,
    MultiSupport,
    Operation,
    WebhookEvent,
    WebhookRequest,
)

__all__ = ["MANIFEST", "SANDBOX_BASE_URL", "SandboxConnector"]

#: Reserved by RFC 2606: a runtime that forgets to point at its simulator fails as not_sent.
SANDBOX_BASE_URL = "https://sandbox.tessera.invalid"

_ALL_CALLS = frozenset(
    {
        Operation.AUTHORIZE,
        Operation.CAPTURE,
        Operation.VOID,
        Operation.REFUND,
        Operation.SYNC,
        Operation.VERIFY,
        Operation.COMPLETE_AUTHORIZATION,
    }
)

MANIFEST = Manifest(
    id="sandbox",
    display_name="Tessera Sandbox",
    category=Category.CARD_ACQUIRER,
    operations=_ALL_CALLS | {Operation.WEBHOOKS},
    capture=MultiSupport(partial=True, multiple=True),
    refund=MultiSupport(partial=True, multiple=True),
    payment_methods=frozenset({PaymentMethodType.CARD}),
    currencies=frozenset({"EUR", "USD", "GBP", "CHF", "JPY", "KWD", "BHD", "CLF"}),
    idempotency=IdempotencySupport(header="Idempotency-Key", retention_seconds=86400),
    webhook_events=EVENT_TYPES,
    # Every call: the money-moving ones only because the sandbox honours the idempotency key,
    # sync/complete because they read, verify because it moves nothing.
    retry_safe=_ALL_CALLS,
    base_urls=BaseUrls(sandbox=SANDBOX_BASE_URL),
    credentials=(
        CredentialField(name="api_key", description="Sandbox API key (Bearer)."),
        CredentialField(
            name="webhook_secret",
            description="Secret the sandbox signs webhooks with.",
            required=False,
        ),
        CredentialField(
            name="webhook_secret_previous",
            description="The previous webhook secret, while a rotation is under way.",
            required=False,
        ),
    ),
)


class SandboxConnector(Connector):
    """The sandbox card acquirer. See the module docstring."""

    manifest = MANIFEST
    error_map = ERROR_MAP

    # -- verbs ------------------------------------------------------------------------------------

    async def authorize(self, request: AuthorizeRequest, ctx: CallContext) -> PaymentResult:
        """Authorize, or purchase when ``request.capture`` is true."""
        method = card_method_of(request.payment_method)
        if self._blind_retry(ctx):
            return PaymentResult.not_sent()

        body = build_authorization(
            amount=request.amount,
            capture=request.capture,
            card=ctx.card(method),
            manifest=MANIFEST,
            reference=request.reference,
            description=request.description,
            return_url=request.return_url,
            metadata=dict(request.metadata),
        )
        response = await self._send(ctx, "POST", "/v1/authorizations", body)
        return parse_authorization_reply(response, MANIFEST, ctx.decline)

    async def capture(self, request: CaptureRequest, ctx: CallContext) -> PaymentResult:
        """Capture ``request.amount``; ``final`` releases what is left of the authorization."""
        body = build_capture(request.amount, final=request.final, manifest=MANIFEST)
        path = f"{self._authorization_path(request.provider_reference)}/captures"
        if self._blind_retry(ctx):
            return PaymentResult.not_sent()
        response = await self._send(ctx, "POST", path, body)
        return parse_authorization_reply(response, MANIFEST, ctx.decline, "capture")

    async def void(self, request: VoidRequest, ctx: CallContext) -> PaymentResult:
        path = f"{self._authorization_path(request.provider_reference)}/voids"
        if self._blind_retry(ctx):
            return PaymentResult.not_sent()
        response = await self._send(ctx, "POST", path)
        return parse_authorization_reply(response, MANIFEST, ctx.decline)

    async def refund(self, request: RefundRequest, ctx: CallContext) -> PaymentResult:
        body = build_refund(request.amount, reason=request.reason, manifest=MANIFEST)
        path = f"{self._authorization_path(request.provider_reference)}/refunds"
        if self._blind_retry(ctx):
            return PaymentResult.not_sent()
        response = await self._send(ctx, "POST", path, body)
        return parse_authorization_reply(response, MANIFEST, ctx.decline, "refund")

    async def sync(self, request: SyncRequest, ctx: CallContext) -> PaymentResult:
        """The authorization's current state: by provider reference, or, after an ``unknown``
        authorize that returned none, the newest authorization sent with ``reference``."""
        if request.provider_reference is not None:
            path = self._authorization_path(request.provider_reference)
            return parse_authorization_reply(
                await self._send(ctx, "GET", path), MANIFEST, ctx.decline
            )
        if request.reference is None:
            raise InvalidRequestError(
                "A sandbox sync needs the provider reference or the authorization's reference."
            )
        response = await self._send(
            ctx, "GET", "/v1/authorizations", params={"reference": request.reference}
        )
        return parse_authorization_list(response, MANIFEST, ctx.decline)

    async def verify(self, request: VerifyRequest, ctx: CallContext) -> PaymentResult:
        """Zero-amount check of a card."""
        method = card_method_of(request.payment_method)

        body = build_verification(request.currency, ctx.card(method), manifest=MANIFEST)
        response = await self._send(ctx, "POST", "/v1/verifications", body)
        return parse_verification_reply(response, MANIFEST, ctx.decline)

    async def complete_authorization(
        self, request: CompleteAuthorizationRequest, ctx: CallContext
    ) -> PaymentResult:
        """The customer is back from the 3-D Secure page: read where the authorization stands
        (``authorized``/``captured``, ``declined``, or still ``requires_action``)."""
        reference = request.provider_reference or request.callback_parameters.get("authorization")
        path = self._authorization_path(reference)
        return parse_authorization_reply(await self._send(ctx, "GET", path), MANIFEST, ctx.decline)

    # -- webhooks ---------------------------------------------------------------------------------

    def verify_webhook(self, request: WebhookRequest, credentials: Credentials) -> None:
        """Timestamped HMAC (``Sandbox-Signature``), five-minute replay window, the current or
        previous secret. Event-id deduplication is the caller's, on ``parse_webhook``'s event ids
        (``sdk.WebhookDeduplicator``): the gateway releases a claim whose processing failed so the
        redelivery is processed, which a second, connector-side memory would refuse."""
        secrets = webhook_secrets(credentials)
        if not secrets:
            raise ConnectorConfigurationError("The sandbox webhook_secret is not configured.")
        WEBHOOK_SCHEME.verify(request, secrets)

    def parse_webhook(self, request: WebhookRequest) -> list[WebhookEvent]:
        event, result = parse_event(request.body, MANIFEST)
        return [
            WebhookEvent(
                event_id=event.id,
                event_type=event.type,
                provider_reference=event.data.id,
                result=result,
                occurred_at=occurred_at(event),
            )
        ]

    # -- scrubbing --------------------------------------------------------------------------------
    # Nothing connector-specific: card data leaves as placeholders and is masked by the SDK's
    # egress transport; the API key travels only in ``Authorization`` (scrubbed by name) and is a
    # credential (scrubbed by value). tests/connectors/sandbox/test_scrubbing.py proves it.

    # -- plumbing ---------------------------------------------------------------------------------

    @staticmethod
    def _blind_retry(ctx: CallContext) -> bool:
        """A repeated attempt of a money-moving call without an idempotency key: the previous
        attempt may have acted and nothing would stop the sandbox acting again. Nothing is sent;
        the runtime turns this ``not_sent`` into ``unknown`` when an earlier attempt may have
        reached the provider, and keeps it ``not_sent`` when none did."""
        if ctx.attempt > 1 and not ctx.idempotency_key:
            ctx.logger.warning("sandbox_retry_without_idempotency_key_refused")
            return True
        return False

    @staticmethod
    def _authorization_path(provider_reference: str | None) -> str:
        if not provider_reference:
            raise InvalidRequestError("This sandbox operation needs the provider reference.")
        return f"/v1/authorizations/{quote(provider_reference, safe='')}"

    async def _send(
        self,
        ctx: CallContext,
        method: str,
        path: str,
        body: BaseModel | None = None,
        *,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """The one way this connector talks to the sandbox."""
        credentials = SandboxCredentials.of(ctx.credentials)
        headers = {
            "Authorization": f"Bearer {credentials.api_key.get_secret_value()}",
            "Accept": "application/json",
        }
        payload = body.model_dump(mode="json", exclude_none=True) if body is not None else {}
        if method == "GET":
            return await ctx.send(method, path, headers=headers, params=params)
        return await ctx.send(method, path, json=payload, headers=headers, params=params)
