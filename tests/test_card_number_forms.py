"""Card numbers as people, providers and encoders write them: every detector finds them.

One finder (``normalization.find_card_numbers``) stands behind the redaction safety net (log
lines, provider text, transcripts, the access log), the refusal of card numbers in merchant
free text (``contains_pan``), the audit log's refusal and provider identifiers. A security
review got card data past all of them with a CVC or an expiry after the PAN, other separators
(dots, slashes, ``+``, ``%20``, a no-break space), full-width digits and JSON escapes; each of
those forms is here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.leaks import LeakScanner
from gateway.merchants import MerchantStore, WebhookUrlError, check_webhook_url
from normalization import (
    InvalidRequestError,
    Outcome,
    PaymentResult,
    PaymentStatus,
    ascii_digits,
    contains_pan,
    find_card_numbers,
    redact_card_text,
)
from vault.audit import contains_card_number
from vault.database import open_database


def _wide(digits: str) -> str:
    """The digits in full width (U+FF10-U+FF19), as some keyboards and PDFs write them."""
    return digits.translate({ord("0") + i: 0xFF10 + i for i in range(10)})


# (text, the PAN in it, digits written after it that the mask must not show)
FORMS = [
    ("card 4242424242424242 123 declined", "4242424242424242", "123"),
    ("PAN 5555555555554444 12/30", "5555555555554444", "1230"),
    ("Card 378282246310005 7316 declined", "378282246310005", "7316"),
    ("Bad security data 5105105105105100-313", "5105105105105100", "313"),
    ("4111-1111-1111-1111-123", "4111111111111111", "123"),
    ("6011000990139424-12", "6011000990139424", ""),
    ("read card 6011000990139424 737 on the phone", "6011000990139424", "737"),
    (_wide("5105105105105100"), "5105105105105100", ""),
    (_wide("4000056655665556") + " 123", "4000056655665556", "123"),
    ("5105.1051.0510.5100", "5105105105105100", ""),
    ("3782/822463/10005", "378282246310005", ""),
    ("3566.0020.2036.0505", "3566002020360505", ""),
    ("https://shop.example/r?c=4000.0566.5566.5556", "4000056655665556", ""),
    ("https://shop.example/r?c=4000%200566%205566%205556", "4000056655665556", ""),
    ("https://shop.example/r?c=4000+0566+5566+5556", "4000056655665556", ""),
    ("display 4167\u00a02747\u00a01133\u00a01316", "4167274711331316", ""),
    ('{"display": "4167\\u00a02747\\u00a01133\\u00a01316"}', "4167274711331316", ""),
    ("4111\u20131111\u20131111\u20131111 123", "4111111111111111", "123"),
    ("4242 - 4242 - 4242 - 4242", "4242424242424242", ""),
]

# Text that holds no card: left alone, accepted where card numbers are refused.
NOT_CARDS = [
    "numeric token 4000051234565557",  # 16 digits failing Luhn by design
    "tok 4000051234565557 12",  # ... followed by another number: no shorter stretch counts
    "order 12345678901",  # 11 digits
    "sizes 1024 2048 4096 8192",
    "ts 1763762000000001",  # Luhn-invalid
    "2026-11-21 22:14:53",
    "4242424242424242123",  # glued to other digits: one group failing as a whole
]


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isascii() and c.isdigit())


@pytest.mark.parametrize(("text", "pan", "after"), FORMS)
def test_redaction_masks_every_form(text: str, pan: str, after: str) -> None:
    redacted = redact_card_text(text)
    assert pan not in _digits(redacted)
    assert len(_digits(redacted)) <= 10, f"more than BIN and last 4 shown: {redacted}"
    (match,) = find_card_numbers(text)
    assert match.pan == pan
    if after:
        # The mask of a card with something after it shows its BIN only: its "last 4" could
        # be the CVC's digits.
        assert not _digits(redacted).endswith(after), redacted
        assert match.mask == pan[:6] + "*" * (len(pan) - 6)


@pytest.mark.parametrize(("text", "pan", "after"), FORMS)
def test_free_text_and_the_audit_log_refuse_every_form(text: str, pan: str, after: str) -> None:
    assert contains_pan(text)
    assert contains_card_number(text)


@pytest.mark.parametrize("text", NOT_CARDS)
def test_text_without_a_card_is_left_alone(text: str) -> None:
    assert redact_card_text(text) == text
    assert not contains_pan(text)
    assert find_card_numbers(text) == []


def test_a_lone_luhn_number_needs_a_brand_only_where_asked() -> None:
    # 16 digits, Luhn-valid, no known brand: masked in logs, accepted as an order id.
    number = "9000000000000001"
    assert redact_card_text(number) != number
    assert not contains_pan(number)


def test_provider_identifiers_are_masked() -> None:
    result = PaymentResult(
        status=PaymentStatus.AUTHORIZED,
        outcome=Outcome.SUCCEEDED,
        provider_reference="pay_4012888888881881",
        provider_references={"payment": "4012 8888 8888 1881 737"},
    )
    assert result.provider_reference == "pay_401288******1881"
    assert "888888" not in str(result.provider_references)
    parsed = PaymentResult.model_validate(
        {
            "status": "requires_action",
            "outcome": "succeeded",
            "next_action": {
                "url": "https://acs.example/3ds?pan=4012.8888.8888.1881",
                "data": {"PaReq": "x 4012888888881881"},
            },
        }
    )
    assert parsed.next_action is not None
    assert "888888" not in parsed.next_action.url + str(parsed.next_action.data)


async def test_a_webhook_url_holding_a_card_number_is_refused() -> None:
    for url in (
        "https://shop.example/hooks/3530111333300000",
        "https://shop.example/hooks?c=4111%201111%201111%201111",
    ):
        with pytest.raises(WebhookUrlError) as caught:
            await check_webhook_url(url, allow_private=True)
        assert "1111" not in str(caught.value) and "3333" not in str(caught.value)
    # A long id that is no card number is fine.
    await check_webhook_url("https://shop.example/hooks/9000000000000001", allow_private=True)


async def test_a_merchant_name_holding_a_card_number_is_refused(tmp_path: Path) -> None:
    db = await open_database(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        store = MerchantStore(db)
        await store.migrate()
        with pytest.raises(InvalidRequestError) as caught:
            await store.create("Card 3530111333300000 123")
        assert "3530" not in str(caught.value)
        merchant, _ = await store.create("Shop 42")
        assert merchant.name == "Shop 42"
    finally:
        await db.close()


def test_the_conformance_leak_scan_finds_every_form_and_a_code_after_a_hidden_card() -> None:
    pan, cvc = "4167274711331316", "188"
    scanner = LeakScanner()
    scanner.add("pan", pan, "pan")
    scanner.add("cvc", cvc, "cvc")
    for text in (
        "display 4167\u00a02747\u00a01133\u00a01316",
        '{"display": "4167\\u00a02747\\u00a01133\\u00a01316"}',
        _wide(pan),
        "4167 - 2747 - 1133 - 1316",
        "".join(chr(0x0660 + int(d)) for d in pan),  # Arabic-Indic, which redaction masks
    ):
        assert [s.kind for s, _ in scanner.find(text)] == ["pan"], text
        assert pan not in ascii_digits(scanner.redact(text)), text
    for text in (
        "Card [REDACTED] 188 declined",
        "Card 416727********** 188",
        '{"verification_value": 188}',
    ):
        assert [s.kind for s, _ in scanner.find(text)] == ["cvc"], text
    assert list(scanner.find("amount 188 EUR, order 1882")) == []


def test_a_numeric_provider_id_passing_luhn_alone_comes_back_unchanged() -> None:
    """One all-digit id in ten (Adyen's 16-digit ``pspReference``) passes Luhn. Masked as a
    card, the stored reference no longer found the payment: capture, refund and sync failed.
    Only a number in a known brand's range is a card in an identifier."""
    psp_reference = "8815131768219009"  # Luhn-valid, no brand starts with 88
    result = PaymentResult(
        status=PaymentStatus.AUTHORIZED,
        outcome=Outcome.SUCCEEDED,
        provider_reference=psp_reference,
        provider_references={"payment": psp_reference},
        next_action={"url": f"https://acs.example/{psp_reference}", "data": {"md": psp_reference}},
    )
    assert result.provider_reference == psp_reference
    assert result.provider_references == {"payment": psp_reference}
    assert result.next_action is not None
    assert result.next_action.url.endswith(psp_reference)
    assert result.next_action.data == {"md": psp_reference}
    # In free text the same number is still masked (logs over-mask on purpose).
    assert redact_card_text(psp_reference) != psp_reference


def test_a_match_does_not_show_its_card_number_when_printed() -> None:
    [match] = find_card_numbers("card 4242424242424242 declined")
    assert match.pan == "4242424242424242"
    assert "4242424242424242" not in repr(match) and "4242424242424242" not in str(match)


def test_every_security_code_name_is_read_by_the_scrubber_and_the_leak_scan() -> None:
    """The names were kept in four lists that disagreed: the leak scan had no ``cav2``, the
    scrubber's JSON sweep no ``cav2`` or ``csc``. They come from one pattern now."""
    from sdk.scrubbing import Scrubber

    scanner = LeakScanner()
    scanner.add("canary CVC", "188", "cvc")
    for text in ("cav2=188", '{"card_cav2": "188"}', '{"cardCsc": 188}', "CSC: 188"):
        assert [s.kind for s, _ in scanner.find(text)] == ["cvc"], text
        assert "188" not in Scrubber().scrub_text(text), text
