"""Provision OpenBao for Tessera with hvac: mounts, policies, AppRoles, per-tenant keys.

Synchronous and idempotent (run it as often as you like): this is ``tessera vault provision``,
``tessera dev`` and merchant creation, never the request path (hvac is sync; the request path
uses ``vault.client.VaultClient``). From async code, call through ``asyncio.to_thread``.

What it sets up:

- transit at ``transit/`` and KV v2 at ``secret/`` (a KV v1 mount there is upgraded);
- policies that separate the three ways of touching card data:

  ``tessera-tokenize``  transit encrypt, datakey (plaintext) and hmac on ``tessera-*`` keys
                        (no decrypt, no key creation)
  ``tessera-reveal``    transit decrypt on ``tessera-pan-*`` / ``tessera-cvv-*`` keys; KV read of
                        connector credentials under ``secret/data/tessera/connectors/*``
  ``tessera-admin``     key create / read / rotate / config / rewrap, KV write under
                        ``tessera/``, ``tessera-*`` policies

- AppRole with roles ``tessera-gateway`` (tokenize + reveal: what the gateway logs in with) and
  ``tessera-admin``;
- per tenant: ``tessera-pan-<tenant>`` (aes256-gcm96, PAN ciphertext) and ``tessera-fp-<tenant>``
  (an ``hmac`` key: it can only compute keyed fingerprints; never exportable).

hvac and transport failures are mapped to the vault error family, like the async client's.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import hvac
import hvac.exceptions
import requests

from normalization.errors import (
    VaultError,
    VaultNotFoundError,
    VaultPermissionDeniedError,
    VaultSealedError,
    VaultUnavailableError,
)
from vault.client import AppRoleCredentials

__all__ = [
    "ADMIN_POLICY",
    "ADMIN_ROLE",
    "GATEWAY_ROLE",
    "REVEAL_POLICY",
    "TOKENIZE_POLICY",
    "ProvisionResult",
    "TenantKeys",
    "cvv_key_name",
    "ensure_tenant_keys",
    "fingerprint_key_name",
    "pan_key_name",
    "policy_documents",
    "provision",
    "validate_tenant_id",
]

TOKENIZE_POLICY: Final = "tessera-tokenize"
REVEAL_POLICY: Final = "tessera-reveal"
ADMIN_POLICY: Final = "tessera-admin"
GATEWAY_ROLE: Final = "tessera-gateway"
ADMIN_ROLE: Final = "tessera-admin"

_TENANT_ID_RE: Final = re.compile(r"[a-z0-9_]{1,64}")
_TIMEOUT_SECONDS: Final = 10


# -- key names ----------------------------------------------------------------------------------


def validate_tenant_id(tenant_id: str) -> str:
    """Return ``tenant_id`` if it is ``[a-z0-9_]{1,64}`` (ASCII); raise ``ValueError`` otherwise.

    Tenant ids end up in key names, URL paths and policy globs, so nothing else gets through.
    """
    if not isinstance(tenant_id, str) or not _TENANT_ID_RE.fullmatch(tenant_id):
        raise ValueError("tenant id must be 1-64 characters of [a-z0-9_]")
    return tenant_id


def pan_key_name(tenant: str) -> str:
    """The transit key that encrypts this tenant's PANs."""
    return f"tessera-pan-{validate_tenant_id(tenant)}"


def fingerprint_key_name(tenant: str) -> str:
    """The transit HMAC key behind this tenant's keyed card fingerprints."""
    return f"tessera-fp-{validate_tenant_id(tenant)}"


def cvv_key_name(tenant: str) -> str:
    """A transit key for short-lived CVV ciphertext, if CVVs are held under transit at all."""
    return f"tessera-cvv-{validate_tenant_id(tenant)}"


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProvisionResult:
    """What ``provision()`` made: mounts, the two AppRoles' role ids and fresh secret ids.

    ``admin_secret_id`` is None when ``provision(..., admin_secret_id=False)`` was asked not to
    issue one."""

    transit_mount: str
    kv_mount: str
    gateway_role_id: str
    gateway_secret_id: str = field(repr=False)
    admin_role_id: str
    admin_secret_id: str | None = field(repr=False)

    def gateway_credentials(self) -> AppRoleCredentials:
        """AppRole credentials for the gateway (tokenize + reveal)."""
        return AppRoleCredentials(self.gateway_role_id, self.gateway_secret_id)

    def admin_credentials(self) -> AppRoleCredentials:
        """AppRole credentials for admin tasks (key rotation, rewrap, KV writes)."""
        if self.admin_secret_id is None:
            raise ValueError("provision() was asked not to issue an admin secret id.")
        return AppRoleCredentials(self.admin_role_id, self.admin_secret_id)


@dataclass(frozen=True, slots=True)
class TenantKeys:
    """The two transit keys of one tenant."""

    tenant_id: str
    pan_key: str
    fingerprint_key: str


# -- policies -----------------------------------------------------------------------------------


def policy_documents(transit_mount: str = "transit", kv_mount: str = "secret") -> dict[str, str]:
    """The HCL of Tessera's three policies, by name (exposed so tests and docs can show them)."""
    t, kv = transit_mount.strip("/"), kv_mount.strip("/")
    tokenize = f"""
# Tokenize: encrypt PANs (transit encrypt, or data keys for envelope encryption: the plaintext
# key seals cards in the gateway) and compute keyed fingerprints. Only "update": encrypting
# under a key that does not exist must fail instead of creating it (that needs "create").
path "{t}/encrypt/tessera-*" {{ capabilities = ["update"] }}
path "{t}/datakey/plaintext/tessera-pan-*" {{ capabilities = ["update"] }}
path "{t}/hmac/tessera-*" {{ capabilities = ["update"] }}
"""
    reveal = f"""
# Reveal: decrypt PAN (and transit-held CVV) ciphertext for connector egress; read connector
# credentials.
path "{t}/decrypt/tessera-pan-*" {{ capabilities = ["update"] }}
path "{t}/decrypt/tessera-cvv-*" {{ capabilities = ["update"] }}
path "{kv}/data/tessera/connectors/*" {{ capabilities = ["read"] }}
"""
    admin = f"""
# Admin: key lifecycle (create, read, rotate, config), rewrap after rotation, connector
# credentials, Tessera's own policies.
path "{t}/keys" {{ capabilities = ["list"] }}
path "{t}/keys/tessera-*" {{ capabilities = ["create", "read", "update", "list"] }}
path "{t}/rewrap/tessera-*" {{ capabilities = ["update"] }}
path "{kv}/data/tessera/*" {{ capabilities = ["create", "read", "update"] }}
path "{kv}/metadata/tessera/*" {{ capabilities = ["read", "list"] }}
path "sys/policies/acl/tessera-*" {{ capabilities = ["create", "read", "update", "list"] }}
"""
    return {
        TOKENIZE_POLICY: tokenize.lstrip(),
        REVEAL_POLICY: reveal.lstrip(),
        ADMIN_POLICY: admin.lstrip(),
    }


# -- provisioning -------------------------------------------------------------------------------


def provision(
    addr: str,
    token: str,
    *,
    transit_mount: str = "transit",
    kv_mount: str = "secret",
    gateway_ttl: str = "1h",
    gateway_max_ttl: str = "24h",
    admin_ttl: str = "15m",
    admin_secret_id: bool = True,
) -> ProvisionResult:
    """Create (or bring up to date) mounts, policies and AppRoles; returns fresh secret ids.

    Idempotent: existing mounts are kept, policies and roles are rewritten to the same content.
    Every run issues new secret ids (old ones stay valid until their TTL, if any).
    ``admin_secret_id=False`` issues none for ``tessera-admin`` (its ``admin_secret_id`` is
    None): a caller that will not hand it to anyone must not leave a live admin credential
    behind (``tessera vault provision`` issues one only when asked for a file to put it in).
    """
    with _hvac_client(addr, token) as client:
        _ensure_transit(client, transit_mount)
        _ensure_kv_v2(client, kv_mount)
        for name, document in policy_documents(transit_mount, kv_mount).items():
            client.sys.create_or_update_policy(name=name, policy=document)
        _ensure_approle(client)
        client.auth.approle.create_or_update_approle(
            GATEWAY_ROLE,
            token_policies=[TOKENIZE_POLICY, REVEAL_POLICY],
            token_ttl=gateway_ttl,
            token_max_ttl=gateway_max_ttl,
        )
        client.auth.approle.create_or_update_approle(
            ADMIN_ROLE,
            token_policies=[ADMIN_POLICY],
            token_ttl=admin_ttl,
            token_max_ttl=admin_ttl,
        )
        return ProvisionResult(
            transit_mount=transit_mount,
            kv_mount=kv_mount,
            gateway_role_id=_role_id(client, GATEWAY_ROLE),
            gateway_secret_id=_secret_id(client, GATEWAY_ROLE),
            admin_role_id=_role_id(client, ADMIN_ROLE),
            admin_secret_id=_secret_id(client, ADMIN_ROLE) if admin_secret_id else None,
        )


def ensure_tenant_keys(
    addr: str, token: str, tenant_id: str, *, transit_mount: str = "transit"
) -> TenantKeys:
    """Create the tenant's PAN and fingerprint keys unless they exist (idempotent).

    An existing key of the wrong type, or one marked exportable, is refused rather than used.
    """
    keys = TenantKeys(
        tenant_id=validate_tenant_id(tenant_id),
        pan_key=pan_key_name(tenant_id),
        fingerprint_key=fingerprint_key_name(tenant_id),
    )
    mount = transit_mount.strip("/")
    with _hvac_client(addr, token) as client:
        _ensure_key(client, mount, keys.pan_key, {"type": "aes256-gcm96"})
        _ensure_key(client, mount, keys.fingerprint_key, {"type": "hmac", "key_size": 32})
    return keys


# -- internals ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _hvac_client(addr: str, token: str) -> Iterator[hvac.Client]:
    client = hvac.Client(url=addr, token=token, timeout=_TIMEOUT_SECONDS)
    try:
        with _mapped_errors():
            yield client
    finally:
        client.adapter.close()


@contextlib.contextmanager
def _mapped_errors() -> Iterator[None]:
    """hvac/requests failures -> the vault error family (no request data in the details)."""
    try:
        yield
    except hvac.exceptions.Forbidden:
        raise VaultPermissionDeniedError("The vault refused a provisioning step.") from None
    except hvac.exceptions.VaultDown:
        raise VaultSealedError(retry_after=5) from None
    except hvac.exceptions.InvalidPath:
        raise VaultNotFoundError("A provisioning step hit a missing path.") from None
    except hvac.exceptions.VaultError as error:
        raise VaultError(f"Provisioning failed ({type(error).__name__}).") from None
    except requests.RequestException as error:
        raise VaultUnavailableError(
            f"OpenBao is unreachable ({type(error).__name__}).", retry_after=1
        ) from None


def _ensure_transit(client: hvac.Client, mount: str) -> None:
    mounts = _secret_mounts(client)
    existing = mounts.get(f"{mount.strip('/')}/")
    if existing is None:
        client.sys.enable_secrets_engine("transit", path=mount)
    elif existing.get("type") != "transit":
        raise VaultError(f"The mount {mount}/ exists but is not transit.")


def _ensure_kv_v2(client: hvac.Client, mount: str) -> None:
    mounts = _secret_mounts(client)
    existing = mounts.get(f"{mount.strip('/')}/")
    if existing is None:
        client.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
        return
    if existing.get("type") != "kv":
        raise VaultError(f"The mount {mount}/ exists but is not KV.")
    options = existing.get("options") or {}
    if str(options.get("version", "1")) != "2":
        # Upgrading KV v1 -> v2 in place is supported and keeps the data.
        client.sys.tune_mount_configuration(path=mount, options={"version": "2"})


def _secret_mounts(client: hvac.Client) -> dict[str, Any]:
    reply = client.sys.list_mounted_secrets_engines()
    mounts = reply.get("data", reply)
    return dict(mounts) if isinstance(mounts, dict) else {}


def _ensure_approle(client: hvac.Client) -> None:
    reply = client.sys.list_auth_methods()
    methods = reply.get("data", reply)
    if "approle/" not in methods:
        client.sys.enable_auth_method("approle", path="approle")


def _role_id(client: hvac.Client, role: str) -> str:
    return str(client.auth.approle.read_role_id(role)["data"]["role_id"])


def _secret_id(client: hvac.Client, role: str) -> str:
    return str(client.auth.approle.generate_secret_id(role)["data"]["secret_id"])


def _ensure_key(client: hvac.Client, mount: str, name: str, spec: dict[str, Any]) -> None:
    try:
        current = client.secrets.transit.read_key(name, mount_point=mount)["data"]
    except hvac.exceptions.InvalidPath:
        current = None
    if current is None:
        # Raw write: hvac's create_key rejects key types it does not know (``hmac``).
        client.adapter.post(f"/v1/{mount}/keys/{name}", json={**spec, "exportable": False})
        return
    if current.get("type") != spec["type"]:
        raise VaultError(f"Transit key {name} exists with the wrong type.")
    if current.get("exportable"):
        raise VaultError(f"Transit key {name} is exportable; refusing to use it.")
