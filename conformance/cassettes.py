"""Scenario cassettes: one recorded, scrubbed file per scenario instance, for replay mode.

A simulator run with ``--record`` saves, for every scenario that passed, what crossed the wire:
the runtime's transcript (already scrubbed by the SDK), the kit's own customer-side requests (a
3-D Secure challenge, a bank consent page) and the webhooks the simulator delivered, with the
time each arrived. The simulator's loopback address is replaced by ``REPLAY_BASE`` everywhere
(URLs, bodies, ``Location`` headers), so a replay is the same whatever port recorded it.

Files are ``<dir>/<instance id>.json``; the interactions use ``sdk.testing.Cassette``'s format,
whose ``to_json`` refuses to write anything that still looks like a PAN. Replay serves each
scenario from its own file through ``Cassette.transport()``: a request the recording does not
have fails that scenario (``CassetteMismatchError``), it never reaches a network.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from conformance.webhook_faults import delivery_from_json, delivery_to_json
from sdk import TranscriptRecorder, WebhookRequest
from sdk.testing.cassettes import Cassette, Interaction

__all__ = ["BUILTIN_CASSETTES", "REPLAY_BASE", "CassetteStore", "Recording"]

REPLAY_BASE = "http://replay.invalid"
BUILTIN_CASSETTES = Path(__file__).with_name("cassettes")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class Recording:
    """What one scenario instance's replay is served from."""

    cassette: Cassette
    webhooks: list[WebhookRequest] = field(default_factory=list)
    _transport: httpx.AsyncBaseTransport | None = None

    def transport(self) -> httpx.AsyncBaseTransport:
        """One transport per scenario: every runtime and the customer client share its answers."""
        if self._transport is None:
            self._transport = self.cassette.transport()
        return self._transport


class CassetteStore:
    """Reads and writes scenario cassettes in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, instance_id: str) -> Path:
        return self.directory / f"{_UNSAFE.sub('_', instance_id).strip('_')}.json"

    def exists(self, instance_id: str) -> bool:
        return self.path(instance_id).is_file()

    def load(self, instance_id: str) -> Recording | None:
        path = self.path(instance_id)
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        cassette = Cassette([Interaction(**item) for item in data["interactions"]])
        webhooks = [delivery_from_json(item) for item in data.get("webhooks", [])]
        return Recording(cassette, webhooks)

    def save(
        self,
        instance_id: str,
        transcript: TranscriptRecorder,
        *,
        customer: list[Interaction],
        webhooks: list[WebhookRequest],
        base_url: str,
    ) -> Path:
        netloc, replay_netloc = urlsplit(base_url).netloc, urlsplit(REPLAY_BASE).netloc

        def rebase(text: str) -> str:
            return text.replace(base_url, REPLAY_BASE).replace(netloc, replay_netloc)

        interactions = [
            replace(
                interaction,
                url=rebase(interaction.url),
                request_body=rebase(interaction.request_body),
                response_body=rebase(interaction.response_body),
                request_headers={k: rebase(v) for k, v in interaction.request_headers.items()},
                response_headers={k: rebase(v) for k, v in interaction.response_headers.items()},
            )
            for interaction in [*Cassette.from_transcript(transcript).interactions, *customer]
        ]
        data = json.loads(Cassette(interactions).to_json())
        data["webhooks"] = [delivery_to_json(delivery) for delivery in webhooks]
        path = self.path(instance_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path
