"""Cursor pagination for the list endpoints (``GET /v1/tokens?fingerprint=``,
``GET /v1/payments?reference=``).

A page is at most ``limit`` items (1-100, default 100) in the list's own order; the answer says
``has_more`` and gives ``next_cursor``, which the next request passes as ``cursor``. The cursor
is the position of the page's last item (its creation instant and id), not the item itself, so
iterating while deleting the items already seen (a merchant removing duplicate tokens) loses
nothing and fails nothing. It is opaque to clients, checked strictly, and holds nothing that is
not in the page already.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from gateway.payments.instants import from_micros, to_micros
from gateway.problems import HttpProblem

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "PageRequest",
    "Positioned",
    "page_body",
    "page_request",
    "split_page",
]

DEFAULT_LIMIT = 100
MAX_LIMIT = 100

P = TypeVar("P", bound="Positioned")

_CURSOR = re.compile(r"^(\d{1,19}):([A-Za-z0-9_]{1,100})$")
_LIMIT = re.compile(r"^[0-9]{1,4}$")


@dataclass(frozen=True, slots=True)
class PageRequest:
    """``limit`` items after ``after`` (created at, id), or from the start."""

    limit: int
    after: tuple[datetime, str] | None

    @property
    def fetch(self) -> int:
        """How many rows to ask for: one more than shown, to know whether more follow."""
        return self.limit + 1


def page_request(query: Mapping[str, str]) -> PageRequest:
    """``limit`` and ``cursor`` from a query string; 400 ``invalid_limit`` / ``invalid_cursor``."""
    raw_limit = query.get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        if not _LIMIT.match(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise HttpProblem(
                400, "invalid_limit", f"limit must be an integer from 1 to {MAX_LIMIT}."
            )
        limit = int(raw_limit)
    raw_cursor = query.get("cursor")
    return PageRequest(limit, None if raw_cursor is None else _decode(raw_cursor))


class Positioned(Protocol):
    """What a listed record has that places it: both list tables order by these."""

    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> str: ...


def split_page(items: Sequence[P], page: PageRequest) -> tuple[Sequence[P], str | None]:
    """The page's items and its ``next_cursor`` (None on the last page), from ``items``
    fetched as up to ``page.fetch`` (the one beyond ``limit`` only tells that there is more)."""
    shown = items[: page.limit]
    if len(items) <= page.limit:
        return shown, None
    return shown, _encode(shown[-1].created_at, shown[-1].id)


def page_body(data: list[Any], next_cursor: str | None) -> dict[str, Any]:
    """A list endpoint's answer: the page's views, ``has_more`` and ``next_cursor``."""
    return {"data": data, "has_more": next_cursor is not None, "next_cursor": next_cursor}


def _encode(created_at: datetime, item_id: str) -> str:
    raw = f"{to_micros(created_at)}:{item_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[datetime, str]:
    invalid = HttpProblem(
        400, "invalid_cursor", "cursor must be a next_cursor value from a previous page."
    )
    if not 1 <= len(cursor) <= 200 or not cursor.isascii():
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid from None
    match = _CURSOR.match(raw)
    if match is None:
        raise invalid
    try:
        return from_micros(int(match[1])), match[2]
    except (OverflowError, ValueError, OSError):
        raise invalid from None
