"""Cassettes: recorded provider exchanges, scrubbed, replayed through respx.

Record by running a connector against its simulator or sandbox with a ``TranscriptRecorder``
(every exchange in it is already scrubbed: card data masked, credentials redacted), then::

    Cassette.from_transcript(transcript).save(Path("cassettes/authorize_approved.json"))

Replay in a test by giving the runtime the cassette's transport; the runtime's egress transport
(host policy, detokenization) still runs, only the network is replaced::

    cassette = Cassette.load(Path("cassettes/authorize_approved.json"))
    runtime = ConnectorRuntime(
        connector, revealer=FakeTokenRevealer(), transport=cassette.transport()
    )

Requests are matched by method and URL path, in recorded order per route. The origin (scheme,
host, port) and the query are not compared: a cassette recorded against a simulator on a random
loopback port replays with the connector pointed at any base URL (another port, another host,
``http://replay.invalid``), as long as it sends the same paths. A request with no recorded
answer fails the test with ``CassetteMismatchError``. Saving scrubs the text once more and
refuses to write anything that still looks like a PAN.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import respx

from sdk.scrubbing import Scrubber
from sdk.transcript import TranscriptRecorder

__all__ = ["Cassette", "CassetteMismatchError", "Interaction"]

_DROPPED_RESPONSE_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "content-encoding", "connection", "date", "server"}
)


class CassetteMismatchError(BaseException):
    """A replayed request has no recorded answer.

    A ``BaseException`` (like pytest's own outcomes) on purpose: the runtime turns ordinary
    exceptions raised after a request went out into an ``unknown`` outcome, which would hide a
    stale cassette; this one must fail the test instead.
    """


@dataclass(frozen=True, slots=True)
class Interaction:
    method: str
    url: str
    request_headers: dict[str, str]
    request_body: str
    status_code: int
    response_headers: dict[str, str]
    response_body: str


@dataclass
class Cassette:
    interactions: list[Interaction] = field(default_factory=list)

    @classmethod
    def from_transcript(cls, transcript: TranscriptRecorder) -> Cassette:
        """Every completed exchange of ``transcript`` (failed ones cannot be replayed)."""
        interactions = [
            Interaction(
                method=e.method,
                url=e.url,
                request_headers=dict(e.request_headers),
                request_body=e.request_body,
                status_code=e.status_code,
                response_headers={
                    k: v
                    for k, v in e.response_headers
                    if k.lower() not in _DROPPED_RESPONSE_HEADERS
                },
                response_body=e.response_body,
            )
            for e in transcript.exchanges
            if e.status_code is not None
        ]
        return cls(interactions)

    def to_json(self, scrubber: Scrubber | None = None) -> str:
        scrubber = scrubber or Scrubber()
        text = json.dumps({"interactions": [asdict(i) for i in self.interactions]}, indent=2)
        scrubbed = scrubber.scrub_text(text)
        if scrubbed != text:
            # The transcript should already be clean; a difference means something slipped in.
            raise ValueError("The cassette still contained card data or secrets; not saved.")
        return text

    def save(self, path: Path, scrubber: Scrubber | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(scrubber) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Cassette:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return cls([Interaction(**item) for item in data["interactions"]])

    def router(self) -> respx.Router:
        """A respx router answering each (method, path) with its recorded responses in order.

        Routes match on the method and the URL path only, never on the origin the recording
        happened to reach (see the module docstring)."""
        router = respx.Router(assert_all_called=False, assert_all_mocked=True)
        by_route: dict[tuple[str, str], list[httpx.Response]] = {}
        for interaction in self.interactions:
            route = (interaction.method.upper(), _path(httpx.URL(interaction.url)))
            by_route.setdefault(route, []).append(
                httpx.Response(
                    interaction.status_code,
                    headers=interaction.response_headers,
                    content=interaction.response_body.encode("utf-8"),
                )
            )
        for (method, path), responses in by_route.items():
            router.route(method=method, path=path).mock(
                side_effect=_in_order(method, path, responses)
            )
        return router

    def transport(self) -> httpx.MockTransport:
        """An httpx transport replaying this cassette (pass it as the runtime's ``transport``)."""
        router = self.router()

        async def handle(request: httpx.Request) -> httpx.Response:
            try:
                return await router.async_handler(request)
            except (respx.models.AllMockedAssertionError, StopIteration) as exc:
                raise CassetteMismatchError(
                    f"No recorded answer for {request.method} {_path(request.url)}."
                ) from exc

        return httpx.MockTransport(handle)


def _path(url: httpx.URL) -> str:
    """What a request is matched on besides its method: the path, without origin and query."""
    return url.path or "/"


def _in_order(method: str, path: str, responses: list[httpx.Response]) -> Any:
    remaining = list(responses)

    def answer(request: httpx.Request) -> httpx.Response:
        if not remaining:
            raise CassetteMismatchError(f"The cassette has no more answers for {method} {path}.")
        return remaining.pop(0)

    return answer
