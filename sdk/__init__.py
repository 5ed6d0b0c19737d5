"""What a connector author needs: the ``Connector`` base and capability manifest, the per-call
HTTP context with egress detokenization, outcome classification, error maps, webhook verification,
the resilience runtime (breaker, bulkhead, retry, deadline), the entry-point registry, testing
helpers and the generator's templates.

Imports ``normalization`` only; card data is revealed through an injected ``TokenRevealer``.
"""
