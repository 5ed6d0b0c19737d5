"""Bank-rail and open-banking connectors for gateway tests: the generator's own templates.

``tessera new connector`` renders a bank-rail connector (debit, credit, sync) and an
open-banking one (create_consent, complete_authorization, submit, sync), each with a stateful
loopback simulator, and both pass the conformance kit as generated: the contract connectors are
certified against. Rendered once per test session into a temporary directory, imported from
there and registered in-process (``sdk.register_connector``) for the test that asks.

``Faults`` lets a test lose the open-banking simulator's answer to ``submit`` (reset after the
payment was made) or reset the connection before the simulator sees the request.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from aiohttp import web

# The sandbox simulator's own reset (RST, no reply), for the same faults.
from connectors.sandbox.server import _reset_connection as _reset
from sdk.generator import generate_connector

__all__ = [
    "BANK_RAIL",
    "OPEN_BANKING",
    "Faults",
    "Rail",
    "connector_settings",
    "render_rails",
]

BANK_RAIL = "tgw_bankrail"
OPEN_BANKING = "tgw_openbank"

_CATEGORIES = {BANK_RAIL: "bank-rail", OPEN_BANKING: "open-banking"}


@dataclass(frozen=True)
class Rail:
    """One rendered connector: its class and its simulator module."""

    connector: type[Any]
    simulator: ModuleType


def render_rails(directory: Path) -> dict[str, Rail]:
    """Render and import both connectors (once per process: later calls reuse the import)."""
    rails: dict[str, Rail] = {}
    for slug, category in _CATEGORIES.items():
        package = f"tessera_{slug}"
        if package not in sys.modules:
            package_dir = generate_connector(slug, category, directory)
            sys.path.insert(0, str(package_dir.parent))
        module = importlib.import_module(f"{package}.connector")
        simulator = importlib.import_module(f"{package}.simulator")
        cls = next(
            v
            for v in vars(module).values()
            if isinstance(v, type) and getattr(v, "manifest", None) is module.MANIFEST
        )
        rails[slug] = Rail(cls, simulator)
    return rails


def connector_settings(rail: Rail, server: Any, **overrides: Any) -> dict[str, Any]:
    """A ``[connectors.<id>]`` section pointing at ``server`` (a test server of its simulator)."""
    return {
        "base_url": str(server.make_url("")).rstrip("/"),
        "test_mode": True,
        "credentials": {"api_key": rail.simulator.API_KEY},
        "deadline_seconds": 2.0,
        **overrides,
    }


@dataclass
class Faults:
    """Faults on the open-banking simulator's ``POST /v1/payments`` (submit), each once.

    ``lose_submit_answer``: the payment is made, then the connection is reset (the gateway
    cannot know whether it was). ``reset_before_submit``: reset before the simulator sees it.
    ``lose_authorization_answer``: the consent is authorized (``complete_authorization``), then
    the connection is reset.
    ``submit_keys`` records the idempotency key of every submit that reached the simulator.
    """

    lose_submit_answer: bool = False
    reset_before_submit: bool = False
    lose_authorization_answer: bool = False
    #: Awaited once the consent is authorized, before the answer goes back (then cleared): what
    #: happens while that answer is on its way.
    before_authorization_answer: Callable[[], Awaitable[None]] | None = None
    submit_keys: list[str] = field(default_factory=list)

    def install(self, app: web.Application) -> web.Application:
        """Add the faults to a simulator app (inside its own middleware)."""
        app.middlewares.append(self._middleware)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        submit = request.method == "POST" and request.path == "/v1/payments"
        if submit and self.reset_before_submit:
            self.reset_before_submit = False
            _reset(request)
            return web.Response(status=204)  # never written: the transport is gone
        if submit:
            self.submit_keys.append(request.headers.get("x-idempotency-key", ""))
        response: web.StreamResponse = await handler(request)
        if submit and self.lose_submit_answer:
            self.lose_submit_answer = False
            _reset(request)
        authorization = request.method == "POST" and request.path.endswith("/authorize")
        if authorization and self.before_authorization_answer is not None:
            hook, self.before_authorization_answer = self.before_authorization_answer, None
            await hook()
        if authorization and self.lose_authorization_answer:
            self.lose_authorization_answer = False
            _reset(request)
        return response
