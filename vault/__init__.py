"""OpenBao/Vault: the async request-path client, provisioning (hvac), group-commit batching,
the tokenization service, token stores, key rotation and the audit log.

Imports ``normalization`` only. The SDK reaches this package solely through the
``TokenRevealer`` protocol, injected by the gateway.
"""
