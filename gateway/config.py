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

import difflib
import os
import tomllib
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from vault.client import check_vault_addr

__all__ = [
    "AuthSettings",
    "ConfigError",
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

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not url.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ValueError(
                "must start with sqlite:// (sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db) or postgresql://"
            )
        return url


class VaultSettings(BaseModel):
    model_config = _STRICT

    #: An http:// or https:// URL (checked when the file is read, not at the first Vault call).
    addr: str = "http://127.0.0.1:8200"
    token: SecretStr | None = None
    role_id: str | None = None
    secret_id: SecretStr | None = None
    admin_token: SecretStr | None = None
    timeout: Annotated[float, Field(gt=0)] = 5.0
    #: Small on purpose: an unreachable Vault must turn into a 503 in well under a second.
    connect_timeout: Annotated[float, Field(gt=0)] = 0.5
    max_connections: Annotated[int, Field(ge=1)] = 64

    @field_validator("addr")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if any(c.isspace() for c in value):
            raise ValueError("must not contain spaces")
        return check_vault_addr(value)


class TokenizationSettings(BaseModel):
    model_config = _STRICT

    batching: bool = True
    batch_max_items: Annotated[int, Field(ge=1, le=5000)] = 250
    #: How new cards are encrypted: ``"envelope"`` seals them in process under a data key that
    #: transit wraps, renewed every ``data_key_seconds`` (one Vault call per card batch, the
    #: HMAC); ``"transit"`` sends every card to transit encrypt. Both kinds of stored
    #: ciphertext are revealed whatever is set here. See docs/operating.md, "Encryption".
    encryption: Literal["envelope", "transit"] = "envelope"
    data_key_seconds: Annotated[float, Field(ge=1, le=3600)] = 10.0
    #: How long egress keeps an unwrapped data key, so reveals of cards sealed under one key
    #: do not each call Vault (0: unwrap on every reveal).
    unwrapped_key_seconds: Annotated[float, Field(ge=0, le=3600)] = 60.0
    max_cards_per_request: Annotated[int, Field(ge=1, le=10_000)] = 1000
    cvv_ttl_seconds: Annotated[int, Field(ge=1, le=3600)] = 600
    sweep_interval_seconds: Annotated[float, Field(gt=0)] = 60.0


class AuthSettings(BaseModel):
    model_config = _STRICT

    failure_limit: Annotated[int, Field(ge=1)] = 20
    failure_window_seconds: Annotated[float, Field(gt=0)] = 60.0
    key_cache_seconds: Annotated[float, Field(ge=0)] = 5.0
    #: Addresses or networks of the load balancers in front of the gateway. A request from one
    #: of them is counted against the client its ``X-Forwarded-For`` names (the right-most
    #: address not itself trusted); from anyone else the header is ignored (it is forgeable).
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            return value
        try:
            return tuple(ip_network(str(v), strict=False) for v in value)
        except ValueError as exc:
            raise ValueError(f"not an address or network: {exc}") from None


class ConnectorSettings(BaseModel):
    """One ``[connectors.<id>]`` section: where the provider is and how hard to try."""

    model_config = _STRICT

    environment: Literal["sandbox", "live"] = "sandbox"
    base_url: str | None = None
    #: Allows http and loopback destinations: simulators and tests only.
    test_mode: bool = False
    #: Where the connector's credentials come from: this section's ``credentials`` table
    #: (``"config"``), or Vault KV v2 at ``tessera/connectors/<id>`` (``"vault"``), read at
    #: start-up and again every ``credentials_refresh_seconds`` (rotation without a restart).
    credentials_from: Literal["config", "vault"] = "config"
    credentials: dict[str, SecretStr] = {}
    credentials_refresh_seconds: Annotated[float, Field(ge=1, le=86_400)] = 60.0
    deadline_seconds: Annotated[float, Field(gt=0, le=120)] = 10.0
    breaker_fail_max: Annotated[int, Field(ge=1)] = 5
    breaker_reset_seconds: Annotated[float, Field(gt=0)] = 30.0
    max_concurrent: Annotated[int, Field(ge=1)] = 64
    max_queued: Annotated[int, Field(ge=0)] = 128
    retry_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    #: A PEM file of CA certificates trusted for this provider's server certificate, in addition
    #: to the Mozilla bundle (a bank's private PKI). Never switches verification off.
    ca_bundle: Path | None = None

    @field_validator("ca_bundle")
    @classmethod
    def _readable_bundle(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no file at {str(value)!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _section_webhook_secret(cls, data: Any) -> Any:
        # A section-level ``webhook_secret`` used to be accepted and then never used (webhooks
        # are verified with ``credentials.webhook_secret``), so every webhook failed
        # verification. It is now moved where it is used.
        if not isinstance(data, dict) or data.get("webhook_secret") is None:
            return data
        data = dict(data)
        secret = data.pop("webhook_secret")
        credentials = data.get("credentials")
        if credentials is None:
            credentials = {}
        if not isinstance(credentials, dict):
            return data  # the credentials table itself is reported invalid
        if "webhook_secret" in credentials or data.get("credentials_from") == "vault":
            raise ValueError(
                "webhook_secret is a credential: set it once, in credentials.webhook_secret "
                '(or in Vault with credentials_from = "vault")'
            )
        data["credentials"] = {**credentials, "webhook_secret": secret}
        return data

    @model_validator(mode="after")
    def _one_credentials_source(self) -> ConnectorSettings:
        if self.credentials_from == "vault" and self.credentials:
            raise ValueError(
                'credentials_from = "vault" reads every credential from Vault KV '
                "(tessera/connectors/<id>); remove the credentials table from the file"
            )
        return self


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
    #: At least 16 bytes (say ``openssl rand -hex 32``).
    idempotency_key: SecretStr | None = None
    reconcile_interval_seconds: Annotated[float, Field(gt=0)] = 5.0
    outbox_interval_seconds: Annotated[float, Field(gt=0)] = 2.0

    @field_validator("idempotency_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked with the rest of the configuration (exit 2, naming the setting) rather than
        # when each worker opens its resources.
        if value is not None and len(value.get_secret_value().encode()) < 16:
            raise ValueError("must be at least 16 bytes (e.g. openssl rand -hex 32)")
        return value

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

    @field_validator("routing")
    @classmethod
    def _routes_to_configured_connectors(
        cls, value: RoutingSettings, info: ValidationInfo
    ) -> RoutingSettings:
        # A connector named in the routing without a [connectors.<id>] section was skipped
        # silently: a typo showed only as payments going elsewhere, or nowhere.
        configured = info.data.get("connectors")
        if configured is None:
            return value  # the connectors themselves are invalid: reported on their own
        named = [*value.default, *(c for rule in value.rules for c in rule.connectors)]
        unknown = sorted({c for c in named if c not in configured})
        if unknown:
            raise ValueError(
                f"names connector(s) {', '.join(map(repr, unknown))} that have no "
                f"[connectors.<id>] section (configured: {', '.join(sorted(configured)) or 'none'})"
            )
        return value


_ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "TESSERA_DATABASE_URL": ("database", "url"),
    "TESSERA_VAULT_ADDR": ("vault", "addr"),
    "TESSERA_VAULT_TOKEN": ("vault", "token"),
    "TESSERA_VAULT_ROLE_ID": ("vault", "role_id"),
    "TESSERA_VAULT_SECRET_ID": ("vault", "secret_id"),
    "TESSERA_VAULT_ADMIN_TOKEN": ("vault", "admin_token"),
    "TESSERA_IDEMPOTENCY_KEY": ("payments", "idempotency_key"),
}


class ConfigError(ValueError):
    """The configuration cannot be used: unreadable file, bad TOML, or invalid values.

    The message is meant for an operator, one line per problem, naming the key as it is written
    in the file (``[server] port``) or the environment variable that set it. It never repeats a
    value of a secret-looking key.
    """


def load_settings(path: str | Path | None = None, *, env: dict[str, str] | None = None) -> Settings:
    """Read ``path`` (TOML; optional) and apply the ``TESSERA_*`` environment overrides.

    Raises ``ConfigError`` (a ``ValueError``) with an operator-readable message when the file
    cannot be read or parsed, or when a value is unknown, of the wrong type or out of range.
    """
    data: dict[str, Any] = {}
    source = "the environment" if path is None else str(path)
    if path is not None:
        try:
            with Path(path).open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"configuration file {source} does not exist.") from None
        except OSError as exc:
            raise ConfigError(
                f"cannot read configuration file {source}: {exc.strerror or exc}."
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source} is not valid TOML: {exc}.") from None
        except UnicodeDecodeError:
            # TOML is UTF-8; an editor's UTF-16 or Latin-1 save is not.
            raise ConfigError(
                f"{source} is not UTF-8 text; save it as UTF-8 (TOML files are)."
            ) from None
    environ = os.environ if env is None else env
    from_env: dict[tuple[str, str], str] = {}
    for name, (section, key) in _ENV_OVERRIDES.items():
        if environ.get(name):
            target = data.setdefault(section, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{source}: {section} must be a [{section}] table.")
            target[key] = environ[name]
            from_env[(section, key)] = name
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(error, from_env) for error in exc.errors()]
        raise ConfigError(
            f"invalid configuration in {source} (docs/operating.md lists every key):\n  "
            + "\n  ".join(lines)
        ) from None


_SECRET_WORDS = ("token", "secret", "key", "password", "credential")


def _describe(error: Any, from_env: dict[tuple[str, str], str]) -> str:
    """One pydantic error as ``[section] key: problem``, without echoing secret values."""
    loc = tuple(error.get("loc", ()))
    where = _toml_location(loc)
    env_name = from_env.get((str(loc[0]), str(loc[1]))) if len(loc) == 2 else None
    if env_name is not None:
        where += f" (set by {env_name})"
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1) if loc else []
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        expected = f" (known: {', '.join(known)})" if known and not hint else ""
        return f"{where}: unknown key{suggestion}{expected}"
    if kind == "missing":
        return f"{where}: a value is required"
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    value = error.get("input")
    # A database or Vault URL may hold a password; secret-named keys are never repeated.
    secret = loc[:2] in (("database", "url"), ("vault", "addr")) or any(
        word in str(part).lower() for part in loc for word in _SECRET_WORDS
    )
    if not secret and isinstance(value, bool | int | float | str) and len(str(value)) <= 80:
        message += f" (got {value!r})"
    return f"{where}: {message}"


def _toml_location(loc: tuple[Any, ...]) -> str:
    """``("server", "port")`` -> ``[server] port``; ``("routing", "rules", 0, "connectors")`` ->
    ``[[routing.rules]] #1 connectors``."""
    if not loc:
        return "(top level)"
    if len(loc) == 1:
        return f"[{loc[0]}]" if loc[0] in Settings.model_fields else str(loc[0])
    if loc[0] == "connectors" and len(loc) >= 3:
        return f"[connectors.{loc[1]}] " + ".".join(str(p) for p in loc[2:])
    if loc[:2] == ("routing", "rules") and len(loc) >= 4 and isinstance(loc[2], int):
        return f"[[routing.rules]] #{loc[2] + 1} " + ".".join(str(p) for p in loc[3:])
    return f"[{loc[0]}] " + ".".join(str(p) for p in loc[1:])


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys a table at ``loc`` accepts (for "did you mean")."""
    model: Any = Settings
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            if model is Settings or not hasattr(model, "model_fields"):
                return []
            continue
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif args and isinstance(args[-1], type) and issubclass(args[-1], BaseModel):
            model = args[-1]  # dict[str, Model] or list[Model]
        else:
            return []
    return sorted(model.model_fields) if hasattr(model, "model_fields") else []
