"""The aiohttp service: app factory, routes, auth, idempotency, persistence, routing/failover,
reconciliation, webhooks, observability and the ``tessera`` CLI.

Imports every other package except a named connector (connectors come from the registry).
"""
