"""The async OpenBao/Vault client for the request path.

One pooled ``aiohttp.ClientSession`` per client (hvac is synchronous and httpx's AsyncClient
collapsed at 64 in flight in our measurements, see PERFORMANCE.md). Transit calls always use
``batch_input`` and return one result per input, in order: a failed item is a ``VaultError``
*value* in the list, so one bad item never fails its neighbours.

Errors are mapped here, once (RELIABILITY.md, vault faults)::

    connection refused / reset, DNS, timeout, 3xx, 429, 502, 504  VaultUnavailableError (retry 1 s)
    503 "Vault is sealed"                                          VaultSealedError
    403 (after at most one AppRole re-login)                        VaultPermissionDeniedError
    404, 400 "... not found"                                        VaultNotFoundError
    any other 4xx / 5xx                                             VaultError

Details are written here or scrubbed from OpenBao's own message: request bodies (PAN plaintext,
base64) never reach an exception, and transport exceptions are re-raised ``from None`` so no
``__cause__`` drags request data along.

Authentication: a static token, or AppRole credentials. With AppRole the client logs in lazily,
logs in again shortly before the token's TTL runs out, and when a call is refused with 403 because
the token was revoked or expired, it logs in once and repeats that call once (RELIABILITY 24: one
re-authentication, then success, never a loop). Concurrent callers that hit the same dead token
share one login.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import orjson

from normalization.errors import (
    VaultError,
    VaultNotFoundError,
    VaultPermissionDeniedError,
    VaultSealedError,
    VaultUnavailableError,
)

__all__ = [
    "AppRoleCredentials",
    "VaultClient",
    "VaultHealth",
    "safe_vault_message",
]

_RETRY_AFTER_UNAVAILABLE: Final = 1
_RETRY_AFTER_SEALED: Final = 5
# Log in again when less than this share of the token's TTL is left (and at least 5 s before).
_RENEW_FRACTION: Final = 0.1
_RENEW_MARGIN_SECONDS: Final = 5.0
_HEALTH_QUERY: Final = {
    "standbycode": "200",
    "sealedcode": "200",
    "uninitcode": "200",
    "perfstandbyok": "true",
    "drsecondarycode": "200",
    "performancestandbycode": "200",
}
_JSON_HEADERS: Final = {"Content-Type": "application/json", "X-Vault-Request": "true"}

# Long base64/hex/digit runs are what a request body looks like (PANs, plaintext, ciphertext):
# they are redacted from anything OpenBao says before it becomes an exception detail.
_SENSITIVE_RUN_RE = re.compile(r"[A-Za-z0-9+/=]{16,}|\d{6,}")
_MAX_DETAIL_CHARS: Final = 160


def safe_vault_message(message: str) -> str:
    """OpenBao's error text, shortened and scrubbed of anything that could be request data."""
    flat = " ".join(message.replace("*", " ").split())
    if flat.startswith("1 error occurred:"):
        flat = flat.removeprefix("1 error occurred:").strip()
    return _SENSITIVE_RUN_RE.sub("[redacted]", flat)[:_MAX_DETAIL_CHARS]


@dataclass(frozen=True, slots=True)
class AppRoleCredentials:
    """An AppRole role id and secret id (``mount`` is where the AppRole auth method lives)."""

    role_id: str
    secret_id: str = field(repr=False)
    mount: str = "approle"


@dataclass(frozen=True, slots=True)
class VaultHealth:
    """``/v1/sys/health`` as a value: a sealed or standby server is an answer, not an error."""

    initialized: bool
    sealed: bool
    standby: bool
    version: str

    @property
    def ready(self) -> bool:
        """Initialized and unsealed: able to serve transit calls."""
        return self.initialized and not self.sealed


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    document: dict[str, Any] | None
    retry_after: str | None = None


@dataclass(slots=True)
class _Login:
    token: str
    renew_at: float | None  # time.monotonic() after which we log in again; None = never


class VaultClient:
    """Async client for transit (batch), KV v2, health and AppRole, over one pooled session.

    Create it anywhere; the HTTP session is opened on first use inside the running loop. Close it
    with ``await client.close()`` or ``async with``.
    """

    def __init__(
        self,
        addr: str,
        *,
        token: str | None = None,
        approle: AppRoleCredentials | None = None,
        mount_transit: str = "transit",
        mount_kv: str = "secret",
        timeout: float = 5.0,
        max_connections: int = 64,
        connect_timeout: float = 0.5,
    ) -> None:
        if token is None and approle is None:
            raise ValueError("VaultClient needs a token or AppRole credentials")
        self._addr = addr.rstrip("/")
        self._static_token = token
        self._approle = approle
        self._mount_transit = mount_transit.strip("/")
        self._mount_kv = mount_kv.strip("/")
        self._max_connections = max_connections
        # `connect` in aiohttp includes waiting for a free pooled connection, which is normal
        # under load, so only the socket connect is kept short: an unreachable Vault fails fast.
        self._timeout = aiohttp.ClientTimeout(
            total=timeout, sock_connect=min(connect_timeout, timeout)
        )
        self._session: aiohttp.ClientSession | None = None
        self._login: _Login | None = (
            _Login(token, renew_at=None) if token is not None and approle is None else None
        )
        self._login_lock = asyncio.Lock()
        self._closed = False
        self.logins = 0
        """AppRole logins performed so far (tests assert re-authentication happens once)."""

    def __repr__(self) -> str:
        auth = "approle" if self._approle is not None else "token"
        return f"VaultClient(addr={self._addr!r}, auth={auth})"

    @property
    def addr(self) -> str:
        return self._addr

    @property
    def token(self) -> str | None:
        """The token currently in use (None before the first AppRole login)."""
        return self._login.token if self._login is not None else None

    async def __aenter__(self) -> VaultClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- health -----------------------------------------------------------------------------

    async def health(self) -> VaultHealth:
        """Initialized / sealed / standby / version; raises only when Vault cannot be reached."""
        reply = await self._send("GET", "/v1/sys/health", None, None, _HEALTH_QUERY)
        document = reply.document
        if reply.status != 200 or document is None:
            raise _error_for_status(reply, "health")
        return VaultHealth(
            initialized=bool(document.get("initialized", False)),
            sealed=bool(document.get("sealed", True)),
            standby=bool(document.get("standby", False)),
            version=str(document.get("version", "")),
        )

    # -- transit, batched -------------------------------------------------------------------

    async def transit_encrypt(
        self, key: str, plaintexts: Sequence[bytes]
    ) -> list[str | VaultError]:
        """Encrypt each plaintext under ``key``; one ``vault:vN:…`` ciphertext per input."""
        items = [{"plaintext": _b64(p)} for p in plaintexts]
        results = await self._transit_batch("encrypt", key, items)
        return [_field(r, "ciphertext", "encrypt") for r in results]

    async def transit_decrypt(
        self, key: str, ciphertexts: Sequence[str]
    ) -> list[bytes | VaultError]:
        """Decrypt each ciphertext; a malformed or foreign ciphertext fails only its own item."""
        items = [{"ciphertext": c} for c in ciphertexts]
        results = await self._transit_batch("decrypt", key, items)
        out: list[bytes | VaultError] = []
        for result in results:
            value = _field(result, "plaintext", "decrypt")
            out.append(value if isinstance(value, VaultError) else _unb64(value, "decrypt"))
        return out

    async def transit_hmac(
        self,
        key: str,
        inputs: Sequence[bytes],
        *,
        algorithm: str = "sha2-256",
        key_version: int | None = None,
    ) -> list[str | VaultError]:
        """Keyed HMAC of each input (``vault:vN:…``), e.g. for card fingerprints."""
        items = [{"input": _b64(i)} for i in inputs]
        extra: dict[str, Any] = {}
        if key_version is not None:
            extra["key_version"] = key_version
        results = await self._transit_batch(
            "hmac", key, items, suffix="/" + _segment(algorithm), extra=extra
        )
        return [_field(r, "hmac", "hmac") for r in results]

    async def transit_rewrap(self, key: str, ciphertexts: Sequence[str]) -> list[str | VaultError]:
        """Re-encrypt each ciphertext under the key's latest version, without revealing it."""
        items = [{"ciphertext": c} for c in ciphertexts]
        results = await self._transit_batch("rewrap", key, items)
        return [_field(r, "ciphertext", "rewrap") for r in results]

    async def transit_datakey(self, key: str, *, bits: int = 256) -> tuple[bytes, str]:
        """A fresh data key: (plaintext bytes, its ciphertext under ``key``) for envelopes."""
        data = await self._call_data(
            "POST",
            f"/v1/{self._mount_transit}/datakey/plaintext/{_segment(key)}",
            {"bits": bits},
            "datakey",
        )
        plaintext = _unb64(str(data.get("plaintext", "")), "datakey")
        if isinstance(plaintext, VaultError):
            raise plaintext
        return plaintext, str(data["ciphertext"])

    # -- transit, key management ------------------------------------------------------------

    async def transit_create_key(
        self, key: str, *, key_type: str = "aes256-gcm96", key_size: int | None = None
    ) -> None:
        """Create ``key`` (a no-op if it exists: OpenBao answers 200 for an existing key).

        ``hmac`` keys need a size; it defaults to 32 bytes. Keys are never exportable.
        """
        body: dict[str, Any] = {"type": key_type, "exportable": False}
        if key_size is None and key_type == "hmac":
            key_size = 32
        if key_size is not None:
            body["key_size"] = key_size
        await self._call(
            "POST", f"/v1/{self._mount_transit}/keys/{_segment(key)}", body, "create key"
        )

    async def transit_rotate(self, key: str) -> None:
        """Add a new key version; new encryptions use it, old versions still decrypt."""
        await self._call(
            "POST", f"/v1/{self._mount_transit}/keys/{_segment(key)}/rotate", {}, "rotate"
        )

    async def transit_read_key(self, key: str) -> dict[str, Any]:
        """The key's metadata (``latest_version``, ``min_decryption_version``, ``keys`` ...)."""
        return await self._call_data(
            "GET", f"/v1/{self._mount_transit}/keys/{_segment(key)}", None, "read key"
        )

    async def transit_configure_key(
        self,
        key: str,
        *,
        min_decryption_version: int | None = None,
        min_encryption_version: int | None = None,
        deletion_allowed: bool | None = None,
        exportable: bool | None = None,
        auto_rotate_period: str | None = None,
    ) -> None:
        """Change the key's configuration; only the arguments given are sent."""
        settings = {
            "min_decryption_version": min_decryption_version,
            "min_encryption_version": min_encryption_version,
            "deletion_allowed": deletion_allowed,
            "exportable": exportable,
            "auto_rotate_period": auto_rotate_period,
        }
        body = {name: value for name, value in settings.items() if value is not None}
        await self._call(
            "POST", f"/v1/{self._mount_transit}/keys/{_segment(key)}/config", body, "configure"
        )

    # -- KV v2 ------------------------------------------------------------------------------

    async def kv_read(self, path: str) -> dict[str, str]:
        """The latest version's data at ``path``; raises ``VaultNotFoundError`` if none."""
        data = await self._call_data(
            "GET", f"/v1/{self._mount_kv}/data/{_kv_path(path)}", None, "kv read"
        )
        secret = data.get("data")
        if not isinstance(secret, dict):
            raise VaultNotFoundError("The vault has no data at that KV path.")
        return {str(k): str(v) for k, v in secret.items()}

    async def kv_write(self, path: str, data: Mapping[str, str]) -> int:
        """Write a new version at ``path``; returns its version number."""
        reply = await self._call_data(
            "POST", f"/v1/{self._mount_kv}/data/{_kv_path(path)}", {"data": dict(data)}, "kv write"
        )
        return int(reply.get("version", 0))

    # -- request plumbing -------------------------------------------------------------------

    async def _transit_batch(
        self,
        operation: str,
        key: str,
        items: list[dict[str, Any]],
        *,
        suffix: str = "",
        extra: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        if not items:
            return []
        body: dict[str, Any] = {"batch_input": items, **(extra or {})}
        path = f"/v1/{self._mount_transit}/{operation}/{_segment(key)}{suffix}"
        reply = await self._authenticated("POST", path, body)
        # A batch where some items failed comes back as 400 *with* per-item results; only a
        # reply without them is a whole-call failure.
        results = _batch_results(reply.document)
        if reply.status in (200, 400) and results is not None:
            if len(results) != len(items):
                raise VaultError(f"OpenBao returned a malformed transit {operation} batch.")
            return results
        raise _error_for_status(reply, f"transit {operation}")

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None, operation: str
    ) -> dict[str, Any] | None:
        reply = await self._authenticated(method, path, body)
        if 200 <= reply.status < 300:
            return reply.document
        raise _error_for_status(reply, operation)

    async def _call_data(
        self, method: str, path: str, body: dict[str, Any] | None, operation: str
    ) -> dict[str, Any]:
        document = await self._call(method, path, body, operation)
        data = document.get("data") if document is not None else None
        if not isinstance(data, dict):
            raise VaultError(f"OpenBao returned no data for {operation}.")
        return data

    async def _authenticated(self, method: str, path: str, body: dict[str, Any] | None) -> _Reply:
        token = await self._current_token()
        reply = await self._send(method, path, token, body)
        if (
            reply.status == 403
            and self._approle is not None
            and await self._relogin_after_403(token)
        ):
            # Exactly one repeat, with the fresh token; a second 403 is a real denial.
            token = await self._current_token()
            reply = await self._send(method, path, token, body)
        return reply

    async def _send(
        self,
        method: str,
        path: str,
        token: str | None,
        body: dict[str, Any] | None,
        params: Mapping[str, str] | None = None,
    ) -> _Reply:
        """One HTTP exchange; transport failures become ``VaultUnavailableError``."""
        headers = dict(_JSON_HEADERS)
        if token is not None:
            headers["X-Vault-Token"] = token
        payload = orjson.dumps(body) if body is not None else None
        try:
            async with self._http().request(
                method,
                self._addr + path,
                data=payload,
                params=params,
                headers=headers,
                # A standby's or dead leader's 307 must not be followed with the body.
                allow_redirects=False,
            ) as response:
                raw = await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            # Not chained: the transport error is enough to explain, and the request's locals
            # (plaintexts) must not travel with the exception.
            raise VaultUnavailableError(
                f"OpenBao is unreachable ({type(error).__name__}).",
                retry_after=_RETRY_AFTER_UNAVAILABLE,
            ) from None
        return _Reply(status, _parse_json(raw), retry_after)

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise VaultUnavailableError("The vault client is closed.", retry_after=None)
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=self._max_connections,
                keepalive_timeout=30,
                ttl_dns_cache=300,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
            )
        return self._session

    # -- authentication ---------------------------------------------------------------------

    async def _current_token(self) -> str | None:
        login = self._login
        if login is not None and (login.renew_at is None or time.monotonic() < login.renew_at):
            return login.token
        if self._approle is None:
            return self._static_token
        async with self._login_lock:
            login = self._login
            if login is None or (login.renew_at is not None and time.monotonic() >= login.renew_at):
                login = await self._approle_login()
            return login.token

    async def _relogin_after_403(self, refused_token: str | None) -> bool:
        """After a 403: log in again if the refused token is dead. True = repeat the call.

        The token is checked with ``lookup-self`` first, so a genuine policy denial costs one
        cheap read instead of a login (each login creates a token in OpenBao's storage).
        """
        async with self._login_lock:
            current = self._login.token if self._login is not None else None
            if current is not None and current != refused_token:
                return True  # someone else already replaced the dead token
            if refused_token is not None:
                lookup = await self._send("GET", "/v1/auth/token/lookup-self", refused_token, None)
                if lookup.status == 200:
                    return False  # the token is alive: the 403 was the policy speaking
            self._login = None
            await self._approle_login()
            return True

    async def _approle_login(self) -> _Login:
        """Log in with AppRole (caller holds ``_login_lock``)."""
        assert self._approle is not None
        credentials = self._approle
        reply = await self._send(
            "POST",
            f"/v1/auth/{_segment(credentials.mount)}/login",
            None,
            {"role_id": credentials.role_id, "secret_id": credentials.secret_id},
        )
        auth = reply.document.get("auth") if reply.document is not None else None
        if reply.status != 200 or not isinstance(auth, dict) or not auth.get("client_token"):
            if reply.status in (400, 403):
                raise VaultPermissionDeniedError("The vault refused the AppRole login.")
            raise _error_for_status(reply, "AppRole login")
        lease = float(auth.get("lease_duration") or 0)
        renew_at = None
        if lease > 0:
            # Log in again a little before expiry: 10 % of the TTL, at least 5 s, at most half.
            margin = min(max(lease * _RENEW_FRACTION, _RENEW_MARGIN_SECONDS), lease / 2)
            renew_at = time.monotonic() + lease - margin
        self._login = _Login(str(auth["client_token"]), renew_at)
        self.logins += 1
        return self._login


# -- module helpers ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, operation: str) -> bytes | VaultError:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return VaultError(f"OpenBao returned undecodable {operation} output.")


def _segment(name: str) -> str:
    """One URL path segment: key and mount names cannot smuggle ``/`` or ``..`` into the path."""
    if not name or name in {".", ".."}:
        raise ValueError("invalid Vault path segment")
    return quote(name, safe="")


def _kv_path(path: str) -> str:
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts:
        raise ValueError("empty KV path")
    return "/".join(_segment(p) for p in parts)


def _parse_json(raw: bytes) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def _batch_results(document: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    if document is None:
        return None
    data = document.get("data")
    if not isinstance(data, dict):
        return None
    results = data.get("batch_results")
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        return None
    return results


def _field(result: dict[str, Any], name: str, operation: str) -> str | VaultError:
    error = result.get("error")
    if error:
        return _item_error(str(error), operation)
    value = result.get(name)
    if not isinstance(value, str):
        return VaultError(f"OpenBao returned no {name} for a transit {operation} item.")
    return value


def _item_error(message: str, operation: str) -> VaultError:
    detail = f"Transit {operation} failed for this item: {safe_vault_message(message)}"
    if "not found" in message:
        return VaultNotFoundError(detail)
    return VaultError(detail)


def _first_error(document: dict[str, Any] | None) -> str:
    errors = document.get("errors") if document is not None else None
    if isinstance(errors, list) and errors:
        return str(errors[0])
    return ""


def _error_for_status(reply: _Reply, operation: str) -> VaultError:
    """Map one non-success HTTP answer to the vault error family."""
    status = reply.status
    message = _first_error(reply.document)
    reason = safe_vault_message(message)
    suffix = f": {reason}" if reason else "."
    if status == 503 and "sealed" in message.lower():
        return VaultSealedError(retry_after=_RETRY_AFTER_SEALED)
    if status == 403:
        return VaultPermissionDeniedError(f"The vault refused {operation}{suffix}")
    if status == 404 or (status == 400 and "not found" in message.lower()):
        return VaultNotFoundError(f"The vault has no such key or secret ({operation}).")
    if 300 <= status < 400 or status in (429, 502, 503, 504):
        retry_after = _RETRY_AFTER_UNAVAILABLE
        hint = reply.retry_after
        if hint is not None and hint.isascii() and hint.isdigit():
            retry_after = max(1, min(int(hint), 60))
        return VaultUnavailableError(
            f"OpenBao cannot serve {operation} now (HTTP {status}).", retry_after=retry_after
        )
    return VaultError(f"OpenBao answered HTTP {status} to {operation}{suffix}")
