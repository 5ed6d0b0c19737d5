"""Provider simulators for the gateway: the ``tessera.simulators`` entry points, as the
conformance kit finds them (``conformance.simulators.find_simulator``).

A connector package may register a factory returning an ``aiohttp.web.Application`` that imitates
its provider on loopback (the sandbox connector does). ``tessera dev`` starts the sandbox one so a
newcomer can pay within a minute, and with ``--connector ID`` that connector's; the conformance
kit starts them in simulator mode.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from conformance.simulators import find_simulator
from normalization.errors import NotSupportedError

__all__ = ["load_simulator"]


def load_simulator(connector_id: str) -> Callable[..., web.Application]:
    """The simulator factory registered for ``connector_id``; ``NotSupportedError`` if none is
    installed (an entry point that fails to import, or names no callable, raises its error)."""
    factory = find_simulator(connector_id)
    if factory is None:
        raise NotSupportedError(f"No simulator is installed for connector {connector_id!r}.")
    return factory
