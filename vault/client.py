"""The async OpenBao/Vault client for the request path.

One pool of keep-alive HTTP/1.1 connections per client, spoken by the small transport at the end
of this module (hvac is synchronous and httpx's AsyncClient collapsed at 64 in flight in our
measurements, see PERFORMANCE.md). It replaced a pooled ``aiohttp.ClientSession``: a call is a
JSON POST to one host, and aiohttp's client machinery cost about 4x the CPU of the exchange itself
(measured here: ~440 vs ~110 us per one-item transit call). Group commit keeps batches small at
moderate load, so that per-call cost was paid by a handful of tokens each. Transit calls always
use ``batch_input`` and return one result per input, in order: a failed item is a ``VaultError``
*value* in the list, so one bad item never fails its neighbours.

Errors are mapped here, once (RELIABILITY.md, vault faults)::

    connection refused / reset, DNS, timeout, malformed HTTP,
    3xx, 429, 502, 504                                             VaultUnavailableError (retry 1 s)
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

A refused login is not tried again at once. OpenBao locks a role id out (every process sharing it,
the ones whose secret id is good too) after 5 failed logins within 15 minutes, and a wrong or
destroyed secret id does not heal by retrying. So after a refusal the client answers every caller
with that refusal, without a login, for 30 s, then 2, 5 and 16 minutes (``_LOGIN_BACKOFF``). One
process alone then stays at 4 failures per 15 minutes. OpenBao answers 400 to wrong credentials
and 403 to a locked-out role (even with the right secret id); a locked-out role is tried again
every minute, so a gateway is back within a minute of an operator's unlock. The error says which
it was, and its ``retry_after`` says when the next login will be tried.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import math
import re
import ssl
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, cast
from urllib.parse import quote, urlencode, urlsplit

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
# After the n-th refused login in a row, no login for _LOGIN_BACKOFF[n - 1] seconds (the last
# repeats): 4 failures in OpenBao's default 15-minute lockout window, never 5.
_LOGIN_BACKOFF: Final = (30.0, 120.0, 300.0, 960.0)
# A locked-out role (403 on login) is asked again this often: the lockout ends on its own or by
# an operator's unlock, and asking a locked role does not extend its lockout.
_LOCKED_OUT_RETRY: Final = 60.0
_HEALTH_QUERY: Final = {
    "standbycode": "200",
    "sealedcode": "200",
    "uninitcode": "200",
    "perfstandbyok": "true",
    "drsecondarycode": "200",
    "performancestandbycode": "200",
}
# Client keep-alive: shorter than OpenBao's listener idle timeout (5 min), so the server never
# closes a connection we are about to reuse.
_KEEPALIVE_SECONDS: Final = 30.0

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
        # Waiting for a free pooled connection is normal under load and counts against the
        # total only; the socket connect alone is kept short, so an unreachable Vault fails fast.
        self._total_timeout = timeout
        self._connect_timeout = min(connect_timeout, timeout)
        try:
            self._origin = _origin_of(self._addr)
        except ValueError as exc:
            raise ValueError(f"the Vault address {exc}") from None
        self._pool: _Pool | None = None
        self._login: _Login | None = (
            _Login(token, renew_at=None) if token is not None and approle is None else None
        )
        self._login_lock = asyncio.Lock()
        self._closed = False
        self.logins = 0
        """AppRole logins performed so far (tests assert re-authentication happens once)."""
        #: Login requests sent (refused ones included).
        self.login_attempts = 0
        self._refused_logins = 0
        self._login_refusal: tuple[str, float] | None = None  # (detail, no login before)

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
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

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

    # -- credentials ------------------------------------------------------------------------

    async def check_credentials(self) -> None:
        """Return if Vault accepts this client's credentials; raise ``VaultPermissionDeniedError``
        if it refuses them (other failures raise as any call does: ``VaultUnavailableError``,
        ``VaultSealedError``, ...).

        One ``lookup-self`` of the token in use (granted by Vault's ``default`` policy). With
        AppRole, the token comes from a login made now if there is no live one; a lookup refused
        with 403 (token revoked or expired, or a policy without ``lookup-self``) is settled by one
        fresh login, as for any call: accepted means the credentials are good and the client
        holds a live token again. A static token refused is refused.
        """
        token = await self._current_token()  # AppRole: logs in if needed, raises if refused
        reply = await self._send("GET", "/v1/auth/token/lookup-self", token, None)
        if reply.status == 200:
            return
        if reply.status == 403 and self._approle is not None:
            await self._relogin_after_403(token)  # raises if the login is refused
            return
        raise _error_for_status(reply, "token lookup")

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
        wrapped = data.get("ciphertext")
        if not isinstance(wrapped, str) or not wrapped.startswith("vault:v"):
            raise VaultError("The vault answered datakey without a wrapped key.")
        return plaintext, wrapped

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
        origin = self._origin
        target = origin.base_path + path
        if params:
            target += "?" + urlencode(params)
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n"
            "Content-Type: application/json\r\nX-Vault-Request: true\r\n"
        )
        if token is not None:
            if not token.isascii() or "\r" in token or "\n" in token:
                raise VaultPermissionDeniedError("The vault token is malformed.")
            head += f"X-Vault-Token: {token}\r\n"
        payload = orjson.dumps(body) if body is not None else b""
        if body is not None:
            head += f"Content-Length: {len(payload)}\r\n"
        request = (head + "\r\n").encode("latin-1") + payload
        try:
            async with asyncio.timeout(self._total_timeout):
                status, headers, raw = await self._http().exchange(request)
        except (OSError, TimeoutError, _MalformedResponse) as error:
            # Not chained: the transport error is enough to explain, and the request's locals
            # (plaintexts) must not travel with the exception.
            raise VaultUnavailableError(
                f"OpenBao is unreachable ({type(error).__name__}).",
                retry_after=_RETRY_AFTER_UNAVAILABLE,
            ) from None
        return _Reply(status, _parse_json(raw), headers.get("retry-after"))

    def _http(self) -> _Pool:
        if self._closed:
            raise VaultUnavailableError("The vault client is closed.", retry_after=None)
        loop = asyncio.get_running_loop()
        pool = self._pool
        if pool is None or pool.loop is not loop:
            if pool is not None:
                pool.close()
            pool = self._pool = _Pool(
                self._origin,
                loop,
                limit=self._max_connections,
                connect_timeout=self._connect_timeout,
            )
        return pool

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
        """Log in with AppRole (caller holds ``_login_lock``); after a refusal, not before the
        backoff (the module docstring) is over."""
        assert self._approle is not None
        credentials = self._approle
        if self._login_refusal is not None:
            detail, not_before = self._login_refusal
            left = not_before - time.monotonic()
            if left > 0:
                raise VaultPermissionDeniedError(detail, retry_after=math.ceil(left))
        self.login_attempts += 1
        reply = await self._send(
            "POST",
            f"/v1/auth/{_segment(credentials.mount)}/login",
            None,
            {"role_id": credentials.role_id, "secret_id": credentials.secret_id},
        )
        auth = reply.document.get("auth") if reply.document is not None else None
        if reply.status != 200 or not isinstance(auth, dict) or not auth.get("client_token"):
            if reply.status in (400, 403):
                raise self._login_refused(locked_out=reply.status == 403)
            raise _error_for_status(reply, "AppRole login")
        self._refused_logins = 0
        self._login_refusal = None
        lease = float(auth.get("lease_duration") or 0)
        renew_at = None
        if lease > 0:
            # Log in again a little before expiry: 10 % of the TTL, at least 5 s, at most half.
            margin = min(max(lease * _RENEW_FRACTION, _RENEW_MARGIN_SECONDS), lease / 2)
            renew_at = time.monotonic() + lease - margin
        self._login = _Login(str(auth["client_token"]), renew_at)
        self.logins += 1
        return self._login

    def _login_refused(self, *, locked_out: bool) -> VaultPermissionDeniedError:
        """Remember a refused login (no other before the backoff is over) and say what it was."""
        self._refused_logins += 1
        if locked_out:
            wait = _LOCKED_OUT_RETRY
            detail = (
                "The vault refused the AppRole login: the role is locked out after repeated "
                "failed logins (OpenBao's user lockout; `bao read sys/locked-users`)."
            )
        else:
            wait = _LOGIN_BACKOFF[min(self._refused_logins, len(_LOGIN_BACKOFF)) - 1]
            detail = (
                "The vault refused the AppRole login: the role id or secret id is wrong, or "
                "the secret id was destroyed, expired or used up."
            )
        self._login_refusal = (detail, time.monotonic() + wait)
        return VaultPermissionDeniedError(detail, retry_after=wait)


# -- module helpers ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    # binascii directly: base64.b64encode is a Python wrapper around this same call.
    return binascii.b2a_base64(data, newline=False).decode("ascii")


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


# -- the HTTP/1.1 transport ---------------------------------------------------------------------
#
# Just what the client needs: requests to one origin, JSON in and out, keep-alive connections,
# responses framed by Content-Length, chunked encoding or the end of the connection. No redirects
# (a standby's 307 is an answer, see ``_error_for_status``), no compression, no cookies, no
# proxies. TLS with the default context (system CAs, hostname checked) for https:// addresses.

#: A response head larger than this is refused (OpenBao's are a few hundred bytes).
_MAX_HEAD_BYTES: Final = 64 * 1024


class _MalformedResponse(Exception):
    """The bytes that came back are not an HTTP/1.1 response we can frame."""


@dataclass(frozen=True, slots=True)
class _Origin:
    tls: bool
    host: str
    port: int
    host_header: str
    base_path: str


def check_vault_addr(addr: str) -> str:
    """``addr`` if the client can use it as Vault's address, else ValueError saying why.

    The configuration checks with this when the file is read, so a bad ``[vault] addr`` is a
    one-line error at start-up rather than a traceback from the first Vault call.
    """
    _origin_of(addr.rstrip("/"))
    return addr


def _origin_of(addr: str) -> _Origin:
    parts = urlsplit(addr)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8200"
        )
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or fragment")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry a user name or password (Vault takes a token)")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("must have a port from 1 to 65535, if any")
    return _Origin(
        tls=parts.scheme == "https",
        host=parts.hostname,
        port=port or (443 if parts.scheme == "https" else 80),
        host_header=parts.netloc,
        base_path=parts.path.rstrip("/"),
    )


def _parse_response(
    buffer: bytearray, eof: bool
) -> tuple[int, dict[str, str], bytes, int, bool] | None:
    """(status, headers, body, bytes consumed, keep-alive) of the first complete response in
    ``buffer``, or None while it is incomplete. Interim (1xx) responses are skipped."""
    start = 0
    while True:
        end = buffer.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buffer) - start > _MAX_HEAD_BYTES:
                raise _MalformedResponse("response head too large")
            if eof:
                raise _MalformedResponse("connection closed before a response")
            return None
        lines = bytes(buffer[start:end]).decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if (
            not version.startswith("HTTP/1.")
            or len(code) != 3
            or not (code.isascii() and code.isdigit())
        ):
            raise _MalformedResponse("not an HTTP/1.x status line")
        status = int(code)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise _MalformedResponse("malformed header line")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body_start = end + 4
        if 100 <= status < 200:
            start = body_start
            continue
        break
    keep_alive = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    if status in (204, 304):
        return status, headers, b"", body_start, keep_alive
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _dechunk(buffer, body_start, eof, status, headers, keep_alive)
    length = headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise _MalformedResponse("bad Content-Length")
        stop = body_start + int(length)
        if len(buffer) < stop:
            if eof:
                raise _MalformedResponse("connection closed inside a response")
            return None
        return status, headers, bytes(buffer[body_start:stop]), stop, keep_alive
    if not eof:  # framed by the end of the connection
        return None
    return status, headers, bytes(buffer[body_start:]), len(buffer), False


def _dechunk(
    buffer: bytearray,
    position: int,
    eof: bool,
    status: int,
    headers: dict[str, str],
    keep_alive: bool,
) -> tuple[int, dict[str, str], bytes, int, bool] | None:
    chunks: list[bytes] = []
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            break
        size_text = bytes(buffer[position:line_end]).partition(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _MalformedResponse("bad chunk size") from None
        position = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", position - 2)
            if trailer_end < 0:
                break
            return status, headers, b"".join(chunks), trailer_end + 4, keep_alive
        if len(buffer) < position + size + 2:
            break
        chunks.append(bytes(buffer[position : position + size]))
        position += size
        if buffer[position : position + 2] != b"\r\n":
            raise _MalformedResponse("chunk not followed by CRLF")
        position += 2
    if eof:
        raise _MalformedResponse("connection closed inside a chunked response")
    return None


class _Connection(asyncio.Protocol):
    """One keep-alive connection: a request is written, its response is framed from the bytes
    that arrive; one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.reusable = True
        self._buffer = bytearray()
        self._eof = False
        self._waiter: asyncio.Future[tuple[int, dict[str, str], bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: other event loops' transports (uvloop's) are not
        # subclasses of asyncio.Transport, yet have what is used here (write, close).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None:
            self.reusable = False  # nothing was asked: the connection is out of step
            return
        self._try_complete()

    def eof_received(self) -> bool | None:
        self._eof = True
        self.reusable = False
        self._try_complete()
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self.reusable = False
        self._try_complete()

    def _try_complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            parsed = _parse_response(self._buffer, self._eof)
        except _MalformedResponse as error:
            self.reusable = False
            if self._eof and not self._buffer:
                waiter.set_exception(ConnectionResetError("OpenBao closed the connection"))
            else:
                waiter.set_exception(error)
            return
        if parsed is None:
            return
        status, headers, body, consumed, keep_alive = parsed
        del self._buffer[:consumed]
        if not keep_alive or self._buffer:
            self.reusable = False
        self._waiter = None
        waiter.set_result((status, headers, body))

    async def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        assert self.transport is not None
        waiter: asyncio.Future[tuple[int, dict[str, str], bytes]]
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        self._try_complete()  # the connection may have closed before the write
        return await waiter

    @property
    def sent_nothing_back(self) -> bool:
        return not self._buffer

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            # RuntimeError: its event loop is gone (a client reused across loops).
            with contextlib.suppress(RuntimeError):
                self.transport.close()


class _Pool:
    """Keep-alive connections to one origin, at most ``limit`` open; callers beyond that wait."""

    def __init__(
        self,
        origin: _Origin,
        loop: asyncio.AbstractEventLoop,
        *,
        limit: int,
        connect_timeout: float,
    ) -> None:
        self.loop = loop
        self._origin = origin
        self._limit = max(1, limit)
        self._connect_timeout = connect_timeout
        self._ssl = ssl.create_default_context() if origin.tls else None
        self._idle: deque[_Connection] = deque()
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send ``request`` and return (status, headers, body).

        A reused connection that the server closed before answering is retried once on a
        fresh one (the request never reached OpenBao's handler); any other failure is raised.
        """
        connection, reused = await self._acquire()
        try:
            reply = await connection.exchange(request)
        except (ConnectionError, _MalformedResponse):
            retry = reused and connection.sent_nothing_back
            self._release(connection, reusable=False)
            if not retry:
                raise
            connection, _ = await self._acquire(fresh=True)
            try:
                reply = await connection.exchange(request)
            except BaseException:
                self._release(connection, reusable=False)
                raise
        except BaseException:  # cancelled or timed out mid-exchange: state unknown
            self._release(connection, reusable=False)
            raise
        self._release(connection, reusable=connection.reusable)
        return reply

    async def _acquire(self, *, fresh: bool = False) -> tuple[_Connection, bool]:
        while True:
            if self._closed:
                raise ConnectionAbortedError("the pool is closed")
            now = time.monotonic()
            while self._idle and not fresh:
                connection = self._idle.pop()  # the most recently used: least likely stale
                if connection.reusable and now - connection.idle_since < _KEEPALIVE_SECONDS:
                    return connection, True
                connection.close()
                self._open -= 1
            if self._open < self._limit:
                break
            if fresh and self._idle:
                self._idle.popleft().close()
                self._open -= 1
                break
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if not waiter.cancelled():
                    self._wake()  # pass the wake-up on
                raise
        self._open += 1
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await self.loop.create_connection(
                    _Connection,
                    self._origin.host,
                    self._origin.port,
                    ssl=self._ssl,
                    server_hostname=self._origin.host if self._ssl is not None else None,
                )
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        return protocol, False

    def _release(self, connection: _Connection, *, reusable: bool) -> None:
        if reusable and not self._closed:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
            self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
            self._open -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
