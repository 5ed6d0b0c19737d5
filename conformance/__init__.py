"""The conformance kit: scenario catalogue, profiles, runner, fault proxy, OpenAPI traffic
validation, leak scanner, reports, provider simulators, the pytest plugin and the CLI.

Imports ``sdk`` and ``normalization``; finds connectors through the registry, never by name.
"""
