"""Gateway configuration: a TOML file, with environment overrides for secrets.

``tessera serve --config FILE`` reads it; ``tessera dev`` builds one in memory. Every field has
a default that suits one developer on one machine; docs/operating.md documents them all::

    [server]
    host = "127.0.0.1"
    port = 8080
    workers = 1                    # >1: SO_REUSEPORT worker processes
    client_max_size = 1048576      # bytes; larger bodies get 413
    read_timeout = 10.0            # seconds to receive a whole request body
    keepalive_timeout = 15.0       # idle keep-alive connections are closed after this
    shutdown_timeout = 10.0        # in-flight requests get this long to drain on SIGTERM
    access_log = false

    [database]
    url = "sqlite:///.tessera/tessera.db"   # or postgresql://user@host:5432/db

    [vault]
    addr = "http://127.0.0.1:8200"
    role_id = "..."                # AppRole (recommended) ...
    secret_id = "..."              # ... or TESSERA_VAULT_SECRET_ID
    token = "..."                  # ... or a token (TESSERA_VAULT_TOKEN)
    admin_token = "..."            # CLI only; or TESSERA_VAULT_ADMIN_TOKEN

    [tokenization]
    batching = true                # group-commit transit calls
    batch_max_items = 250          # items per Vault call (below max_request_json_strings)
    max_cards_per_request = 1000   # POST /v1/tokens/batch
    cvv_ttl_seconds = 600
    sweep_interval_seconds = 60

    [auth]
    failure_limit = 20             # failed authentications per client address ...
    failure_window_seconds = 60    # ... per window before 429
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

__all__ = [
    "AuthSettings",
    "ConnectorSettings",
    "DatabaseSettings",
    "PaymentSettings",
    "RouteRule",
    "RoutingSettings",
    "ServerSettings",
    "Settings",
    "TokenizationSettings",
    "VaultSettings",
    "load_settings",
]

_STRICT = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(BaseModel):
    model_config = _STRICT

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    client_max_size: Annotated[int, Field(ge=1024)] = 1024 * 1024
    read_timeout: Annotated[float, Field(gt=0)] = 10.0
    keepalive_timeout: Annotated[float, Field(gt=0)] = 15.0
    shutdown_timeout: Annotated[float, Field(gt=0)] = 10.0
    max_line_size: Annotated[int, Field(ge=1024)] = 8190
    max_field_size: Annotated[int, Field(ge=1024)] = 8190
    max_headers: Annotated[int, Field(ge=8)] = 64
    access_log: bool = False


class DatabaseSettings(BaseModel):
    model_config = _STRICT

    url: str = "sqlite:///.tessera/tessera.db"


class VaultSettings(BaseModel):
    model_config = _STRICT

    addr: str = "http://127.0.0.1:8200"
    token: SecretStr | None = None
    role_id: str | None = None
    secret_id: SecretStr | None = None
    admin_token: SecretStr | None = None
    timeout: Annotated[float, Field(gt=0)] = 5.0
    #: Small on purpose: an unreachable Vault must turn into a 503 in well under a second.
    connect_timeout: Annotated[float, Field(gt=0)] = 0.5
    max_connections: Annotated[int, Field(ge=1)] = 64


class TokenizationSettings(BaseModel):
    model_config = _STRICT

    batching: bool = True
    batch_max_items: Annotated[int, Field(ge=1, le=5000)] = 250
    max_cards_per_request: Annotated[int, Field(ge=1, le=10_000)] = 1000
    cvv_ttl_seconds: Annotated[int, Field(ge=1, le=3600)] = 600
    sweep_interval_seconds: Annotated[float, Field(gt=0)] = 60.0


class AuthSettings(BaseModel):
    model_config = _STRICT

    failure_limit: Annotated[int, Field(ge=1)] = 20
    failure_window_seconds: Annotated[float, Field(gt=0)] = 60.0
    key_cache_seconds: Annotated[float, Field(ge=0)] = 5.0


class ConnectorSettings(BaseModel):
    """One ``[connectors.<id>]`` section: where the provider is and how hard to try."""

    model_config = _STRICT

    environment: Literal["sandbox", "live"] = "sandbox"
    base_url: str | None = None
    #: Allows http and loopback destinations: simulators and tests only.
    test_mode: bool = False
    credentials: dict[str, SecretStr] = {}
    webhook_secret: SecretStr | None = None
    deadline_seconds: Annotated[float, Field(gt=0, le=120)] = 10.0
    breaker_fail_max: Annotated[int, Field(ge=1)] = 5
    breaker_reset_seconds: Annotated[float, Field(gt=0)] = 30.0
    max_concurrent: Annotated[int, Field(ge=1)] = 64
    max_queued: Annotated[int, Field(ge=0)] = 128
    retry_attempts: Annotated[int, Field(ge=1, le=10)] = 3


class RouteRule(BaseModel):
    """``[[routing.rules]]``: the first rule whose conditions all hold picks the connectors."""

    model_config = _STRICT

    connectors: Annotated[list[str], Field(min_length=1)]
    payment_method: str | None = None
    currencies: list[str] | None = None
    countries: list[str] | None = None
    brands: list[str] | None = None
    bin_prefixes: list[str] | None = None
    min_amount: Annotated[int, Field(ge=0)] | None = None
    max_amount: Annotated[int, Field(ge=0)] | None = None
    merchants: list[str] | None = None


class RoutingSettings(BaseModel):
    model_config = _STRICT

    rules: list[RouteRule] = []
    #: Used when no rule matches: connectors in order (later ones are fallbacks).
    default: list[str] = []


class PaymentSettings(BaseModel):
    model_config = _STRICT

    idempotency_retention_seconds: Annotated[int, Field(ge=60)] = 86_400
    #: How long a request's claim on its key survives its process: after a crash, a retry with
    #: the same key waits this long (409) before it may take the claim over and resume.
    idempotency_lease_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    #: HMAC key for idempotency request fingerprints; every process must share it. When unset,
    #: the first gateway generates one and keeps it in the database (see docs/operating.md).
    idempotency_key: SecretStr | None = None
    reconcile_interval_seconds: Annotated[float, Field(gt=0)] = 5.0
    outbox_interval_seconds: Annotated[float, Field(gt=0)] = 2.0
    #: Development and tests only: merchant webhook URLs may be http:// and point at loopback or
    #: private addresses (never link-local or cloud-metadata ones). Never in production.
    allow_private_webhook_targets: bool = False


class Settings(BaseModel):
    model_config = _STRICT

    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    vault: VaultSettings = VaultSettings()
    tokenization: TokenizationSettings = TokenizationSettings()
    auth: AuthSettings = AuthSettings()
    connectors: dict[str, ConnectorSettings] = {}
    routing: RoutingSettings = RoutingSettings()
    payments: PaymentSettings = PaymentSettings()


_ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "TESSERA_DATABASE_URL": ("database", "url"),
    "TESSERA_VAULT_ADDR": ("vault", "addr"),
    "TESSERA_VAULT_TOKEN": ("vault", "token"),
    "TESSERA_VAULT_ROLE_ID": ("vault", "role_id"),
    "TESSERA_VAULT_SECRET_ID": ("vault", "secret_id"),
    "TESSERA_VAULT_ADMIN_TOKEN": ("vault", "admin_token"),
    "TESSERA_IDEMPOTENCY_KEY": ("payments", "idempotency_key"),
}


def load_settings(path: str | Path | None = None, *, env: dict[str, str] | None = None) -> Settings:
    """Read ``path`` (TOML; optional) and apply the ``TESSERA_*`` environment overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        with Path(path).open("rb") as fh:
            data = tomllib.load(fh)
    environ = os.environ if env is None else env
    for name, (section, key) in _ENV_OVERRIDES.items():
        if environ.get(name):
            data.setdefault(section, {})[key] = environ[name]
    return Settings.model_validate(data)
