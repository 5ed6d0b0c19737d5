"""``conformance``'s public surface is what ``__all__`` says, and loading the pytest plugin (which
every pytest session of the project does) does not load the kit."""

from __future__ import annotations

import subprocess
import sys

import conformance


def test_every_public_name_resolves() -> None:
    assert sorted(conformance.__all__) == conformance.__all__
    for name in conformance.__all__:
        assert getattr(conformance, name) is not None, name
    assert dir(conformance) == conformance.__all__


def test_the_plugin_alone_does_not_import_the_kit() -> None:
    code = (
        "import sys, conformance.pytest_plugin; "
        "print(sorted(m for m in sys.modules if m.startswith(('conformance.', 'openapi_core'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['conformance.pytest_plugin']"
