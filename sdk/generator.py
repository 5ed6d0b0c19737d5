"""The connector generator behind ``tessera connector new NAME --category C [--path DIR]``.

``generate_connector("acme", "card-acquirer", Path("/tmp/x"))`` writes an installable project,
``/tmp/x/tessera-connector-acme/``, and returns its Python package directory
(``.../tessera-connector-acme/tessera_acme``; ``.parent`` is what ``pip install -e`` takes)::

    tessera-connector-acme/
      pyproject.toml           entry points tessera.connectors, .simulators and .sandboxes
      README.md
      .gitignore               build artefacts, virtualenvs, tool caches, conformance reports,
                               ``tessera dev`` state and env files (cassettes stay tracked)
      tessera_acme/
        connector.py           manifest, verbs, one _send
        transformers.py        wire models, builders, parsers, status and error maps
        simulator.py           a stateful loopback simulator of the provider (aiohttp)
        sandboxes/simulator.json  the simulator's API key and magic values: the conformance
                               kit finds it through the tessera.sandboxes entry point
      cassettes/               recorded, scrubbed exchanges (sdk.testing.Cassette)
      tests/                   simulator tests, transcript scrubbing, registration

The project passes ruff, mypy --strict and its own tests as generated; the templates live in
``sdk/templates`` (``<category>.<file>.tmpl`` and ``common.<file>.tmpl``, ``string.Template``
syntax with ``${slug}``, ``${slug_dash}``, ``${slug_upper}``, ``${package}``, ``${class_name}``,
``${display_name}``).
"""

from __future__ import annotations

import re
import shutil
from importlib import resources
from pathlib import Path
from string import Template

from normalization import ConnectorConfigurationError
from sdk.manifest import Category
from sdk.registry import load_registry

__all__ = ["GENERATED_FILES", "generate_connector", "slugify"]

# Shorter than a manifest id may be, so every generated line fits in 100 columns.
_SLUG_RE = re.compile(r"[a-z][a-z0-9_]{1,19}", re.ASCII)

#: Output path (relative to the project) -> template name ("{category}" is filled in).
GENERATED_FILES: dict[str, str] = {
    "pyproject.toml": "common.pyproject.toml.tmpl",
    "README.md": "common.README.md.tmpl",
    ".gitignore": "common.gitignore.tmpl",
    "${package}/__init__.py": "common.__init__.py.tmpl",
    "${package}/py.typed": "common.py.typed.tmpl",
    "${package}/connector.py": "{category}.connector.py.tmpl",
    "${package}/transformers.py": "{category}.transformers.py.tmpl",
    "${package}/simulator.py": "{category}.simulator.py.tmpl",
    "cassettes/README.md": "common.cassettes.README.md.tmpl",
    "${package}/sandboxes/simulator.json": "{category}.sandbox.json.tmpl",
    "tests/conftest.py": "common.conftest.py.tmpl",
    "tests/test_registration.py": "common.test_registration.py.tmpl",
    "tests/test_connector.py": "{category}.test_connector.py.tmpl",
}


def slugify(name: str) -> str:
    """The connector slug for ``name``: lower case, ``-`` and spaces as ``_``."""
    slug = re.sub(r"[\s-]+", "_", name.strip().lower())
    if _SLUG_RE.fullmatch(slug) is None:
        raise ConnectorConfigurationError(
            f"{name!r} is not a usable connector name: use 2-20 ASCII letters, digits, '-' or "
            "'_', starting with a letter."
        )
    return slug


def _template(name: str) -> Template:
    text = resources.files("sdk.templates").joinpath(name).read_text(encoding="utf-8")
    return Template(text)


def generate_connector(name: str, category: str, path: Path) -> Path:
    """Write a new connector project under ``path`` and return its package directory
    (the project, to ``pip install -e``, is the returned path's parent).

    Refuses to overwrite an existing directory. ``category`` is ``card-acquirer``,
    ``bank-rail`` or ``open-banking``. What it refuses raises ``ConnectorConfigurationError``;
    a project it cannot write raises the ``OSError``, after removing what it had written.
    """
    slug = slugify(name)
    try:
        kind = Category(category)
    except ValueError:
        choices = ", ".join(c.value for c in Category)
        raise ConnectorConfigurationError(
            f"Unknown category {category!r}: choose one of {choices}."
        ) from None
    words = slug.split("_")
    values = {
        "slug": slug,
        "slug_dash": slug.replace("_", "-"),
        "slug_upper": slug.upper(),
        "package": f"tessera_{slug}",
        "class_name": "".join(w.capitalize() for w in words) + "Connector",
        "display_name": " ".join(w.capitalize() for w in words),
        "category": kind.value,
        "host": slug.replace("_", "-"),
    }
    # An installed connector with this id, usable or broken, would make the id refused (two
    # plugins claiming one id: neither is used).
    registry = load_registry()
    if slug in registry:
        raise ConnectorConfigurationError(
            f"A connector {slug!r} is already installed (tessera connector list): pick another "
            "name."
        )
    refused = registry.broken(slug)
    if refused:
        raise ConnectorConfigurationError(
            f"A connector {slug!r} is already installed, from a broken plugin that claims the id "
            f"({'; '.join(map(str, refused))}): pick another name."
        )
    project = Path(path) / f"tessera-connector-{values['slug_dash']}"
    if project.exists():
        raise ConnectorConfigurationError(f"{project} already exists; not overwriting it.")
    template_category = kind.value.replace("-", "_")
    try:
        for target, template_name in GENERATED_FILES.items():
            output = project / Template(target).substitute(values)
            text = _template(template_name.format(category=template_category)).substitute(values)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text, encoding="utf-8")
    except OSError:
        # The project did not exist (checked above): a half-written one would only make the
        # next attempt fail with "already exists".
        shutil.rmtree(project, ignore_errors=True)
        raise
    return project / values["package"]
