"""``tessera connector credentials set|show``: connector credentials in Vault KV v2.

A connector configured with ``credentials_from = "vault"`` reads its credentials from KV v2 at
``tessera/connectors/<id>`` (under the ``secret/`` mount) when the gateway starts and again every
``credentials_refresh_seconds``; these commands write and inspect that secret with the admin
token (``vault.admin_token`` / ``TESSERA_VAULT_ADMIN_TOKEN``), the gateway's role only reads it.

Values never travel on the command line (shell history, ``ps``): ``set`` reads a JSON object or
a TOML table of strings from a file or standard input. Names are checked against the
connector's manifest (an unknown name is refused, with a suggestion; a missing required one
too), so a typo cannot leave a connector without its key. ``show`` prints names only, never a
value. Every write is in the audit log (``connector.credentials.write``, with the names and the
KV version), like the other admin actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from gateway.commands.admin import _admin_token, _with_db
from gateway.config import ConfigError, Settings
from gateway.connector_pool import credentials_path
from normalization.errors import ConnectorConfigurationError, VaultNotFoundError
from sdk import Credentials, Manifest, load_registry
from vault.audit import AuditLog
from vault.client import VaultClient
from vault.database import PostgresDatabase, SqliteDatabase

__all__ = ["credentials_set", "credentials_show", "parse_credentials"]


def _manifest(connector_id: str) -> Manifest:
    registry = load_registry()
    if connector_id not in registry and not registry.broken(connector_id):
        raise ConfigError(
            f"no connector {connector_id!r} is installed "
            f"(installed: {', '.join(registry) or 'none'}; tessera connector list)."
        )
    try:
        return registry.get(connector_id).manifest
    except ConnectorConfigurationError as exc:  # its plugin is broken: say why
        raise ConfigError(str(exc)) from None


def parse_credentials(text: str, source: str) -> dict[str, str]:
    """A JSON object or a TOML table of non-empty strings; ``ConfigError`` names the problem
    (never a value)."""
    data: Any
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            raise ConfigError(
                f"{source} is neither a JSON object nor a TOML table of credentials "
                '(e.g. {"api_key": "..."} or api_key = "...").'
            ) from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{source} must hold an object of credential names to values.")
    bad = sorted(
        str(name) for name, value in data.items() if not isinstance(value, str) or not value
    )
    if bad:
        raise ConfigError(
            f"{source}: every credential must be a non-empty string (not: {', '.join(bad)})."
        )
    return {str(name): value for name, value in data.items()}


def _check_names(manifest: Manifest, values: dict[str, str]) -> None:
    declared = [field.name for field in manifest.credentials]
    for name in sorted(values):
        if name not in declared:
            hint = difflib.get_close_matches(name, declared, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                f"connector {manifest.id!r} declares no credential {name!r}{suggestion} "
                f"(it declares: {', '.join(declared) or 'none'})."
            )
    try:
        Credentials(values).check_against(manifest)
    except ConnectorConfigurationError as exc:  # names the missing ones
        raise ConfigError(f"{exc} Nothing was written.") from None


def _read_source(source: str) -> tuple[str, str]:
    if source == "-":
        return sys.stdin.read(), "standard input"
    path = Path(source)
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}.") from None


def credentials_set(settings: Settings, connector_id: str, source: str, *, merge: bool) -> int:
    """Write a new KV version of ``connector_id``'s credentials (``merge``: over the current)."""
    manifest = _manifest(connector_id)
    text, where = _read_source(source)
    values = parse_credentials(text, where)
    token = _admin_token(settings)
    path = credentials_path(connector_id)

    async def work(db: SqliteDatabase | PostgresDatabase) -> int:
        async with VaultClient(settings.vault.addr, token=token) as client:
            merged = dict(values)
            if merge:
                with contextlib.suppress(VaultNotFoundError):
                    merged = {**await client.kv_read(path), **values}
            _check_names(manifest, merged)
            version = await client.kv_write(path, merged)
        audit = AuditLog(db)
        await audit.migrate()
        await audit.append(
            actor="cli:connector-credentials",
            action="connector.credentials.write",
            target=connector_id,
            detail=f"names={','.join(sorted(merged))} version={version}"
            + (" merge" if merge else ""),
        )
        return version

    version = asyncio.run(_with_db(settings, work))
    print(f"connector {connector_id}: credentials written to Vault KV {path} (version {version}).")
    print(
        'Gateways with credentials_from = "vault" use them from their next read '
        "(credentials_refresh_seconds, or at start).",
        file=sys.stderr,
    )
    return 0


def credentials_show(settings: Settings, connector_id: str) -> int:
    """Which of the connector's declared credentials Vault holds: names only, never values."""
    manifest = _manifest(connector_id)
    token = _admin_token(settings)
    path = credentials_path(connector_id)

    async def work() -> dict[str, str] | None:
        async with VaultClient(settings.vault.addr, token=token) as client:
            try:
                return await client.kv_read(path)
            except VaultNotFoundError:
                return None

    held = asyncio.run(work())
    if held is None:
        print(f"connector {connector_id}: no credentials in Vault KV at {path}.")
        return 1
    print(f"connector {connector_id}: Vault KV {path}")
    for field in manifest.credentials:
        state = "set" if held.get(field.name) else "missing"
        need = "required" if field.required else "optional"
        print(f"  {field.name:<28} {state:<8} ({need})")
    for name in sorted(set(held) - {field.name for field in manifest.credentials}):
        print(f"  {name:<28} {'set':<8} (not declared by the connector: unused)")
    missing = [f.name for f in manifest.credentials if f.required and not held.get(f.name)]
    return 1 if missing else 0
