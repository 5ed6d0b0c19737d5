"""``/metrics`` of a gateway with several worker processes reports the whole gateway.

The workers share one listening port (SO_REUSEPORT), so a scrape reaches whichever worker the
kernel picks. Each scrape must still give the same totals: counters summed over the workers
(prometheus-client's multiprocess mode), connector gauges present, and nothing left behind in
the shared directory once the gateway stops.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.server import _shared_metrics_dir

from .procs import Processes, create_merchant, gateway_config, sandbox_section

_REQUESTS = 40
_SCRAPES = 8


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition, or None."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        got = ",".join(sorted((match.group(2) or "").split(",")))
        if got == want:
            return float(match.group(3))
    return None


async def _get(url: str) -> tuple[int, str]:
    # A connection per request, so that SO_REUSEPORT spreads them over the workers.
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text()


@pytest.mark.slow
async def test_every_worker_answers_metrics_for_the_whole_gateway(
    tmp_path: Path, provisioned_vault: Any
) -> None:
    vault = provisioned_vault
    db_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    await create_merchant(db_url, vault.addr, vault.root_token)
    async with Processes(tmp_path) as procs:
        sandbox = await procs.sandbox()
        gateway = await procs.gateway(
            gateway_config(
                database_url=db_url,
                vault_addr=vault.addr,
                vault_token=vault.root_token,
                server={"workers": 2},
                connectors={"sandbox": sandbox_section(sandbox)},
            )
        )
        statuses = await asyncio.gather(*(_get(f"{gateway.url}/healthz") for _ in range(_REQUESTS)))
        assert {status for status, _ in statuses} == {200}
        await asyncio.sleep(1.5)  # the gauges are published every second
        scrapes = [await _get(f"{gateway.url}/metrics") for _ in range(_SCRAPES)]

    healthz = []
    for status, text in scrapes:
        assert status == 200
        count = _sample(
            text, "tessera_http_requests_total", route="/healthz", method="GET", status="200"
        )
        healthz.append(count)
        # Each worker runs its own breaker and bulkhead; the worst / the sum are reported.
        assert _sample(text, "tessera_connector_breaker_state", connector="sandbox") == 0.0
        assert _sample(text, "tessera_connector_bulkhead_in_flight", connector="sandbox") == 0.0
    # ``wait_http`` polled /readyz, not /healthz: exactly our requests, in every scrape.
    assert healthz == [float(_REQUESTS)] * _SCRAPES, healthz


def test_the_shared_directory_is_made_and_removed_unless_the_operator_gave_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with _shared_metrics_dir():
        made = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        assert made.is_dir() and made.name.startswith("tessera-metrics-")
        (made / "counter_1.db").write_bytes(b"x")
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ and not made.exists()

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    (tmp_path / "counter_2.db").write_bytes(b"x")
    with _shared_metrics_dir():
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)
    assert (tmp_path / "counter_2.db").exists()  # theirs to wipe between runs
