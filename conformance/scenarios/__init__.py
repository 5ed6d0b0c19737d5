"""The scenario catalogue: templates with baseline expectations, by profile.

| module | holds |
| --- | --- |
| ``model`` | ``Scenario``, ``Requirement``, the ``scenario`` decorator, ``CATALOGUE`` |
| ``card`` | card-acquirer: authorize, declines, 3-D Secure, capture, void, refund, sync, verify, |
|          | idempotent replay, currencies, unsupported input, the inline-card leak probe |
| ``bank`` | bank-rail: credit, debit, pending -> settled, returns, invalid accounts, resubmission |
| ``openbanking`` | open-banking: consent, redirect, authorization, submission, rejection, expiry |
| ``faults`` | every profile, with the fault proxy: outcome certainty, retries, breaker, bulkhead |
| ``webhooks`` | every profile declaring webhooks: verification, tampering, staleness, duplicates, |
|              | order |
| ``flows`` | the request builders and first call each profile's scenarios share |
| ``wire`` | the amount on the wire: whether a call's requests carried its amount exactly |

Importing this package registers every scenario.
"""

from conformance.scenarios import bank, card, faults, openbanking, webhooks
from conformance.scenarios.model import (
    CATALOGUE,
    Requirement,
    Scenario,
    ScenarioInstance,
    expand,
    scenario,
)
from sdk import Category

__all__ = [
    "CATALOGUE",
    "Requirement",
    "Scenario",
    "ScenarioInstance",
    "all_scenario_ids",
    "expand",
    "profile_scenarios",
    "scenario",
]

_MODULES = (bank, card, faults, openbanking, webhooks)


def profile_scenarios(profile: Category) -> list[Scenario]:
    return list(CATALOGUE[profile])


def all_scenario_ids() -> frozenset[str]:
    return frozenset(item.id for scenarios in CATALOGUE.values() for item in scenarios)
