"""``conformance``'s public surface is what ``__all__`` says, and loading the pytest plugin (which
every pytest session of the project does) or the CLI's parser (which every ``tessera`` command
builds) does not load the kit's runner."""

from __future__ import annotations

import ast
import subprocess
import sys

import conformance


def test_every_public_name_resolves() -> None:
    assert sorted(conformance.__all__) == conformance.__all__
    for name in conformance.__all__:
        assert getattr(conformance, name) is not None, name
    assert dir(conformance) == conformance.__all__


def _loaded_after(module: str) -> list[str]:
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in sys.modules if m.startswith(('conformance.', 'openapi_core'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded: list[str] = ast.literal_eval(out.strip())
    return loaded


def test_the_plugin_and_the_cli_parser_do_not_import_the_runner() -> None:
    assert _loaded_after("conformance.pytest_plugin") == ["conformance.pytest_plugin"]
    loaded = _loaded_after("conformance.cli")
    assert "conformance.runner" not in loaded and "openapi_core" not in loaded
