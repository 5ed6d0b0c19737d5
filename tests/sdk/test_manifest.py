"""The capability manifest: what it refuses, and what it answers."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from normalization import (
    AuthorizeRequest,
    BankAccountMethod,
    CardMethod,
    Money,
    NotSupportedError,
    PaymentMethodType,
    PayoutRequest,
)
from sdk import Environment, IdempotencySupport, Manifest, Operation
from tests.sdk.demo_connector import MANIFEST


def manifest(**changes: Any) -> Manifest:
    data = MANIFEST.model_dump()
    data.update(changes)
    return Manifest.model_validate(data)


def test_reference_manifest_is_valid_and_answers_queries() -> None:
    assert MANIFEST.is_retry_safe("capture") and not MANIFEST.is_retry_safe("authorize")
    assert MANIFEST.allowed_hosts(Environment.SANDBOX) == {"sandbox.demo-acquirer.example"}
    assert manifest(currency_exponents={"JPY": 2}).exponent_for("JPY") == 2
    with pytest.raises(ValueError, match="no live base URL"):
        MANIFEST.base_url(Environment.LIVE)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"operations": {"authorize"}}, "partial/multiple capture"),
        ({"retry_safe": {"authorize"}, "idempotency": None}, "could move money twice"),
        ({"retry_safe": {"credit"}}, "undeclared operations"),
        ({"webhook_events": {"payment.succeeded"}}, "webhooks operation"),
        ({"currencies": {"EUR", "XYZ"}}, "unknown ISO 4217"),
        ({"currency_exponents": {"GBP": 2}}, "undeclared currencies"),
        ({"base_urls": {"sandbox": "http://sandbox.example"}}, "https"),
        ({"base_urls": {"sandbox": "https://10.0.0.1"}}, "IP literals"),
        ({"base_urls": {"sandbox": "https://u:p@x.example"}}, "no credentials"),
        ({"id": "Demo Connector"}, "id"),
        ({"extra_hosts": {"127.0.0.1"}}, "not a DNS name"),
        ({"refund": {"partial": False, "multiple": True}}, "imply partial"),
        ({"credentials": [{"name": "k"}, {"name": "k"}]}, "unique"),
        ({"payment_methods": set()}, "at least one payment method"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_invalid_manifests_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        manifest(**changes)


def test_check_supported_refuses_before_any_network_call() -> None:
    card = CardMethod(token="tok_" + "a" * 20)
    MANIFEST.check_supported(
        Operation.AUTHORIZE, AuthorizeRequest(amount=Money(1, "EUR"), payment_method=card)
    )
    with pytest.raises(NotSupportedError, match="GBP"):
        MANIFEST.check_supported(
            Operation.AUTHORIZE, AuthorizeRequest(amount=Money(1, "GBP"), payment_method=card)
        )
    with pytest.raises(NotSupportedError, match="credit"):
        MANIFEST.check_supported(Operation.CREDIT, object())
    payout = PayoutRequest(
        amount=Money(1, "EUR"),
        destination=BankAccountMethod(holder_name="A", iban="DE89370400440532013000"),
    )
    bank = manifest(
        operations={"credit"},
        capture={},
        refund={},
        retry_safe=set(),
        payment_methods={PaymentMethodType.CARD},
    )
    with pytest.raises(NotSupportedError, match="bank_account"):
        bank.check_supported(Operation.CREDIT, payout)


@pytest.mark.parametrize("header", ["Idem Key: x", "Idempotency-Key\r\nX-Evil: 1", ""])
def test_an_idempotency_header_is_a_whole_header_name(header: str) -> None:
    """The pattern used to be searched, not matched whole: any text holding a letter passed."""
    with pytest.raises(ValidationError):
        IdempotencySupport(header=header)
    assert IdempotencySupport(header="Idempotency-Key").header == "Idempotency-Key"
