"""Connector plugins for the registry isolation tests: a second class under the demo's id, and
attributes whose lookup fails the ways importing a third-party plugin can (through the module's
``__getattr__``, which ``EntryPoint.load()`` reaches after importing the module)."""

from __future__ import annotations

from tests.sdk.demo_connector import DemoConnector

#: A Luhn-valid test card number quoted in a plugin's error: reasons must mask it.
CARD_IN_ERROR = "4111111111111111"


class TwinDemoConnector(DemoConnector):
    """Another class claiming the demo's id, as a second package shipping ``demo`` would."""


def __getattr__(name: str) -> object:
    if name == "Exits":
        raise SystemExit("plugin called sys.exit() while importing")
    if name == "Crashes":
        raise RuntimeError(f"settings file missing;\n  the sample card was {CARD_IN_ERROR}")
    raise AttributeError(name)
