"""The pytest plugin, tested with ``pytester``: the same scenarios as parametrized items, failures
shown with their assertions, coverage and leak-scan items, and nothing added without
``--tessera-connector``."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

_INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""

_BROKEN_CONFTEST = """
import json
from pathlib import Path

from conformance.sandboxes import BUILTIN_DIR
from conformance.simulators import register_simulator
from connectors.sandbox import MANIFEST, SandboxConnector
from connectors.sandbox.server import create_app
from normalization import PaymentStatus
from sdk import register_connector


@register_connector
class WrongStatus(SandboxConnector):
    manifest = MANIFEST.model_copy(update={"id": "plugin_broken", "display_name": "Broken"})

    async def authorize(self, request, ctx):
        result = await super().authorize(request, ctx)
        if result.status is PaymentStatus.AUTHORIZED:
            return result.model_copy(update={"status": PaymentStatus.CAPTURED})
        return result


register_simulator("plugin_broken", create_app)
profile = json.loads((BUILTIN_DIR / "sandbox" / "simulator.json").read_text())
profile["connector"] = "plugin_broken"
Path(__file__).with_name("broken.json").write_text(json.dumps(profile))
"""


def test_the_sandbox_scenarios_run_as_items_and_pass(pytester: pytest.Pytester) -> None:
    pytester.makeini(_INI)
    pytester.makepyfile(test_other="def test_not_collected():\n    assert False\n")
    result = pytester.runpytest_subprocess(
        "--tessera-connector",
        "sandbox",
        "--tessera-mode",
        "simulator",
        "-v",
        "-p",
        "no:cacheprovider",
    )
    # 43 scenarios (eight of them decline codes the sandbox profile opts into), coverage, leaks.
    result.assert_outcomes(passed=45, skipped=18)
    result.stdout.fnmatch_lines(
        [
            "*conformance[[]sandbox:card.authorize.approved[]] PASSED*",
            "*conformance[[]sandbox:card.authorize.declined[[]insufficient_funds[]][]] PASSED*",
            "*conformance[[]sandbox:fault.breaker[]] SKIPPED*",
            "*conformance[[]sandbox:coverage[]] PASSED*",
            "*conformance[[]sandbox:leak-scan[]] PASSED*",
        ]
    )
    assert "test_not_collected" not in result.stdout.str()  # only the conformance items ran


def test_a_broken_connector_fails_its_item_with_the_assertion(pytester: pytest.Pytester) -> None:
    pytester.makeini(_INI)
    pytester.makeconftest(_BROKEN_CONFTEST)
    result = pytester.runpytest_subprocess(
        "--tessera-connector",
        "plugin_broken",
        "--tessera-overrides",
        "broken.json",
        "-k",
        "authorize.approved or declined",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(failed=1, passed=12)  # the sandbox profile names 12 decline codes
    result.stdout.fnmatch_lines(
        [
            '*card.authorize.approved: authorize.status: expected "authorized", got "captured"*',
            '*assertion authorize.status: expected "authorized", got "captured"*',
            "*exchange authorize: POST http://127.0.0.1:*/v1/authorizations -> 201*",
            "FAILED *conformance[[]plugin_broken:card.authorize.approved[]]*",
        ]
    )


def test_without_the_option_the_plugin_adds_nothing(pytester: pytest.Pytester) -> None:
    pytester.makeini(_INI)
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*conformance*")
