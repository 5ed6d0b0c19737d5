"""The generated project's ``.gitignore``, judged by git itself: what a connector author's
tools and runs leave behind is ignored, every generated file and every cassette is not."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sdk.generator import GENERATED_FILES, generate_connector

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")

#: What building, testing, running the kit and ``tessera dev`` leave in the project.
LEFT_BEHIND = [
    "tessera_acme/__pycache__/connector.cpython-311.pyc",
    "tests/__pycache__/conftest.cpython-311-pytest-8.3.3.pyc",
    "tessera_connector_acme.egg-info/PKG-INFO",
    "build/lib/tessera_acme/connector.py",
    "dist/tessera_connector_acme-0.1.0-py3-none-any.whl",
    ".venv/bin/python",
    "venv/pyvenv.cfg",
    ".pytest_cache/README.md",
    ".mypy_cache/3.11/cache.db",
    ".ruff_cache/CACHEDIR.TAG",
    ".hypothesis/examples/x",
    ".coverage",
    "htmlcov/index.html",
    "reports/conformance.html",
    "reports/junit.xml",
    ".tessera/dev.json",
    ".env",
    ".env.live",
]

#: What an author adds and must commit.
KEPT = [
    "cassettes/authorize_approved.json",
    "tessera_acme/sandboxes/live.toml",
    "tests/test_webhooks.py",
    ".env.example",
    "tessera_acme/reports.py",  # only the top-level reports/ directory is run output
]


def _git(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # No user or system configuration: a global excludes file must not decide the test.
    env = {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "HOME": str(project),
    }
    return subprocess.run(
        ["git", "-c", "core.excludesFile=", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_generated_gitignore_ignores_build_and_run_output_only(tmp_path: Path) -> None:
    project = generate_connector("acme", "card-acquirer", tmp_path).parent
    gitignore = (project / ".gitignore").read_text(encoding="utf-8")
    assert "${" not in gitignore  # every template placeholder was filled
    assert "TESSERA_ACME_<FIELD>" in gitignore
    assert _git(project, "init", "-q").returncode == 0
    for relative in LEFT_BEHIND + KEPT:
        path = project / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x", encoding="utf-8")

    # Every untracked file git would offer to add: the generated project and what is KEPT.
    offered = _git(project, "ls-files", "--others", "--exclude-standard")
    assert offered.returncode == 0, offered.stderr
    generated = {target.replace("${package}", "tessera_acme") for target in GENERATED_FILES}
    assert ".gitignore" in generated
    assert set(offered.stdout.splitlines()) == generated | set(KEPT)

    ignored = _git(project, "check-ignore", "--no-index", *LEFT_BEHIND)
    assert sorted(ignored.stdout.splitlines()) == sorted(LEFT_BEHIND), ignored.stderr
