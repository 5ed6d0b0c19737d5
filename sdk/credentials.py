"""Connector credentials as the SDK holds them: named secrets that never show in a ``repr``.

The gateway takes them from its configuration file, or from Vault KV v2 at
``tessera/connectors/<id>`` (``credentials_from = "vault"``: re-read periodically, so they rotate
without a restart), and passes them with each call; connectors read them with
``ctx.credentials.reveal("api_key")``; the transcript recorder scrubs every value it holds.

Tools that run a connector against a provider's own sandbox (the conformance kit's live mode,
``tessera dev --connector ID --connector-url URL``) read them from the environment, one variable
per field: ``TESSERA_<CONNECTOR>_<FIELD>`` (``environment_variable``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Mapping

from pydantic import SecretStr

from normalization import ConnectorConfigurationError
from sdk.client_tls import read_identity
from sdk.manifest import Manifest

__all__ = [
    "Credentials",
    "credentials_from_environment",
    "environment_variable",
    "with_made_up_values",
]


class Credentials(Mapping[str, SecretStr]):
    """An immutable mapping of credential names to ``SecretStr`` values."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str | SecretStr] | None = None) -> None:
        self._values: dict[str, SecretStr] = {
            name: value if isinstance(value, SecretStr) else SecretStr(value)
            for name, value in (values or {}).items()
        }

    def __getitem__(self, name: str) -> SecretStr:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Credentials({sorted(self._values)!r})"

    def reveal(self, name: str) -> str:
        """The raw value of credential ``name``; a clear error names a missing one."""
        try:
            return self._values[name].get_secret_value()
        except KeyError:
            raise ConnectorConfigurationError(f"Credential {name!r} is not configured.") from None

    def secret_values(self) -> tuple[str, ...]:
        """Every non-empty value, for scrubbers."""
        return tuple(v.get_secret_value() for v in self._values.values() if v.get_secret_value())

    def missing(self, manifest: Manifest) -> list[str]:
        """The names of ``manifest``'s required credentials that are absent or empty here."""
        return [
            field.name
            for field in manifest.credentials
            if field.required and not self._values.get(field.name, SecretStr("")).get_secret_value()
        ]

    def check_against(self, manifest: Manifest) -> None:
        """Raise ``ConnectorConfigurationError`` naming required credentials that are missing,
        or, for a connector presenting a TLS client certificate (``manifest.client_tls``), what
        is wrong with the certificate and key (``sdk.client_tls``). An expired certificate
        passes: it fails the calls that would present it, not the whole gateway's start."""
        missing = self.missing(manifest)
        if missing:
            raise ConnectorConfigurationError(
                f"Connector {manifest.id!r} is missing credentials: {', '.join(missing)}."
            )
        if manifest.client_tls:  # parsed and matched; its validity is checked by each call
            read_identity(self)


def with_made_up_values(
    manifest: Manifest, values: Mapping[str, str], prefix: str
) -> dict[str, str]:
    """``values`` plus a made-up ``<prefix>-<field>-<random>`` for each required credential they
    lack or leave empty: what a simulator run needs when its profile names no value (a
    simulator takes any)."""
    filled = dict(values)
    for field in manifest.credentials:
        if field.required and not filled.get(field.name):
            filled[field.name] = f"{prefix}-{field.name}-{secrets.token_hex(8)}"
    return filled


def environment_variable(connector_id: str, field: str) -> str:
    """The variable holding credential ``field`` of ``connector_id``: ``TESSERA_ACME_API_KEY``."""
    return f"TESSERA_{connector_id.upper()}_{field.upper()}"


def credentials_from_environment(
    manifest: Manifest, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The manifest's credential fields that are set (non-empty) in ``environ`` (default: the
    process environment), by field name."""
    env = os.environ if environ is None else environ
    values: dict[str, str] = {}
    for field in manifest.credentials:
        value = env.get(environment_variable(manifest.id, field.name))
        if value:
            values[field.name] = value
    return values
