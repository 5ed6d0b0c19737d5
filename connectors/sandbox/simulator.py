"""The sandbox provider's books, in memory: authorizations and their captures and refunds,
verifications, idempotency records, and the magic values that steer outcomes.

Pure and synchronous (no aiohttp, no I/O): ``server.py`` wraps it in HTTP, faults and webhooks.
The rules mirror ``normalization.lifecycle`` (what can be captured, voided, refunded, and which
status follows), so the sandbox refuses exactly what a real acquirer would.

Card data: the full PAN arrives here (egress detokenization put it into the request) and is used
only to pick the magic behaviour and check Luhn and expiry; the books keep the mask and last four.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from connectors.sandbox.connector import MANIFEST
from connectors.sandbox.transformers import (
    AuthorizationCreate,
    CaptureCreate,
    RefundCreate,
    VerificationCreate,
    WireAuthorization,
    WireCard,
)
from normalization import MAX_AMOUNT_MINOR, card_last4, luhn_valid, mask_pan

__all__ = [
    "MAGIC_AMOUNTS",
    "MAGIC_CARDS",
    "Authorization",
    "Fault",
    "IdempotencyStore",
    "Ledger",
    "MagicAmount",
    "MagicCard",
    "Reply",
    "SandboxRefusal",
    "mask_card",
]

SUPPORTED_CURRENCIES = MANIFEST.currencies


# -- magic values ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MagicCard:
    """A test card number and what the sandbox does with it. ``code`` is the decline code (for
    ``decline`` and ``pending_decline``) sent as ``decline.code``."""

    number: str
    behaviour: str  # "approve" | "decline" | "3ds" | "pending" | "pending_decline"
    code: str | None
    description: str


MAGIC_CARDS: tuple[MagicCard, ...] = (
    MagicCard("4242424242424242", "approve", None, "Approved (so is any other valid card)."),
    MagicCard("4000000000009995", "decline", "insufficient_funds", "Insufficient funds."),
    MagicCard("4000000000000002", "decline", "do_not_honor", "Generic decline."),
    MagicCard("4000000000000069", "decline", "expired_card", "Expired card."),
    MagicCard("4000000000000127", "decline", "incorrect_cvc", "Incorrect CVC."),
    MagicCard("4000000000000135", "decline", "invalid_card_number", "Issuer: no such card."),
    MagicCard("4100000000000019", "decline", "fraud_suspected", "Blocked as fraudulent."),
    MagicCard("4000000000009987", "decline", "lost_card", "Reported lost."),
    MagicCard("4000000000009979", "decline", "stolen_card", "Reported stolen."),
    MagicCard("4000000000000143", "decline", "card_not_supported", "Card type not accepted."),
    MagicCard("4000000000000150", "decline", "limit_exceeded", "Over the card's limit."),
    MagicCard("4000000000000168", "decline", "authentication_required", "Issuer wants SCA (soft)."),
    MagicCard("4000000000000176", "decline", "restricted_card", "Restricted card."),
    MagicCard("4000000000000119", "decline", "processing_error", "Processing error."),
    MagicCard(
        "4000000000000184",
        "decline",
        "try_again_later",
        "Issuer unavailable: nothing recorded, retryable (HTTP 402 error envelope).",
    ),
    MagicCard(
        "4000000000003220",
        "3ds",
        None,
        "3-D Secure: requires_action + redirect; the challenge page completes it.",
    ),
    MagicCard(
        "4000000000000200",
        "pending",
        None,
        "Pending; settles authorized (captured if capture=true) after the settle delay.",
    ),
    MagicCard(
        "4000000000000218",
        "pending_decline",
        "do_not_honor",
        "Pending; settles declined (do_not_honor) after the settle delay.",
    ),
)
_CARDS_BY_NUMBER = {card.number: card for card in MAGIC_CARDS}


class Fault(StrEnum):
    THROTTLE = "throttle"  # 429 + Retry-After: 1, nothing done
    SERVER_ERROR = "server_error"  # 500, nothing done
    UNAVAILABLE_ONCE = "unavailable_once"  # 503 the first time, then served normally
    HANG = "hang"  # done, then the reply never comes (longer than any deadline)
    RESET = "reset"  # done, then the connection is reset without a reply, every time
    RESET_ONCE = "reset_once"  # done, reset the first time; a retry gets the stored reply


@dataclass(frozen=True, slots=True)
class MagicAmount:
    """An amount (minor units, any currency, on any request carrying an amount) and its fault."""

    amount: int
    fault: Fault
    description: str


MAGIC_AMOUNTS: tuple[MagicAmount, ...] = (
    MagicAmount(99_429, Fault.THROTTLE, "HTTP 429 with Retry-After: 1; nothing done."),
    MagicAmount(99_500, Fault.SERVER_ERROR, "HTTP 500; nothing done."),
    MagicAmount(
        99_503, Fault.UNAVAILABLE_ONCE, "HTTP 503 on the first request of a key, then normal."
    ),
    MagicAmount(99_408, Fault.HANG, "Done, then no reply for longer than any deadline."),
    MagicAmount(99_104, Fault.RESET, "Done, then the connection is reset (every time)."),
    MagicAmount(
        99_105, Fault.RESET_ONCE, "Done, reset the first time; a same-key retry gets the reply."
    ),
)
FAULTS_BY_AMOUNT = {magic.amount: magic.fault for magic in MAGIC_AMOUNTS}


def mask_card(number: object) -> str | None:
    """What logs and the books show of a card number: BIN and last four at most."""
    if not isinstance(number, str):
        return None
    if number.isascii() and number.isdigit() and len(number) >= 12:
        return mask_pan(number)
    return "[malformed]"


# -- replies and refusals -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: dict[str, Any]


class SandboxRefusal(Exception):
    """A request the sandbox refuses: HTTP ``status`` with ``{"error": {code, message}}``."""

    def __init__(
        self, status: int, code: str, message: str, authorization: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.authorization = authorization

    def reply(self) -> Reply:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.authorization is not None:
            error["authorization"] = self.authorization
        return Reply(self.status, {"error": error})


# -- the books ------------------------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    # Base32 (a-z, 2-7), not hex: a long run of digits could pass Luhn and be masked as a PAN
    # by every scrubber downstream (transcripts, cassettes, leak scans).
    return f"{prefix}_{base64.b32encode(secrets.token_bytes(15)).decode().lower()}"


def _now() -> int:
    # Seconds, not milliseconds: a 13-digit number can pass Luhn and be scrubbed as a PAN.
    return int(time.time())


@dataclass(slots=True)
class Movement:
    id: str
    amount: int
    created_at: int


@dataclass(slots=True)
class Authorization:
    id: str
    amount: int
    currency: str
    capture: bool
    status: str
    card_masked: str
    card_last4: str
    reference: str | None = None
    return_url: str | None = None
    challenge_url: str | None = None
    idempotency_key: str | None = None
    decline: tuple[str, str] | None = None
    amount_captured: int = 0
    amount_refunded: int = 0
    captures: list[Movement] = field(default_factory=list)
    refunds: list[Movement] = field(default_factory=list)
    settles_at: float | None = None
    settles_to: tuple[str, str | None] | None = None
    created_at: int = field(default_factory=_now)

    def view(self) -> dict[str, Any]:
        """The wire object (``transformers.WireAuthorization``)."""
        return WireAuthorization.model_validate(
            {
                "id": self.id,
                "status": self.status,
                "amount": self.amount,
                "currency": self.currency,
                "amount_captured": self.amount_captured,
                "amount_refunded": self.amount_refunded,
                "capture": self.capture,
                "reference": self.reference,
                "decline": (
                    {"code": self.decline[0], "message": self.decline[1]} if self.decline else None
                ),
                "next_action": (
                    {"type": "redirect", "url": self.challenge_url}
                    if self.status == "requires_action"
                    else None
                ),
                "captures": [vars_of(m) for m in self.captures],
                "refunds": [vars_of(m) for m in self.refunds],
                "card": {"masked": self.card_masked, "last4": self.card_last4},
                "created_at": self.created_at,
            }
        ).model_dump(mode="json")


def vars_of(movement: Movement) -> dict[str, Any]:
    return {"id": movement.id, "amount": movement.amount, "created_at": movement.created_at}


def _check_amount(amount: int, currency: str) -> None:
    if currency not in SUPPORTED_CURRENCIES:
        raise SandboxRefusal(400, "currency_not_supported", "The sandbox does not take it.")
    if not 0 < amount <= MAX_AMOUNT_MINOR:
        raise SandboxRefusal(400, "invalid_amount", "Amounts are positive minor units.")


def _card_problem(card: WireCard, today: datetime) -> str | None:
    """The decline code a malformed or expired card earns, or None."""
    number = card.number
    if not (number.isascii() and number.isdigit() and 12 <= len(number) <= 19):
        return "invalid_card_number"
    if not luhn_valid(number):
        return "invalid_card_number"
    if card.cvc is not None and not (
        card.cvc.isascii() and card.cvc.isdigit() and len(card.cvc) in (3, 4)
    ):
        return "incorrect_cvc"
    month, year = card.exp_month, card.exp_year
    if not (month.isascii() and month.isdigit() and year.isascii() and year.isdigit()):
        return "expired_card"
    if not 1 <= int(month) <= 12 or (int(year), int(month)) < (today.year, today.month):
        return "expired_card"
    return None


# A decline's message: the card that declines with it (not a pending card that settles so).
_MESSAGES = {
    card.code: card.description for card in MAGIC_CARDS if card.code and card.behaviour == "decline"
}
_MESSAGES.update(
    authentication_failed="3-D Secure authentication failed.",
    invalid_card_number="The card number is not valid.",
    expired_card="The card has expired.",
    incorrect_cvc="The card's security code is incorrect.",
)


class Ledger:
    """Every authorization and verification the sandbox holds. ``on_change(auth)`` is called
    after a change that a webhook reports (settlement, 3-D Secure, captures, voids, refunds)."""

    def __init__(
        self,
        *,
        settle_delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[Authorization], None] | None = None,
    ) -> None:
        self.settle_delay = settle_delay
        self.clock = clock
        self.on_change = on_change
        self.authorizations: dict[str, Authorization] = {}
        self.verifications: dict[str, dict[str, Any]] = {}

    def reset(self) -> None:
        self.authorizations.clear()
        self.verifications.clear()

    def _changed(self, auth: Authorization) -> None:
        if self.on_change is not None:
            self.on_change(auth)

    # -- authorizations ---------------------------------------------------------------------------

    def authorize(
        self, wire: AuthorizationCreate, *, idempotency_key: str | None, base_url: str
    ) -> Reply:
        _check_amount(wire.amount, wire.currency)
        problem = _card_problem(wire.card, datetime.now(UTC))
        magic = _CARDS_BY_NUMBER.get(wire.card.number)
        if problem is None and magic is not None and magic.code == "try_again_later":
            raise SandboxRefusal(402, "try_again_later", magic.description)
        auth = Authorization(
            id=_new_id("auth"),
            amount=wire.amount,
            currency=wire.currency,
            capture=wire.capture,
            status="authorized",
            card_masked=mask_pan(wire.card.number) if problem is None else "[invalid]",
            card_last4=card_last4(wire.card.number) if problem is None else "",
            reference=wire.reference,
            return_url=wire.return_url,
            idempotency_key=idempotency_key,
        )
        behaviour = magic.behaviour if magic is not None and problem is None else "approve"
        if problem is not None:
            self._decline(auth, problem)
        elif behaviour == "decline":
            assert magic is not None and magic.code is not None
            self._decline(auth, magic.code)
        elif behaviour == "3ds":
            auth.status = "requires_action"
            auth.challenge_url = f"{base_url}/3ds/{auth.id}"
        elif behaviour in ("pending", "pending_decline"):
            auth.status = "pending"
            auth.settles_at = self.clock() + self.settle_delay
            target = "declined" if behaviour == "pending_decline" else self._approved(auth)
            auth.settles_to = (target, magic.code if magic else None)
        else:
            self._approve(auth)
        self.authorizations[auth.id] = auth
        return Reply(402 if auth.status == "declined" else 201, auth.view())

    @staticmethod
    def _approved(auth: Authorization) -> str:
        return "captured" if auth.capture else "authorized"

    def _approve(self, auth: Authorization) -> None:
        auth.status = self._approved(auth)
        if auth.capture:
            auth.amount_captured = auth.amount
            auth.captures.append(Movement(_new_id("cap"), auth.amount, auth.created_at))

    @staticmethod
    def _decline(auth: Authorization, code: str) -> None:
        auth.status = "declined"
        auth.decline = (code, _MESSAGES.get(code, "Declined."))

    def get(self, auth_id: str) -> Authorization:
        self.settle_due()
        auth = self.authorizations.get(auth_id)
        if auth is None:
            raise SandboxRefusal(404, "not_found", "No such authorization.")
        return auth

    def find(self, reference: str) -> list[Authorization]:
        self.settle_due()
        return [a for a in self.authorizations.values() if a.reference == reference]

    def settle_due(self, *, force: str | None = None) -> None:
        """Settle pending authorizations whose time has come (or ``force``, now)."""
        now = self.clock()
        for auth in list(self.authorizations.values()):
            if auth.status != "pending" or auth.settles_to is None or auth.settles_at is None:
                continue
            if auth.settles_at > now and auth.id != force:
                continue
            target, code = auth.settles_to
            auth.settles_at = auth.settles_to = None
            if target == "declined":
                self._decline(auth, code or "do_not_honor")
            else:
                self._approve(auth)
            self._changed(auth)

    def authenticate(self, auth_id: str, *, succeeded: bool) -> Authorization:
        """The customer finished the 3-D Secure challenge."""
        auth = self.get(auth_id)
        if auth.status != "requires_action":
            raise SandboxRefusal(409, "invalid_state", "No challenge is waiting.", auth.id)
        if succeeded:
            self._approve(auth)
        else:
            self._decline(auth, "authentication_failed")
        self._changed(auth)
        return auth

    def capture(self, auth_id: str, wire: CaptureCreate) -> Reply:
        auth = self._for_movement(auth_id, wire.amount, wire.currency)
        if auth.status not in ("authorized", "partially_captured"):
            raise SandboxRefusal(409, "invalid_state", f"Cannot capture: {auth.status}.", auth.id)
        if wire.amount > auth.amount - auth.amount_captured:
            raise SandboxRefusal(
                409, "amount_exceeds_capturable", "More than is left to capture.", auth.id
            )
        auth.amount_captured += wire.amount
        auth.captures.append(Movement(_new_id("cap"), wire.amount, _now()))
        full = auth.amount_captured == auth.amount or wire.final
        auth.status = "captured" if full else "partially_captured"
        self._changed(auth)
        return Reply(201, auth.view())

    def void(self, auth_id: str) -> Reply:
        auth = self.get(auth_id)
        if auth.status not in ("authorized", "requires_action", "pending"):
            raise SandboxRefusal(409, "invalid_state", f"Cannot void: {auth.status}.", auth.id)
        auth.status = "voided"
        auth.settles_at = auth.settles_to = None
        self._changed(auth)
        return Reply(201, auth.view())

    def refund(self, auth_id: str, wire: RefundCreate) -> Reply:
        auth = self._for_movement(auth_id, wire.amount, wire.currency)
        if auth.status not in ("captured", "partially_captured", "partially_refunded"):
            raise SandboxRefusal(409, "invalid_state", f"Cannot refund: {auth.status}.", auth.id)
        if wire.amount > auth.amount_captured - auth.amount_refunded:
            raise SandboxRefusal(
                409, "amount_exceeds_refundable", "More than is left to refund.", auth.id
            )
        auth.amount_refunded += wire.amount
        auth.refunds.append(Movement(_new_id("ref"), wire.amount, _now()))
        full = auth.amount_refunded == auth.amount_captured
        auth.status = "refunded" if full else "partially_refunded"
        self._changed(auth)
        return Reply(201, auth.view())

    def _for_movement(self, auth_id: str, amount: int, currency: str) -> Authorization:
        auth = self.get(auth_id)
        if currency != auth.currency:
            raise SandboxRefusal(400, "currency_mismatch", "Not the authorization's currency.")
        if not 0 < amount <= MAX_AMOUNT_MINOR:
            raise SandboxRefusal(400, "invalid_amount", "Amounts are positive minor units.")
        return auth

    # -- verifications ----------------------------------------------------------------------------

    def verify(self, wire: VerificationCreate) -> Reply:
        if wire.currency not in SUPPORTED_CURRENCIES:
            raise SandboxRefusal(400, "currency_not_supported", "The sandbox does not take it.")
        problem = _card_problem(wire.card, datetime.now(UTC))
        magic = _CARDS_BY_NUMBER.get(wire.card.number)
        code = problem or (magic.code if magic and magic.behaviour == "decline" else None)
        if code == "try_again_later":
            raise SandboxRefusal(402, "try_again_later", _MESSAGES[code])
        verification: dict[str, Any] = {
            "id": _new_id("ver"),
            "object": "verification",
            "status": "declined" if code else "verified",
            "currency": wire.currency,
            "decline": {"code": code, "message": _MESSAGES.get(code, "")} if code else None,
        }
        self.verifications[verification["id"]] = verification
        return Reply(402 if code else 201, verification)


# -- idempotency ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Stored:
    fingerprint: bytes
    reply: Reply
    stored_at: float


class IdempotencyStore:
    """Stripe's semantics: the same key and request get the stored reply; the same key with a
    different request is refused (422 ``idempotency_key_reused``); keys expire after
    ``retention_seconds``. ``seen`` counts every request per key, faulted ones included."""

    def __init__(
        self, *, retention_seconds: float = 86400.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.retention_seconds = retention_seconds
        self.clock = clock
        self.seen: Counter[str] = Counter()
        self._stored: dict[str, _Stored] = {}
        # Fingerprints are keyed so that no plain hash of a body holding a PAN exists anywhere.
        self._mac_key = secrets.token_bytes(32)

    def reset(self) -> None:
        self.seen.clear()
        self._stored.clear()

    def fingerprint(self, method: str, path: str, body: bytes) -> bytes:
        mac = hmac.new(self._mac_key, f"{method} {path}\n".encode(), hashlib.sha256)
        mac.update(body)
        return mac.digest()

    def replay(self, key: str, fingerprint: bytes) -> Reply | None:
        stored = self._stored.get(key)
        if stored is None:
            return None
        if self.clock() - stored.stored_at > self.retention_seconds:
            del self._stored[key]
            return None
        if not hmac.compare_digest(stored.fingerprint, fingerprint):
            raise SandboxRefusal(
                422, "idempotency_key_reused", "This key was used with a different request."
            )
        return stored.reply

    def store(self, key: str, fingerprint: bytes, reply: Reply) -> None:
        self._stored[key] = _Stored(fingerprint, reply, self.clock())
