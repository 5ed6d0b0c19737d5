"""The conformance kit's pytest plugin (``pytest11`` entry point ``tessera_conformance``).

``pytest --tessera-connector NAME [--tessera-mode simulator|replay|live]`` runs the kit's
scenarios for that connector. Without ``--tessera-connector`` the plugin adds nothing.
"""

from __future__ import annotations

import pytest

MODES = ("simulator", "replay", "live")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tessera", "Tessera connector conformance")
    group.addoption(
        "--tessera-connector",
        action="append",
        default=[],
        metavar="NAME",
        help="Run the conformance scenarios for this connector (repeatable).",
    )
    group.addoption(
        "--tessera-mode",
        choices=MODES,
        default="simulator",
        help="Where the provider is: the kit's simulator, recorded cassettes, or a live sandbox.",
    )
    group.addoption(
        "--tessera-profile",
        default=None,
        metavar="PROFILE",
        help="Scenario profile (card-acquirer, bank-rail, open-banking); default: the manifest's.",
    )
