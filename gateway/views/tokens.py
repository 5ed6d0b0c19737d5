"""``/v1/tokens``: tokenize, batch tokenize, read masked metadata, search by fingerprint, delete.

There is no endpoint that reveals a PAN: card data leaves the vault only through the SDK's egress
detokenization, in the bytes sent to an allowlisted provider.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from gateway.app import MERCHANT, RESOURCES, Resources
from gateway.http import json_response, parse_json, parse_model, read_body
from gateway.merchants import Merchant
from gateway.pagination import page_body, page_request, split_page
from gateway.problems import HttpProblem, validation_problem
from gateway.schemas import BatchTokenizeRequest, parse_tokenize_request, validate_card
from normalization.errors import TesseraError
from normalization.methods import CardData
from vault.token_store import TokenRecord

__all__ = ["setup", "token_view"]

# Any id: the service answers token_not_found for one that is not a token id (of any length).
_TOKEN_PATH = r"/v1/tokens/{token_id:(?!batch$)[^/]+}"  # noqa: S105 - a route
_FINGERPRINT_MAX = 200


def token_view(record: TokenRecord) -> dict[str, Any]:
    """The public, masked view of a token (the ``POST /v1/tokens`` response shape)."""
    return {**record.public_view(), "format": record.format}


def _limits(resources: Resources) -> tuple[float, int]:
    server = resources.settings.server
    return server.read_timeout, server.client_max_size


async def create_token(request: web.Request) -> web.Response:
    resources = request.app[RESOURCES]
    merchant: Merchant = request[MERCHANT]
    timeout, max_size = _limits(resources)
    body = await read_body(request, read_timeout=timeout, max_size=max_size)
    card, token_format, ttl_seconds = parse_tokenize_request(parse_json(body))
    record, created = await resources.tokens.tokenize(
        merchant.id,
        card,
        token_format=token_format,
        ttl_seconds=ttl_seconds,
        dedup=merchant.token_dedup,
    )
    if created:
        resources.metrics.count_tokens(token_format)
    return json_response(token_view(record), status=201 if created else 200)


async def create_tokens_batch(request: web.Request) -> web.Response:
    resources = request.app[RESOURCES]
    merchant: Merchant = request[MERCHANT]
    timeout, max_size = _limits(resources)
    limit = resources.settings.tokenization.max_cards_per_request
    body = parse_model(
        BatchTokenizeRequest, await read_body(request, read_timeout=timeout, max_size=max_size)
    )
    if len(body.cards) > limit:
        raise HttpProblem(
            413, "batch_too_large", f"A batch holds at most {limit} cards; got {len(body.cards)}."
        )
    results: list[dict[str, Any] | None] = [None] * len(body.cards)
    valid: list[CardData] = []
    positions: list[int] = []
    for index, item in enumerate(body.cards):
        try:
            valid.append(validate_card(item))
            positions.append(index)
        except ValidationError as exc:
            code, detail, errors = validation_problem(exc)
            results[index] = {"error": {"code": code, "detail": detail, "errors": errors}}
    if valid:
        outcomes = await resources.tokens.tokenize_many(
            merchant.id,
            valid,
            token_format=body.format,
            ttl_seconds=body.ttl_seconds,
            dedup=merchant.token_dedup,
        )
        created = 0
        for index, outcome in zip(positions, outcomes, strict=True):
            if isinstance(outcome, TesseraError):
                results[index] = {"error": {"code": outcome.code, "detail": outcome.detail}}
            else:
                results[index] = token_view(outcome[0])
                created += outcome[1]  # a dedup hit returns a token made earlier
        resources.metrics.count_tokens(body.format, created)
    return json_response({"results": results})


async def get_token(request: web.Request) -> web.Response:
    merchant: Merchant = request[MERCHANT]
    record = await request.app[RESOURCES].tokens.get(merchant.id, request.match_info["token_id"])
    return json_response(token_view(record))


async def search_tokens(request: web.Request) -> web.Response:
    merchant: Merchant = request[MERCHANT]
    fingerprint = request.query.get("fingerprint", "")
    # NUL: no fingerprint holds one, and PostgreSQL would refuse the query (a 500).
    if not fingerprint or len(fingerprint) > _FINGERPRINT_MAX or "\x00" in fingerprint:
        raise HttpProblem(
            400,
            "fingerprint_required",
            f"Search tokens with ?fingerprint=<fingerprint> (1-{_FINGERPRINT_MAX} characters, "
            "no NUL).",
        )
    page = page_request(request.query)
    records = await request.app[RESOURCES].tokens.find(
        merchant.id, fingerprint, after=page.after, limit=page.fetch
    )
    shown, next_cursor = split_page(records, page)
    return json_response(page_body([token_view(r) for r in shown], next_cursor))


async def delete_token(request: web.Request) -> web.Response:
    merchant: Merchant = request[MERCHANT]
    await request.app[RESOURCES].tokens.delete(
        merchant.id, request.match_info["token_id"], actor=f"merchant:{merchant.id}"
    )
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/tokens", create_token)
    app.router.add_post("/v1/tokens/batch", create_tokens_batch)
    app.router.add_get("/v1/tokens", search_tokens)
    # Token ids only (opaque or numeric): /v1/tokens/batch is never read as a token id.
    app.router.add_get(_TOKEN_PATH, get_token)
    app.router.add_delete(_TOKEN_PATH, delete_token)
