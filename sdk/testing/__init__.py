"""Testing helpers for connector authors: a fake ``TokenRevealer`` and canary cards, cassette
record/replay on respx with automatic scrubbing, and fault injection for every outcome class.

These are for tests and simulators only; nothing on the request path imports them.
"""

from sdk.testing.cassettes import Cassette, CassetteMismatchError, Interaction
from sdk.testing.faults import Fault, FaultInjector, InjectedFault
from sdk.testing.revealer import FakeTokenRevealer, canary_cvc, canary_pan

__all__ = [
    "Cassette",
    "CassetteMismatchError",
    "FakeTokenRevealer",
    "Fault",
    "FaultInjector",
    "InjectedFault",
    "Interaction",
    "canary_cvc",
    "canary_pan",
]
