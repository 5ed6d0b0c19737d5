"""The operations a connector can perform, the verb that implements each, and the two request
types the open-banking flow needs beyond ``normalization.requests``.

``Operation`` is the vocabulary shared by the capability manifest (what a connector declares),
the ``Connector`` base class (which verb implements it), the resilience runtime (metrics labels,
retry safety) and the conformance kit (which scenarios apply).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from normalization import OperationRequest

__all__ = [
    "MONEY_MOVING_OPERATIONS",
    "VERB_NAMES",
    "CompleteAuthorizationRequest",
    "Operation",
    "SubmitRequest",
]


class Operation(StrEnum):
    """A capability a connector may declare. The value is the manifest spelling."""

    AUTHORIZE = "authorize"
    CAPTURE = "capture"
    VOID = "void"
    REFUND = "refund"
    SYNC = "sync"
    VERIFY = "verify"
    CREDIT = "credit"
    DEBIT = "debit"
    CREATE_CONSENT = "create_consent"
    COMPLETE_AUTHORIZATION = "complete_authorization"
    SUBMIT = "submit"
    WEBHOOKS = "webhooks"


#: The ``Connector`` methods that implement each operation. ``webhooks`` needs both.
VERB_NAMES: dict[Operation, tuple[str, ...]] = {
    Operation.AUTHORIZE: ("authorize",),
    Operation.CAPTURE: ("capture",),
    Operation.VOID: ("void",),
    Operation.REFUND: ("refund",),
    Operation.SYNC: ("sync",),
    Operation.VERIFY: ("verify",),
    Operation.CREDIT: ("credit",),
    Operation.DEBIT: ("debit",),
    Operation.CREATE_CONSENT: ("create_consent",),
    Operation.COMPLETE_AUTHORIZATION: ("complete_authorization",),
    Operation.SUBMIT: ("submit",),
    Operation.WEBHOOKS: ("verify_webhook", "parse_webhook"),
}

#: Operations that move money: declaring one of them safe to retry requires idempotency support,
#: or a retry after an ``unknown`` outcome could charge, pay out or refund twice.
MONEY_MOVING_OPERATIONS = frozenset(
    {
        Operation.AUTHORIZE,
        Operation.CAPTURE,
        Operation.REFUND,
        Operation.CREDIT,
        Operation.DEBIT,
        Operation.SUBMIT,
    }
)


class CompleteAuthorizationRequest(OperationRequest):
    """The customer came back from the bank (or 3-D Secure page): finish the authorization.

    ``callback_parameters`` are the query or form parameters the bank appended to the return URL
    (``code``, ``state``, ``id_token``, ...), passed through untouched for the connector to check.
    """

    payment_id: Annotated[str, Field(min_length=1, max_length=128)]
    provider_reference: Annotated[str | None, Field(max_length=200)] = None
    callback_parameters: Annotated[dict[str, str], Field(max_length=50)] = Field(
        default_factory=dict
    )


class SubmitRequest(OperationRequest):
    """Submit an authorized open-banking consent as a payment order."""

    payment_id: Annotated[str, Field(min_length=1, max_length=128)]
    provider_reference: Annotated[str | None, Field(max_length=200)] = None
    consent_reference: Annotated[str, Field(min_length=1, max_length=200)]
