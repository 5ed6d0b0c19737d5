"""A connector plugin whose manifest is invalid: importing it raises pydantic's error."""

from __future__ import annotations

from normalization import PaymentMethodType
from sdk import BaseUrls, Category, Connector, Manifest, MultiSupport, Operation


class BrokenConnector(Connector):
    manifest = Manifest(
        id="broken",
        display_name="Broken",
        category=Category.CARD_ACQUIRER,
        operations=frozenset({Operation.AUTHORIZE}),
        capture=MultiSupport(partial=True),  # partial capture without the capture operation
        payment_methods=frozenset({PaymentMethodType.CARD}),
        currencies=frozenset({"EUR"}),
        base_urls=BaseUrls(sandbox="https://sandbox.broken.example"),
    )
