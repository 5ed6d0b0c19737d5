"""Wire models of the gateway's HTTP API (requests and responses), shared with /openapi.json."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from normalization.methods import CardData, PaymentMethod
from normalization.money import Money
from normalization.requests import Metadata
from normalization.validation import DomainModel

__all__ = [
    "AmountRequest",
    "BatchTokenizeRequest",
    "CardMetadata",
    "CompleteRequest",
    "CreatePaymentRequest",
    "TokenList",
    "TokenView",
    "TokenizeRequest",
]

TokenFormatName = Literal["opaque", "numeric"]
#: Token lifetimes: a minute to ten years; omitted means the token lives until deleted.
TtlSeconds = Annotated[int, Field(strict=True, ge=60, le=10 * 366 * 86400)]


class TokenizeRequest(DomainModel):
    card: CardData
    format: TokenFormatName = "opaque"
    ttl_seconds: TtlSeconds | None = None


class BatchTokenizeRequest(DomainModel):
    """Items are validated one by one so one bad card fails only its own slot."""

    cards: Annotated[list[Any], Field(min_length=1)]
    format: TokenFormatName = "opaque"
    ttl_seconds: TtlSeconds | None = None


class CardMetadata(BaseModel):
    brand: str
    bin: str
    last4: str
    exp_month: int
    exp_year: int


class TokenView(BaseModel):
    id: str
    fingerprint: str
    format: TokenFormatName
    card: CardMetadata
    created_at: str
    expires_at: str | None


class TokenList(BaseModel):
    data: list[TokenView]


ConnectorId = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class CreatePaymentRequest(DomainModel):
    """``POST /v1/payments``."""

    amount: Money
    payment_method: PaymentMethod
    capture: bool = False
    connector: ConnectorId | None = None
    reference: Annotated[str | None, Field(min_length=1, max_length=128)] = None
    metadata: Metadata = Field(default_factory=dict)
    return_url: Annotated[str | None, Field(pattern=r"^https?://", max_length=2048)] = None
    description: Annotated[str | None, Field(max_length=500)] = None
    country: Annotated[str | None, Field(pattern=r"^[A-Z]{2}$")] = None


class AmountRequest(DomainModel):
    """Capture and refund bodies: an optional amount; omitted means the whole remaining one."""

    amount: Money | None = None


class CompleteRequest(DomainModel):
    """``POST /v1/payments/{id}/complete``: what the bank or 3-D Secure page returned."""

    parameters: Annotated[
        dict[str, Annotated[str, Field(max_length=4096)]], Field(max_length=50)
    ] = Field(default_factory=dict)
