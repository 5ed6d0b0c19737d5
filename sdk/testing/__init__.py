"""Testing helpers for connector authors: a fake ``TokenRevealer`` and canary cards, cassette
record/replay on respx with automatic scrubbing, and fault injection for every outcome class.

These are for tests and simulators only; nothing on the request path imports them.
"""

from sdk.testing.revealer import FakeTokenRevealer, canary_cvc, canary_pan

__all__ = ["FakeTokenRevealer", "canary_cvc", "canary_pan"]
