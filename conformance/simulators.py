"""Provider simulators: found through the ``tessera.simulators`` entry points, started on loopback.

A connector package that ships a simulator registers a factory returning an
``aiohttp.web.Application``, under the connector's id::

    [project.entry-points."tessera.simulators"]
    sandbox = "connectors.sandbox.server:create_app"

``find_simulator(id)`` returns the factory (programmatic registrations first, for tests:
``register_simulator``); ``start_simulator`` calls it with the keyword options it accepts (the
sandbox profile's ``simulator`` table, and ``webhook_url`` when the kit listens for webhooks)
and serves it on 127.0.0.1 on a free port.
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from aiohttp import web

__all__ = [
    "SIMULATOR_GROUP",
    "RunningSimulator",
    "SimulatorFactory",
    "bound_port",
    "find_simulator",
    "register_simulator",
    "start_simulator",
    "unregister_simulator",
]

SIMULATOR_GROUP = "tessera.simulators"

SimulatorFactory = Callable[..., web.Application]

_REGISTERED: dict[str, SimulatorFactory] = {}


def register_simulator(connector_id: str, factory: SimulatorFactory) -> None:
    """Register a simulator without packaging it (tests, embedding)."""
    _REGISTERED[connector_id] = factory


def unregister_simulator(connector_id: str) -> None:
    _REGISTERED.pop(connector_id, None)


def find_simulator(connector_id: str) -> SimulatorFactory | None:
    if connector_id in _REGISTERED:
        return _REGISTERED[connector_id]
    for entry_point in entry_points(group=SIMULATOR_GROUP, name=connector_id):
        loaded = entry_point.load()
        if not callable(loaded):
            raise TypeError(
                f"Simulator entry point {entry_point.name} = {entry_point.value} is not callable."
            )
        factory: SimulatorFactory = loaded
        return factory
    return None


def accepts(factory: SimulatorFactory, name: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


@dataclass
class RunningSimulator:
    runner: web.AppRunner
    host: str
    port: int
    delivers_webhooks: bool

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_simulator(
    factory: SimulatorFactory,
    options: Mapping[str, Any] | None = None,
    *,
    webhook_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> RunningSimulator:
    """Build the app with the options the factory accepts and serve it on ``host`` (loopback)
    and ``port`` (0: a free one)."""
    kwargs = {k: v for k, v in (options or {}).items() if accepts(factory, k)}
    delivers = webhook_url is not None and accepts(factory, "webhook_url")
    if delivers:
        kwargs["webhook_url"] = webhook_url
    app = factory(**kwargs)
    if not isinstance(app, web.Application):
        raise TypeError("A simulator factory must return an aiohttp.web.Application.")
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return RunningSimulator(runner, host, bound_port(site), delivers)


def bound_port(site: web.TCPSite) -> int:
    """The port a site bound (port 0 asked for a free one)."""
    # aiohttp exposes the bound port only through the underlying server's sockets.
    sockets: Sequence[socket.socket] = getattr(site._server, "sockets", None) or ()
    if not sockets:
        raise RuntimeError("The site is not listening.")
    return int(sockets[0].getsockname()[1])
