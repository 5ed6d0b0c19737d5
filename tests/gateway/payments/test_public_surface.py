"""The curated public surfaces stay honest: everything in ``__all__`` exists, and every public
class or function the submodules export is reachable from the package."""

from __future__ import annotations

import importlib

import pytest

import gateway.client
import gateway.payments

_SUBMODULES = ["backoff", "idempotency", "outbox", "records", "signatures", "store"]
# Helpers the submodules share among themselves; not part of the package's surface.
_INTERNAL = {"contains_pan", "new_id", "verify_signature"}


@pytest.mark.parametrize("module", [gateway.payments, gateway.client])
def test_all_names_exist_once(module: object) -> None:
    names = module.__all__  # type: ignore[attr-defined]
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(module, name) is not None


@pytest.mark.parametrize("name", _SUBMODULES)
def test_submodule_exports_reach_the_package(name: str) -> None:
    module = importlib.import_module(f"gateway.payments.{name}")
    missing = set(module.__all__) - set(gateway.payments.__all__) - _INTERNAL
    assert not missing, f"gateway.payments.{name} exports {sorted(missing)} the package hides"
