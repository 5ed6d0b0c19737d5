"""Words for what a bare fact would hide, for the scenario context (``conformance.harness``).

- The exception a connector's verb raised: the runtime turns one raised after the request went
  out into outcome ``unknown`` and keeps nothing else, so ``watch_verbs`` wraps the verbs to keep
  it (``ConnectorCrash``) and raise it on unchanged.
- Which idempotency key went out when it was not the request's (``idempotency_problem``): a bare
  ``false`` reads as "no key was sent".

Imports the SDK and the kit's results; nothing of the runner.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from conformance.results import AssertionOutcome
from sdk import (
    Connector,
    Manifest,
    Operation,
    ProviderServerError,
    ProviderThrottledError,
    RetryableProviderError,
    TransportFault,
)
from sdk.operations import VERB_NAMES

__all__ = ["ConnectorCrash", "explained", "idempotency_problem", "shorten", "watch_verbs"]

#: What a verb raises to report a provider or transport failure: the runtime maps these to
#: outcomes on purpose (not_sent, unknown, a retry), so they are not a connector's crash.
_MAPPED_FAILURES = (
    TransportFault,
    ProviderServerError,
    ProviderThrottledError,
    RetryableProviderError,
)
#: How much of an exception's message a failure reason quotes (the traceback has all of it).
_MAX_SUMMARY = 300
#: Facts whose bare value hides what went wrong, and the fact that says it in words.
_EXPLANATIONS = {"idempotency_key_sent": "idempotency_key_detail"}


@dataclass(frozen=True, slots=True)
class ConnectorCrash:
    """An exception one of the connector's verbs raised, as written (never shown as is: the
    runner scans it for canaries and shows it through ``ScenarioContext.safe_text``)."""

    operation: str
    exception: BaseException
    #: ``KeyError: 'id'``: the type and message, as the last line of a traceback says it.
    summary: str
    traceback: str

    @classmethod
    def of(cls, operation: Operation, exc: BaseException) -> ConnectorCrash:
        summary = traceback.format_exception_only(exc)[-1].strip()
        return cls(operation.value, exc, summary, "".join(traceback.format_exception(exc)))


def watch_verbs(
    connector: Connector, manifest: Manifest, keep: Callable[[Operation, Exception], None]
) -> Connector:
    """``connector`` with each declared async verb wrapped to hand what it raises to ``keep``
    (and raise it on unchanged: the runtime handles it exactly as in the gateway)."""
    for operation in manifest.operations:
        for name in VERB_NAMES[operation]:
            verb = getattr(connector, name, None)
            if verb is not None and inspect.iscoroutinefunction(verb):
                setattr(connector, name, _keeping(operation, verb, keep))
    return connector


def _keeping(
    operation: Operation,
    verb: Callable[..., Awaitable[Any]],
    keep: Callable[[Operation, Exception], None],
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(verb)
    async def watched(*args: Any, **kwargs: Any) -> Any:
        try:
            return await verb(*args, **kwargs)
        except _MAPPED_FAILURES:
            raise
        except Exception as exc:
            keep(operation, exc)
            raise

    return watched


def idempotency_problem(manifest: Manifest, keys: list[str | None], expected: str | None) -> str:
    """Why ``idempotency_key_sent`` is false, in words: a bare ``false`` reads as "no key was
    sent", when the usual mistake is a connector sending a key of its own (a fresh UUID per
    attempt), which makes the provider treat a retry as a new payment."""
    idempotency = manifest.idempotency
    where = "the idempotency key"
    fix = "send the request's idempotency_key (ctx.idempotency_key)"
    if idempotency is not None and idempotency.header:
        where = f"the {idempotency.header} header"
        fix = (
            f"do not set {idempotency.header} yourself: ctx.send adds it with the request's "
            "idempotency_key (ctx.idempotency_key)"
        )
    elif idempotency is not None and idempotency.body_field:
        where = f"the body field {idempotency.body_field}"
        fix = f"put ctx.idempotency_key (the request's idempotency_key) in {where}"
    if not keys:
        return "no request reached the provider, so no key was sent"
    if expected is None:
        return f"the request had no idempotency key, but {where} carried one"
    missing = sum(1 for key in keys if not key)
    if missing:
        return f"{missing} of {len(keys)} request(s) carried no key in {where}: {fix}"
    own = sorted({key for key in keys if key != expected}, key=str)
    return (
        f"the connector sent its own key in {where} ({', '.join(repr(k) for k in own)}), "
        f"not the request's ({expected!r}), so a retry would not be recognised by the "
        f"provider: {fix}"
    )


def explained(outcome: AssertionOutcome, facts: dict[str, Any]) -> AssertionOutcome:
    """A failed assertion whose ``actual`` also says why, where the bare value would mislead
    (``false`` for a key that was sent, but was not the request's). The reports show it too."""
    detail = facts.get(_EXPLANATIONS.get(outcome.path, ""))
    if not detail or outcome.passed:
        return outcome
    return dataclasses.replace(outcome, actual=f"{outcome.actual} ({detail})")


def shorten(text: str) -> str:
    return text if len(text) <= _MAX_SUMMARY else text[: _MAX_SUMMARY - 3] + "..."
