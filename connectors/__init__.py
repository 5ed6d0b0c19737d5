"""Reference connectors, one package each, registered through the ``tessera.connectors``
entry-point group exactly like third-party connectors.

A connector imports ``sdk`` and ``normalization`` only.
"""
