"""The CVV holder: consumed once, expires, bounded, never pickled or shown."""

from __future__ import annotations

import copy
import pickle

import pytest

from normalization import CardSecurityCode
from vault.cvv import CvvHolder


class Ticker:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_take_consumes_once() -> None:
    holder = CvvHolder()
    holder.put("t1", "tok_a", CardSecurityCode("123"))
    assert holder.holds("t1", "tok_a")
    first = holder.take("t1", "tok_a")
    assert first is not None and first.reveal() == "123"
    assert holder.take("t1", "tok_a") is None
    assert not holder.holds("t1", "tok_a")


def test_tenants_are_separate() -> None:
    holder = CvvHolder()
    holder.put("t1", "tok_a", CardSecurityCode("123"))
    assert holder.take("t2", "tok_a") is None
    assert holder.take("t1", "tok_a") is not None


def test_expires_after_ttl_and_is_swept() -> None:
    ticker = Ticker()
    holder = CvvHolder(ttl_seconds=600, monotonic=ticker)
    holder.put("t1", "tok_a", CardSecurityCode("123"))
    ticker.now += 300
    holder.put("t1", "tok_b", CardSecurityCode("456"))
    ticker.now += 301  # tok_a is 601 s old, tok_b 301 s
    assert holder.take("t1", "tok_a") is None
    assert len(holder) == 1  # the sweep on take dropped tok_a
    assert holder.holds("t1", "tok_b")
    ticker.now += 300
    assert holder.sweep() == 1
    assert len(holder) == 0


def test_replacing_refreshes_the_deadline() -> None:
    ticker = Ticker()
    holder = CvvHolder(ttl_seconds=10, monotonic=ticker)
    holder.put("t1", "tok_a", CardSecurityCode("123"))
    holder.put("t1", "tok_b", CardSecurityCode("456"))
    ticker.now += 5
    holder.put("t1", "tok_a", CardSecurityCode("789"))
    ticker.now += 6  # tok_b expired, tok_a (replaced at +5) still fresh
    assert holder.sweep() == 1
    taken = holder.take("t1", "tok_a")
    assert taken is not None and taken.reveal() == "789"


def test_bounded_drops_oldest() -> None:
    holder = CvvHolder(max_entries=3)
    for index in range(5):
        holder.put("t1", f"tok_{index}", CardSecurityCode("123"))
    assert len(holder) == 3
    assert holder.take("t1", "tok_0") is None
    assert holder.take("t1", "tok_1") is None
    assert holder.take("t1", "tok_4") is not None


def test_discard() -> None:
    holder = CvvHolder()
    holder.put("t1", "tok_a", CardSecurityCode("123"))
    holder.discard("t1", "tok_a")
    holder.discard("t1", "tok_missing")
    assert holder.take("t1", "tok_a") is None


def test_never_pickled_copied_or_shown() -> None:
    holder = CvvHolder()
    holder.put("t1", "tok_a", CardSecurityCode("987"))
    with pytest.raises(TypeError):
        pickle.dumps(holder)
    with pytest.raises(TypeError):
        copy.deepcopy(holder)
    assert "987" not in repr(holder)
    assert "987" not in str(holder)


def test_rejects_nonsense_configuration() -> None:
    with pytest.raises(ValueError):
        CvvHolder(ttl_seconds=0)
    with pytest.raises(ValueError):
        CvvHolder(max_entries=0)
