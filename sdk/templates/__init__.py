"""Templates of the connector generator (``sdk.generator``): ``<category>.<file>.tmpl`` and
``common.<file>.tmpl``, filled in with ``string.Template``. Data, not code: excluded from ruff."""
