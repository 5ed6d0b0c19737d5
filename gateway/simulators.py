"""Provider simulators, found like connectors: through the ``tessera.simulators`` entry points.

A connector package may register a factory returning an ``aiohttp.web.Application`` that imitates
its provider on loopback (the sandbox connector does). ``tessera dev`` starts the sandbox one so a
newcomer can pay within a minute; the conformance kit starts them in simulator mode.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from aiohttp import web

from normalization.errors import NotSupportedError

__all__ = ["GROUP", "load_simulator"]

GROUP = "tessera.simulators"


def load_simulator(connector_id: str) -> Callable[..., web.Application]:
    """The simulator factory registered for ``connector_id``."""
    for ep in entry_points(group=GROUP):
        if ep.name == connector_id:
            factory: Any = ep.load()
            if not callable(factory):
                raise NotSupportedError(f"Simulator entry point {ep.value!r} is not callable.")
            return factory  # type: ignore[no-any-return]
    raise NotSupportedError(f"No simulator is installed for connector {connector_id!r}.")
