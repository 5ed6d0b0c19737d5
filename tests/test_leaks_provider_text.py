"""Card data in text Tessera does not write: what providers say, what the vault hands back.

- A provider's decline message (or raw status) echoing the card: connectors may build a
  ``PaymentResult``/``Decline`` themselves rather than through ``ErrorMap.result``, and the result
  is stored (``payments.decline``), returned by the API and sent in merchant notifications.
- Provider replies recorded in transcripts and cassettes, and messages mapped by ``ErrorMap``:
  a security code next to its name (``"card_cvc": "123"``, ``CVC 123 does not match``).
- A vault payload that does not decode: ``UnicodeDecodeError`` keeps the raw bytes (PAN and
  holder name) in its ``repr`` and ``object``.
- The audit log's card-number check, for other digit scripts and separators.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from normalization import (
    Decline,
    DeclineCode,
    InvalidRequestError,
    Outcome,
    PaymentResult,
    PaymentStatus,
    VaultError,
)
from normalization.redaction import (
    _SECURITY_CODE_RE,
    redact_card_numbers,
    redact_card_text,
    redact_security_codes,
)
from sdk.error_map import ErrorMap
from sdk.scrubbing import Scrubber
from tests.vault.canary import Canary, find_leaks
from tests.vault.test_token_store import record as token_record
from vault.audit import contains_card_number
from vault.cvv import CvvHolder
from vault.tokenization import TokenizationService

CANARY = Canary(pan="4000056655665556", cvc="7391")
PAN, CVV = CANARY.pan, CANARY.cvc
SPACED = "4000 0566 5566 5556"
FULLWIDTH = "".join(chr(0xFF10 + int(d)) for d in PAN)
ARABIC_INDIC = "".join(chr(0x0660 + int(d)) for d in PAN)


def _clean(*texts: str) -> None:
    for text in texts:
        leaks = find_leaks(text, CANARY)
        assert not leaks, f"{leaks} in {text.replace(PAN, '<PAN>').replace(CVV, '<CVV>')!r}"
        assert FULLWIDTH not in text and ARABIC_INDIC not in text


def _exception_texts(exc: BaseException) -> Iterator[str]:
    current: BaseException | None = exc
    while current is not None:
        yield str(current)
        yield repr(current)
        yield repr(current.args)
        yield "".join(traceback.format_exception(current))
        current = current.__cause__ or current.__context__


#: Provider texts echoing the card (ids by position: a test id must not carry the canary).
PROVIDER_MESSAGES = [
    f"Card {PAN} was declined",
    f"card number {SPACED} is invalid",
    f"Card {FULLWIDTH} declined",
    f"Card {ARABIC_INDIC} declined",
    f"CVC {CVV} does not match",
    f"Invalid cvv2: {CVV}",
    f"security code {CVV} incorrect",
    f"{{'cvc': '{CVV}', 'number': '{PAN}'}}",
]


@pytest.mark.parametrize("message", PROVIDER_MESSAGES, ids=lambda _: "")
def test_decline_messages_never_keep_card_data(message: str) -> None:
    results = [
        PaymentResult.declined(DeclineCode.DO_NOT_HONOR, message=message, provider_code="05"),
        PaymentResult.model_validate(
            {
                "status": "declined",
                "outcome": "declined",
                "decline": {"code": "incorrect_cvc", "message": message},
                "raw_status": message[:100],
            }
        ),
        PaymentResult(
            status=PaymentStatus.DECLINED,
            outcome=Outcome.DECLINED,
            decline=Decline(code=DeclineCode.DO_NOT_HONOR, message=message),
            raw_status=message[:100],
        ),
    ]
    for result in results:
        assert result.decline is not None
        assert result.decline.message, "the message is kept, masked"
        _clean(
            result.model_dump_json(),
            json.dumps(result.model_dump(mode="json")),
            repr(result),
            str(result),
        )


def test_decline_messages_stay_as_they_were_without_card_data() -> None:
    message = "Do not honor (code 05) for order 1234567890123, amount 7391"
    result = PaymentResult.declined(DeclineCode.DO_NOT_HONOR, message=message)
    assert result.decline is not None and result.decline.message == message
    masked = PaymentResult.declined(DeclineCode.DO_NOT_HONOR, message=f"Card {PAN} declined")
    assert masked.decline is not None and masked.decline.message == "Card 400005******5556 declined"


@pytest.mark.parametrize("message", PROVIDER_MESSAGES, ids=lambda _: "")
def test_error_map_messages_never_keep_card_data(message: str) -> None:
    result = ErrorMap({"card_declined": DeclineCode.DO_NOT_HONOR}).result("card_declined", message)
    _clean(result.model_dump_json())


@pytest.mark.parametrize(
    "body",
    [
        f'{{"card": {{"last4": "5556", "card_cvc": "{CVV}"}}}}',
        f'{{"card": {{"cardCvv": {CVV}}}}}',
        f'{{"source": {{"cvc_check": "fail", "security_code": "{CVV}"}}}}',
        f'{{"error": {{"message": "CVC {CVV} does not match"}}}}',
        f"status=declined&message=cvv2%3A+{CVV}",
        f"<response><card><cvv2>{CVV}</cvv2><ns:cvc>{CVV}</ns:cvc></card></response>",
        f'{{"error": "card {FULLWIDTH} declined"}}',
    ],
    ids=lambda _: "",
)
def test_transcript_scrubber_hides_echoed_security_codes(body: str) -> None:
    scrubbed = Scrubber().scrub_text(body)
    _clean(scrubbed)
    if body.startswith("{"):
        json.loads(scrubbed)  # still a document a replayed connector can parse


def test_redact_card_text_leaves_ordinary_text_alone() -> None:
    for text in (
        "took 7391 ms",
        "amount 7391 EUR",
        "order 1234567890123",
        "acid 123",
        "cvc_check: pass",
        "cvc: 73912",
        '{"cvc": "***"}',
        "numeric token 4000051234565557",  # fails Luhn
    ):
        assert redact_card_text(text) == text


_CODE_TEXT = st.text(
    alphabet=st.sampled_from(
        list("cvCVidsaSIDA2ecuRTYty_-[]%5BD'\":= 0123456789x\u017f\u0131\u0130")
    ),
    max_size=40,
)


@given(_CODE_TEXT)
def test_security_code_pass_skips_only_text_that_cannot_match(text: str) -> None:
    # The pass skips its regular expression for text that cannot name a code (every log string
    # goes through it); the shortcut must never change a result.
    full = _SECURITY_CODE_RE.sub(lambda m: m.group(1) + "***", text)
    assert redact_security_codes(text) == full


_DIGITS_OR_NOT = st.lists(
    st.sampled_from(
        # digits of three scripts, numerics that are not decimal digits (superscript, fraction,
        # roman numeral), separators and a code's name
        [*"0123456789 -:=\"'\uff10\uff14\uff17\u0660\u0665\u00b2\u00bd\u216b", "cvc", "CVV2"]
    ),
    max_size=30,
).map("".join)


@given(st.one_of(_DIGITS_OR_NOT, st.text(max_size=40)))
@example(f"Card {FULLWIDTH} declined")
@example("CVC " + "".join(chr(0xFF10 + int(d)) for d in CVV))
def test_card_text_skips_only_text_without_digits(text: str) -> None:
    # Text without a digit skips both passes (provider statuses, most log values); the shortcut
    # must never change a result.
    full = _SECURITY_CODE_RE.sub(lambda m: m.group(1) + "***", redact_card_numbers(text))
    assert redact_card_text(text) == full


def test_security_code_pass_still_sees_names_in_any_case_or_spelling() -> None:
    for text in (
        "CVC 739",
        "card[Cvv]=7391",
        "SECURITY-CODE: 739",
        "c\u017fc 739",
        "c\u0131d 7391",
    ):
        assert redact_security_codes(text) != text, text


def test_audit_refuses_card_numbers_in_any_digit_script_or_grouping() -> None:
    for text in (
        PAN,
        SPACED,
        SPACED.replace(" ", "-"),
        SPACED.replace(" ", "."),
        SPACED.replace(" ", "/"),
        SPACED.replace(" ", "_"),
        SPACED.replace(" ", "  "),
        SPACED.replace(" ", "\u00a0"),
        SPACED.replace(" ", "\t"),
        FULLWIDTH,
        ARABIC_INDIC,
        f"purpose: refund for {FULLWIDTH}",
    ):
        assert contains_card_number(text), text.replace(PAN, "<PAN>")
    for text in ("merchant:m_123", "v3 to v4; rewrapped 1200; remaining 0", "2031-12-01"):
        assert not contains_card_number(text)


class _NoStore:
    class database:  # the attribute InsertBatcher reads
        dialect = "sqlite"


class _NoAudit:
    async def append(self, **fields: Any) -> None:
        return None


class _GarbledVault:
    """A transit decrypt that answers bytes that are not UTF-8 (corruption, a wrong key's
    output, a payload written by something else): the PAN is in them."""

    async def decrypt(self, key: str, ciphertext: str) -> bytes:
        return PAN.encode() + b"\n\xff\xfeHolder " + CVV.encode()


async def test_an_undecodable_vault_payload_raises_without_the_bytes() -> None:
    service = TokenizationService(
        _NoStore(),  # type: ignore[arg-type]
        _GarbledVault(),  # type: ignore[arg-type]
        cvv=CvvHolder(),
        audit=_NoAudit(),  # type: ignore[arg-type]
    )
    record = token_record("t1")
    with pytest.raises(VaultError) as info:
        await service.reveal("t1", record.id, purpose="test", actor="test", record=record)
    assert not isinstance(info.value, InvalidRequestError)
    _clean(*_exception_texts(info.value))
    assert info.value.__context__ is None and info.value.__cause__ is None
