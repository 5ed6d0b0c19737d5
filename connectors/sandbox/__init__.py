"""The built-in ``sandbox`` connector and its loopback provider simulator.

- ``connector``: ``SandboxConnector`` and its capability manifest (entry point
  ``tessera.connectors: sandbox``);
- ``transformers``: credentials, wire models, builders, parsers, status and decline maps;
- ``server``: ``create_app()``, the stateful aiohttp simulator (entry point
  ``tessera.simulators: sandbox``), runnable as ``python -m connectors.sandbox.server``;
- ``simulator``: the simulator's in-memory provider state and its magic values;
- ``openapi``: the simulator's API as OpenAPI 3.1, generated from the wire models;
- ``cassettes/``: a recorded, scrubbed card lifecycle for replay mode.

Imports ``sdk`` and ``normalization`` only (the server also uses aiohttp).
"""

from connectors.sandbox.connector import MANIFEST, SandboxConnector

__all__ = ["MANIFEST", "SandboxConnector"]
