"""Card data through the production log pipeline (``gateway.observability.configure_logging``).

The canary sweep (``tests/gateway/test_canary_sweep.py``) drives the running gateway and checks
what it happened to log. These tests feed the redaction layer what other code could hand it:
stdlib records carrying an exception (``exc_info``, as ``aiohttp.server`` and asyncio's
"Task exception was never retrieved" do), structlog values that are not strings (bytes, floats,
sets, dict keys, arbitrary objects: JSONRenderer would ``repr`` them past the redaction), a
security code next to its key in a message, pydantic error texts quoting their input, and
``warnings.warn`` messages (printed to stderr, past every handler, unless captured).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pydantic
import pytest
import structlog

from gateway.observability import configure_logging, redact_text
from normalization import mask_pan
from tests.vault.canary import Canary, find_leaks

#: Luhn-valid, distinctive; the CVV is no year, amount or port.
CANARY = Canary(pan="4000056655665556", cvc="7391")
PAN, CVV = CANARY.pan, CANARY.cvc
SPACED = "4000 0566 5566 5556"


@pytest.fixture
def production_log() -> Iterator[io.StringIO]:
    """The production configuration, at DEBUG, into a buffer; everything restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_structlog = structlog.get_config()
    saved_showwarning = warnings.showwarning
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    stream = io.StringIO()
    configure_logging("DEBUG", stream=stream)
    try:
        yield stream
    finally:
        logging.captureWarnings(False)
        warnings.showwarning = saved_showwarning
        structlog.configure(**saved_structlog)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def _assert_clean(stream: io.StringIO) -> str:
    text = stream.getvalue()
    assert text, "nothing was logged: the capture is not wired"
    leaks = find_leaks(text, CANARY)
    assert not leaks, f"{leaks} in {text.replace(PAN, '<PAN>')[:2000]}"
    return text


def _raise(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


# -- stdlib records with an exception -------------------------------------------------------------


@pytest.mark.parametrize(
    "logger_name", ["aiohttp.server", "aiohttp.web", "tessera.gateway.idempotency", "thirdparty"]
)
def test_stdlib_exception_text_is_redacted_and_the_traceback_kept(
    production_log: io.StringIO, logger_name: str
) -> None:
    logger = logging.getLogger(logger_name)
    try:
        int(f"{PAN}x")  # ValueError: invalid literal for int() with base 10: '<PAN>x'
    except ValueError:
        logger.exception("Error handling request")
    text = _assert_clean(production_log)
    [line] = _lines(production_log)
    assert line["event"] == "Error handling request"
    # The traceback is rendered (operators need it), with the number masked.
    assert "Traceback (most recent call last)" in line["exception"]
    assert mask_pan(PAN) in line["exception"]
    assert "exc_info" not in line, text


def test_exception_chains_are_redacted(production_log: io.StringIO) -> None:
    """``__cause__`` and ``__context__`` are rendered too: each is redacted."""
    logger = logging.getLogger("tessera.gateway.notifications")
    try:
        try:
            b"\xff" + SPACED.encode() + b"\xfe"
            raise KeyError(f"card {SPACED}")
        except KeyError as inner:
            raise RuntimeError(f"while handling {PAN}") from inner
    except RuntimeError as outer:
        logger.error("notification bookkeeping failed", exc_info=outer)
    text = _assert_clean(production_log)
    assert "direct cause" in text


def test_asyncio_unretrieved_task_exception_is_redacted(production_log: io.StringIO) -> None:
    """asyncio's default handler logs the exception (``exc_info``) and the task's repr."""

    async def boom() -> None:
        raise ValueError(f"declined {PAN}")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(boom())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert task.done()
        loop.call_exception_handler(
            {
                "message": "Task exception was never retrieved",
                "exception": task.exception(),
                "future": task,
            }
        )

    asyncio.run(main())
    _assert_clean(production_log)
    assert "Task exception was never retrieved" in production_log.getvalue()


def test_unicode_decode_error_holding_the_raw_body_is_redacted(
    production_log: io.StringIO,
) -> None:
    """A UnicodeDecodeError's repr holds the undecodable bytes: a request body, card and all."""
    body = b'{"card": {"number": "' + PAN.encode() + b'", "cvc": "' + CVV.encode() + b'"}}\xff'
    error = _raise(UnicodeDecodeError("utf-8", body, len(body) - 1, len(body), "invalid"))
    logging.getLogger("aiohttp.server").error("bad body", exc_info=error)
    logging.getLogger("aiohttp.server").error("bad body %r", error)
    _assert_clean(production_log)


# -- structlog values that are not strings ------------------------------------------------------


@dataclass
class _Leaky:
    number: str

    def __repr__(self) -> str:
        return f"_Leaky(number={self.number!r})"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(PAN.encode(), id="bytes"),
        pytest.param(bytearray(SPACED.encode()), id="bytearray"),
        pytest.param(float(PAN), id="float"),
        pytest.param({PAN}, id="set"),
        pytest.param(frozenset({SPACED}), id="frozenset"),
        pytest.param({PAN: "x"}, id="dict-key"),
        pytest.param({int(PAN): "x"}, id="int-dict-key"),
        pytest.param((("nested", [{"deep": {PAN}}]),), id="nested"),
        pytest.param(_Leaky(PAN), id="object-repr"),
        pytest.param(ValueError(f"bad {PAN}"), id="exception-object"),
        pytest.param(f"'cvc': '{CVV}'", id="cvv-python-repr"),
        pytest.param({"card": {"cvc": CVV}}, id="cvv-nested-key"),
        pytest.param({"card": {"cvc": int(CVV)}}, id="cvv-int"),
        pytest.param({"payload": {"card[cvc]": CVV}}, id="cvv-form-key"),
        pytest.param({"body": {"card_cvv": CVV, "cardCvc": CVV}}, id="cvv-prefixed-keys"),
    ],
)
def test_structlog_values_of_any_type_are_redacted(
    production_log: io.StringIO, value: object
) -> None:
    structlog.get_logger("tessera.test").info("event", value=value)
    _assert_clean(production_log)


@pytest.mark.parametrize(
    "message",
    [  # ids by position: a test id must not carry the canary into reports
        f"request body {{'card': {{'number': '{PAN}', 'cvc': '{CVV}'}}}}",
        f'{{"card": {{"number": "{PAN}", "cvc": "{CVV}"}}}}',
        f'{{"card": {{"cvc":{CVV}}}}}',
        f"card[number]={PAN}&card[cvc]={CVV}",
        f"card%5Bcvc%5D={CVV}",
        f"provider said: CVC {CVV} does not match",
        f"cvv2: {CVV}",
        f"<cvc>{CVV}</cvc>",
        f"security code {CVV}",
    ],
    ids=lambda _: "",
)
def test_security_codes_next_to_their_name_are_redacted(
    production_log: io.StringIO, message: str
) -> None:
    logging.getLogger("thirdparty").debug(message)
    structlog.get_logger("tessera.test").debug(message)
    _assert_clean(production_log)


def test_pydantic_error_text_quoting_its_input_is_redacted(production_log: io.StringIO) -> None:
    """A model that is not a DomainModel (a third party's, a new view's) quotes its input."""

    class Body(pydantic.BaseModel):
        cvc: int
        name: str

    try:
        Body.model_validate({"cvc": f"{CVV}x", "name": 5})
    except pydantic.ValidationError as exc:
        logging.getLogger("thirdparty").exception("validation failed: %s", exc)
        structlog.get_logger("tessera.test").exception("validation failed", error=str(exc))
    text = _assert_clean(production_log)
    assert "int_parsing" in text


def test_warnings_go_through_the_redaction(
    production_log: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    """pydantic's serializer warns quoting the value ("Expected `str` but got `int` with value
    ..."); printed by ``warnings`` they would bypass every log handler."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # pytest records warnings with a showwarning of its own, set after the fixture ran:
        # configure again, as a process starting up would, with the default one in place.
        logging.captureWarnings(False)
        warnings.showwarning = warnings._showwarning_orig  # type: ignore[attr-defined]
        configure_logging("DEBUG", stream=production_log)
        warnings.warn(f"Expected `str` but got `int` with value `{PAN}`", UserWarning, stacklevel=1)
    out, err = capsys.readouterr()
    assert find_leaks(out + err, CANARY) == []
    _assert_clean(production_log)
    assert "Expected `str`" in production_log.getvalue()


def test_redact_text_masks_other_digit_scripts_and_separators() -> None:
    fullwidth = "".join(chr(0xFF10 + int(d)) for d in PAN)
    for text in (f"x{fullwidth}x", PAN, SPACED, SPACED.replace(" ", "-")):
        assert find_leaks(redact_text(text), CANARY) == [], text
    assert fullwidth not in redact_text(fullwidth)
    # Not card data: left alone.
    assert redact_text("order 1234567890123 of 2031") == "order 1234567890123 of 2031"
    assert redact_text("took 7391 ms") == "took 7391 ms"
