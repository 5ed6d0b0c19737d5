"""stdlib log records keep their ``extra=`` fields, redacted like everything else.

``configure_logging`` renders stdlib records (aiohttp, asyncio, the outbox's "notification
delivery failed") through structlog's ``ProcessorFormatter``; without ``ExtraAdder`` in its
pre-chain their ``extra=`` fields were dropped, so the line said a delivery failed but not which
event, after how many attempts, or with what status. Added before the redaction processor, they
are masked like any other value.
"""

from __future__ import annotations

import io
import logging
import os

import structlog

from normalization import mask_pan
from tests.test_leaks_logging import _lines
from tests.test_leaks_logging import production_log as production_log  # the fixture
from tests.vault.canary import find_leaks, new_canary


def test_extra_fields_of_a_stdlib_record_are_in_the_line(production_log: io.StringIO) -> None:
    logging.getLogger("tessera.outbox").warning(
        "notification delivery failed",
        extra={"event_id": "evt_123", "attempts": 3, "status": 503},
    )
    (line,) = _lines(production_log)
    assert line["event"] == "notification delivery failed"
    assert line["level"] == "warning"
    assert (line["event_id"], line["attempts"], line["status"]) == ("evt_123", 3, 503)
    assert "_record" not in line and "_from_structlog" not in line


def test_card_data_in_extra_fields_is_masked(production_log: io.StringIO) -> None:
    canary = new_canary()
    pan = canary.pan
    logging.getLogger("tessera.test").error(
        "provider said no",
        extra={
            "reply": f"card {pan} declined",
            "number": pan,  # a key that names a secret: blanked
            "payload": {"card": {"pan": pan, "note": f"see {pan}"}, "raw": pan.encode()},
            "cvc": canary.cvc,
        },
    )
    text = production_log.getvalue()
    assert find_leaks(text, canary) == [], text
    (line,) = _lines(production_log)
    assert line["reply"] == f"card {mask_pan(pan)} declined"
    assert line["number"] == "[redacted]"
    assert line["cvc"] == "[redacted]"
    assert line["payload"]["card"]["pan"] == "[redacted]"
    assert line["payload"]["card"]["note"] == f"see {mask_pan(pan)}"


def test_every_line_says_which_process_wrote_it(production_log: io.StringIO) -> None:
    """With several workers the lines interleave on one stderr: each names its process."""
    structlog.get_logger("tessera.test").info("structlog_line")
    logging.getLogger("tessera.test").warning("stdlib line")
    lines = _lines(production_log)
    assert [line["pid"] for line in lines] == [os.getpid(), os.getpid()]
