"""Webhook scenarios, for every profile whose manifest declares webhooks.

The kit makes the provider emit webhooks about one payment (card: authorize, capture, then
refund; bank rail: a first call, then its settlement) and receives the simulator's real, signed
deliveries. It hands them to the connector's ``verify_webhook``/``parse_webhook`` as delivered
and with the faults of ``conformance.webhook_faults``:

- genuine deliveries verify and parse into events about that payment, with stable event ids;
- a tampered body or signature is rejected with ``WebhookVerificationError`` (not another error:
  the gateway answers 400 to that one, 500 to anything else);
- a delivery an hour late (or early) is rejected (replay window);
- the same delivery twice yields the same event ids, so deduplication applies it once;
- deliveries reversed parse to the same events: nothing depends on arrival order, and each
  event carries when it occurred so a consumer can order them.
"""

from __future__ import annotations

from typing import Any

from conformance.harness import ExpectationFailed, ScenarioContext
from conformance.scenarios.flows import first_call, half
from conformance.scenarios.model import Requirement, scenario
from conformance.webhook_faults import delay, tamper_body, tamper_signature
from normalization import Outcome
from sdk import (
    Category,
    InMemoryEventStore,
    Operation,
    WebhookDeduplicator,
    WebhookEvent,
    WebhookRequest,
    WebhookVerificationError,
)

ALL = tuple(Category)
WEBHOOKS = Requirement(operations=frozenset({Operation.WEBHOOKS}), simulator=True)


async def _produce(ctx: ScenarioContext, events: int) -> tuple[str, list[WebhookRequest]]:
    """Make the provider send ``events`` (1 or 2) webhooks about one payment."""
    profile = ctx.instance.scenario.profile
    if profile is Category.CARD_ACQUIRER and ctx.declares(Operation.AUTHORIZE, Operation.CAPTURE):
        authorized = await ctx.call(
            "setup", Operation.AUTHORIZE, ctx.authorize_request(), check=False
        )
        reference = authorized.provider_reference
        if reference is None:
            raise ExpectationFailed("setup: the authorization has no provider reference")
        amount = authorized.request.amount
        await ctx.call(
            "setup_capture", Operation.CAPTURE, ctx.capture_request(authorized), check=False
        )
        if events > 1:
            if not ctx.declares(Operation.REFUND):
                ctx.skip("two webhooks about one payment need capture and refund")
            part = half(amount)
            await ctx.call(
                "setup_refund", Operation.REFUND, ctx.refund_request(authorized, part), check=False
            )
        return reference, await ctx.webhooks(events, about=reference)
    if profile is not Category.CARD_ACQUIRER:
        if events > 1:
            ctx.skip("the kit makes two webhooks about one payment only for card acquirers")
        operation, request = first_call(ctx)
        first = await ctx.call("setup", operation, request, check=False)
        reference = first.provider_reference
        if (
            reference is None
            or first.result is None
            or first.result.outcome is not Outcome.SUCCEEDED
        ):
            raise ExpectationFailed("setup: the first call did not succeed")
        if ctx.declares(Operation.SYNC):
            await ctx.settle("setup_settle", first)
        return reference, await ctx.webhooks(events, about=reference)
    return ctx.skip("the kit makes card webhooks happen with authorize and capture")


def _verify(ctx: ScenarioContext, delivery: WebhookRequest) -> str:
    """``accepted``, ``rejected`` (WebhookVerificationError) or the other error's type."""
    connector = ctx.runtime.connector
    try:
        connector.verify_webhook(delivery, ctx.env.credentials)
    except WebhookVerificationError as exc:
        ctx.record_texts([str(exc)])
        return "rejected"
    except Exception as exc:  # noqa: BLE001 - any other error is the finding
        ctx.record_texts([f"{type(exc).__name__}: {exc}"])
        return type(exc).__name__
    return "accepted"


def _parse(ctx: ScenarioContext, delivery: WebhookRequest) -> list[WebhookEvent]:
    events = ctx.runtime.connector.parse_webhook(delivery)
    ctx.record_texts(repr(event) for event in events)
    return events


@scenario(
    "webhooks.verified",
    ALL,
    "Genuine webhooks verify and parse",
    requires=WEBHOOKS,
    covers=("operation:webhooks",),
    expect={
        "deliveries": {
            "verified": "accepted",
            "events": {"@gte": 1},
            "event_ids_present": True,
            "about_the_payment": True,
            "results_present": True,
        }
    },
    baseline="each delivery verifies and parses to events about the payment, with ids",
)
async def verified(ctx: ScenarioContext) -> None:
    reference, deliveries = await _produce(ctx, 1)
    verdicts = {_verify(ctx, delivery) for delivery in deliveries}
    events = [event for delivery in deliveries for event in _parse(ctx, delivery)]
    facts: dict[str, Any] = {
        "verified": verdicts.pop() if len(verdicts) == 1 else sorted(verdicts),
        "events": len(events),
        "event_ids_present": all(event.event_id for event in events),
        "about_the_payment": all(event.provider_reference == reference for event in events),
        "results_present": all(event.result is not None for event in events),
    }
    ctx.check("deliveries", facts)


@scenario(
    "webhooks.bad_signature",
    ALL,
    "Tampered webhooks are rejected",
    requires=WEBHOOKS,
    expect={"tampered": {"genuine": "accepted", "body": "rejected", "signature": "rejected"}},
    baseline="a changed body or signature raises WebhookVerificationError",
)
async def bad_signature(ctx: ScenarioContext) -> None:
    _, deliveries = await _produce(ctx, 1)
    delivery = deliveries[0]
    facts = {
        "genuine": _verify(ctx, delivery),
        "body": _verify(ctx, tamper_body(delivery)),
        "signature": _verify(ctx, tamper_signature(delivery)),
    }
    ctx.check("tampered", facts)


@scenario(
    "webhooks.stale_timestamp",
    ALL,
    "Webhooks outside the replay window are rejected",
    requires=WEBHOOKS,
    expect={"stale": {"an_hour_late": "rejected", "an_hour_early": "rejected"}},
    baseline="a delivery an hour late or early raises WebhookVerificationError",
)
async def stale_timestamp(ctx: ScenarioContext) -> None:
    _, deliveries = await _produce(ctx, 1)
    delivery = deliveries[0]
    facts = {
        "an_hour_late": _verify(ctx, delay(delivery, 3600)),
        "an_hour_early": _verify(ctx, delay(delivery, -3600)),
    }
    ctx.check("stale", facts)


@scenario(
    "webhooks.duplicate",
    ALL,
    "A webhook delivered twice is applied once",
    requires=WEBHOOKS,
    expect={"duplicate": {"both_verified": True, "event_ids_stable": True, "applied": 1}},
    baseline="the same event ids both times; deduplication by id applies it once",
)
async def duplicate(ctx: ScenarioContext) -> None:
    _, deliveries = await _produce(ctx, 1)
    delivery = deliveries[0]
    first, second = _parse(ctx, delivery), _parse(ctx, delivery)
    deduplicator = WebhookDeduplicator(InMemoryEventStore())
    connector_id = ctx.manifest.id
    applied = 0
    for event in [*first, *second]:
        if await deduplicator.claim(connector_id, event.event_id):
            applied += 1
    facts = {
        "both_verified": _verify(ctx, delivery) == "accepted" == _verify(ctx, delivery),
        "event_ids_stable": [e.event_id for e in first] == [e.event_id for e in second],
        "applied": applied if first else 0,
    }
    ctx.check("duplicate", facts)


@scenario(
    "webhooks.out_of_order",
    ALL,
    "Webhooks delivered out of order parse to the same events",
    requires=WEBHOOKS,
    expect={"reordered": {"verified": True, "same_events": True, "occurred_at_present": True}},
    baseline="parsing does not depend on arrival order; events say when they occurred",
)
async def out_of_order(ctx: ScenarioContext) -> None:
    _, deliveries = await _produce(ctx, 2)
    in_order = [_parse(ctx, d) for d in deliveries]
    reversed_order = [_parse(ctx, d) for d in reversed(deliveries)][::-1]

    def summary(batches: list[list[WebhookEvent]]) -> list[tuple[str, str, str | None]]:
        return [
            (e.event_id, e.event_type, e.result.status.value if e.result else None)
            for batch in batches
            for e in batch
        ]

    facts = {
        "verified": all(_verify(ctx, d) == "accepted" for d in reversed(deliveries)),
        "same_events": summary(in_order) == summary(reversed_order),
        "occurred_at_present": all(e.occurred_at is not None for b in in_order for e in b),
    }
    ctx.check("reordered", facts)
