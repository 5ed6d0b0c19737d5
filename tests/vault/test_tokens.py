"""Token formats: opaque shape and randomness, numeric shape, kept digits, failed Luhn."""

from __future__ import annotations

import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from normalization import is_valid_pan, luhn_valid
from tests.vault.canary import luhn_complete
from tests.vault.conftest import random_pan
from vault.tokens import is_token_id, new_numeric_token, new_opaque_token, new_token


def test_opaque_token_shape_and_uniqueness() -> None:
    tokens = {new_opaque_token() for _ in range(10_000)}
    assert len(tokens) == 10_000
    for token in tokens:
        assert re.fullmatch(r"tok_[0-9A-Za-z]{24}", token)
        assert is_token_id(token)


def test_opaque_token_uses_the_whole_alphabet_evenly() -> None:
    counts: dict[str, int] = {}
    for _ in range(5_000):
        for char in new_opaque_token()[4:]:
            counts[char] = counts.get(char, 0) + 1
    assert len(counts) == 62
    expected = 5_000 * 24 / 62
    # Folding bytes modulo 62 would give the first 8 symbols ~25% more: rejection keeps it flat.
    assert max(counts.values()) < expected * 1.15
    assert min(counts.values()) > expected * 0.85


def test_a_forked_child_never_hands_out_the_parents_symbols() -> None:
    new_opaque_token()  # the parent's pool now holds symbols for many more tokens
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, (new_opaque_token() + new_numeric_token(random_pan())).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    # Without the at-fork reset the child's token would be the parent's next one, exactly.
    assert child[:28] != new_opaque_token()
    assert re.fullmatch(r"tok_[0-9A-Za-z]{24}[0-9]{16}", child)


def test_threads_never_share_symbols() -> None:
    with ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(lambda _: [new_opaque_token() for _ in range(2_000)], range(8)))
    tokens = [token for batch in batches for token in batch]
    assert len(set(tokens)) == len(tokens) == 16_000


pans = st.integers(min_value=12, max_value=19).flatmap(
    lambda n: st.text("0123456789", min_size=n - 1, max_size=n - 1).map(luhn_complete)
)


@given(pans)
def test_numeric_token_shape(pan: str) -> None:
    token = new_numeric_token(pan)
    assert len(token) == len(pan)
    assert token.isascii() and token.isdigit()
    assert not luhn_valid(token), "a numeric token must never pass for a PAN"
    assert not is_valid_pan(token)
    assert token[-4:] == pan[-4:]
    assert token != pan
    assert is_token_id(token)


@pytest.mark.parametrize("length", [15, 16, 19])
def test_numeric_token_keeps_bin6_when_enough_digits_stay_hidden(length: int) -> None:
    pan = random_pan("411111", length)
    for _ in range(200):
        token = new_numeric_token(pan)
        assert token[:6] == "411111"
        assert token[-4:] == pan[-4:]


@pytest.mark.parametrize("length", [12, 13, 14])
def test_short_pans_keep_last4_only(length: int) -> None:
    # BIN6 + last 4 of a 12-digit PAN would leave 2 unknown digits, 1 in 10 with Luhn: no.
    pan = random_pan("411111", length)
    middles = {new_numeric_token(pan)[:-4] for _ in range(200)}
    assert len(middles) > 150
    assert not all(m.startswith("411111") for m in middles)


def test_numeric_token_middle_is_random() -> None:
    pan = random_pan("424242", 16)
    tokens = {new_numeric_token(pan) for _ in range(500)}
    assert len(tokens) > 490  # 6 random digits: ~1e6 values


def test_luhn_nudge_happens() -> None:
    # About 1 draw in 10 passes Luhn before the nudge; across many draws none may remain.
    pan = random_pan("555555", 16)
    assert not any(luhn_valid(new_numeric_token(pan)) for _ in range(2_000))


def test_is_token_id_rejects_pans_and_junk() -> None:
    assert not is_token_id(random_pan())
    assert not is_token_id("tok_short")
    assert not is_token_id("tok_" + "a" * 23 + "!")
    assert not is_token_id("٤" * 16)  # Arabic-Indic digits are not digits here
    assert not is_token_id(None)
    assert not is_token_id(12345678901234)


def test_new_token_dispatches_on_format() -> None:
    pan = random_pan()
    assert new_token("opaque", pan).startswith("tok_")
    numeric = new_token("numeric", pan)
    assert len(numeric) == len(pan) and not luhn_valid(numeric)
    assert secrets.compare_digest(numeric[-4:], pan[-4:])
