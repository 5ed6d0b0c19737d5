"""Wire models of the gateway's HTTP API (requests and responses), shared with /openapi.json."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from normalization.methods import CardData
from normalization.validation import DomainModel

__all__ = [
    "BatchTokenizeRequest",
    "CardMetadata",
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
