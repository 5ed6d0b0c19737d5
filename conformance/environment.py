"""The run environment: where the provider is in each mode, and what a run shares.

``RunEnvironment`` is built from a ``RunConfig`` and, once started, holds everything the
scenarios of one run share:

- ``simulator`` mode: the connector's simulator (``tessera.simulators`` entry point) on
  loopback, the fault proxy in front of it (the runtime's base URL is the proxy's), and a webhook
  receiver the simulator delivers to;
- ``replay`` mode: the scenario cassettes (``conformance.cassettes``); the base URL is
  ``REPLAY_BASE`` and every scenario is served from its own recording;
- ``live`` mode: a provider sandbox at ``--base-url`` (default: the manifest's sandbox URL),
  credentials from the environment (``TESSERA_<CONNECTOR>_<FIELD>``) or Vault KV
  (``--vault-path``, with ``VAULT_ADDR``/``VAULT_TOKEN``), and a ``preflight`` probe.

Shared by every mode: the fake vault with the run's canary card, the leak scanner, the log
capture, the inputs resolver, the credentials, the contract validator (``--openapi``).
"""

from __future__ import annotations

import os
import shlex
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from conformance.cassettes import BUILTIN_CASSETTES, REPLAY_BASE, CassetteStore, Recording
from conformance.contract import ContractValidator, SpecLoadError
from conformance.inputs import Canary, Inputs
from conformance.leaks import LeakScanner
from conformance.logcapture import LogCapture
from conformance.proxy import FaultProxy
from conformance.sandboxes import SandboxProfile, SandboxProfileError, load_sandbox_profile
from conformance.simulators import RunningSimulator, find_simulator, start_simulator
from conformance.webhook_faults import WebhookReceiver
from normalization import TesseraError
from sdk import Category, Connector, Credentials, Environment, Manifest, Operation, load_registry
from sdk.client_tls import client_identity
from sdk.credentials import (
    credentials_from_environment,
    environment_variable,
    with_made_up_values,
)
from sdk.hostpolicy import is_local_url
from sdk.http import HttpSettings, client_tls_context, network_transport
from sdk.testing import FakeTokenRevealer, canary_cvc, canary_pan

__all__ = ["RECORD_COMMAND", "Mode", "RunConfig", "RunEnvironment", "SetupError", "record_command"]


class Mode(StrEnum):
    SIMULATOR = "simulator"
    REPLAY = "replay"
    LIVE = "live"


class SetupError(Exception):
    """The run cannot start (unknown connector, no simulator, bad profile file, ...)."""


@dataclass(frozen=True)
class RunConfig:
    connector: str
    profile: str | None = None
    mode: Mode = Mode.SIMULATOR
    base_url: str | None = None
    openapi: Path | None = None
    faults: bool = False
    overrides: tuple[Path, ...] = ()
    cassettes: Path | None = None
    record: bool = False
    vault_path: str | None = None
    select: tuple[str, ...] = ()
    #: How the options are spelled where the user typed them: ``--`` for the CLI (``--mode``),
    #: ``--tessera-`` for the pytest plugin (``--tessera-mode``). Every message that names an
    #: option names it this way, so the user can find what to change in what they typed.
    option_prefix: str = "--"

    def option(self, name: str) -> str:
        """The option ``name`` (``mode``, ``base-url``) as the user spells it: ``--mode`` on
        the command line, ``--tessera-mode`` in pytest."""
        return self.option_prefix + name


#: Recording is the CLI's (the pytest plugin does not record): hints to record name its command.
RECORD_COMMAND = "tessera conformance run"


def record_command(connector: str, directory: Path, select: str | None = None) -> str:
    """The command line that records ``connector``'s cassettes into ``directory`` (only the
    scenario ``select`` when given), quoted for a POSIX shell."""
    words = [
        *RECORD_COMMAND.split(),
        "--connector",
        connector,
        "--mode",
        "simulator",
        "--record",
        "--cassettes",
        str(directory),
    ]
    if select is not None:
        words += ["--select", select]
    return shlex.join(words)


class RunEnvironment:
    """See the module docstring. ``await start()`` before use, ``await close()`` after."""

    def __init__(
        self,
        config: RunConfig,
        *,
        known_scenarios: frozenset[str] | None = None,
        known_assertions: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.config = config
        self.mode = Mode(config.mode)
        # Each plugin loads in isolation: only this connector's own plugin being broken (or
        # missing) stops the run, with the reason.
        try:
            self.connector_class: type[Connector] = load_registry().get(config.connector)
        except TesseraError as exc:
            raise SetupError(str(exc)) from None
        self.manifest: Manifest = self.connector_class.manifest
        try:
            self.profile = Category(config.profile) if config.profile else self.manifest.category
        except ValueError:
            choices = ", ".join(c.value for c in Category)
            raise SetupError(
                f"{config.option('profile')} {config.profile}: unknown profile (choose from "
                f"{choices})."
            ) from None
        self._check_profile()
        self._check_options()
        try:
            self.sandbox: SandboxProfile = load_sandbox_profile(
                config.connector,
                self.mode.value,
                config.overrides,
                known_scenarios=known_scenarios,
                known_assertions=known_assertions,
                option_prefix=config.option_prefix,
            )
        except SandboxProfileError as exc:
            raise SetupError(str(exc)) from None
        self.revealer = FakeTokenRevealer()
        self.canary = Canary(canary_pan(), canary_cvc())
        self.scanner = LeakScanner()
        self.scanner.add("canary PAN", self.canary.pan, "pan")
        self.scanner.add("canary CVC", self.canary.cvc, "cvc")
        self.logs = LogCapture(redact=self.scanner.redact)
        self.inputs = Inputs(self.sandbox, self.manifest, self.revealer, self.canary, self.scanner)
        self.credentials = Credentials()
        self.contract: ContractValidator | None = None
        self.simulator: RunningSimulator | None = None
        self.proxy: FaultProxy | None = None
        self.receiver: WebhookReceiver | None = None
        self.cassettes: CassetteStore | None = None
        self.base_url = ""
        self.test_mode = True
        self.exception_texts: list[tuple[str, str]] = []
        if self.mode is Mode.LIVE and not config.vault_path:
            # Read and refuse now, not after the run started: the variables are all there is.
            self.credentials = self._live_credentials(dict(self.sandbox.credentials))

    # -- options --------------------------------------------------------------------------------

    @property
    def cassette_dir(self) -> Path:
        """Where cassettes are read (replay; default: the kit's own) or written (``--record``,
        which always names its directory: the kit's own is never written by default)."""
        return self.config.cassettes or BUILTIN_CASSETTES / self.manifest.id

    def _check_profile(self) -> None:
        """Refuse a profile other than the manifest's category, the profile the connector is
        held to: none of its scenarios would apply (skipped, "not applicable") and every declared
        capability would fail coverage, burying the one mistake under a page of failures.

        Trying a few scenarios of another profile on a connector that also declares their
        operations (a card acquirer that pays out) is legitimate, and stays possible with
        ``--select``: a partial run, whose coverage is not judged."""
        config, category = self.config, self.manifest.category
        if self.profile is category or config.select:
            return
        option = config.option("profile")
        raise SetupError(
            f"{option} {self.profile.value} does not match connector {self.manifest.id!r}, "
            f"whose manifest's category is {category.value}: its scenarios would not apply and "
            f"every declared capability would go uncovered. Leave {option} out (it defaults to "
            f"the manifest's category). To try some {self.profile.value} scenarios on it "
            f"anyway, name them: {RECORD_COMMAND} --connector {self.manifest.id} --profile "
            f"{self.profile.value} --select PATTERN (coverage is not judged then)."
        )

    def _check_options(self) -> None:
        """Refuse option combinations the run would silently ignore, and a replay with nothing
        to replay: each would otherwise end in a run that proves something else than asked."""
        config, mode, option = self.config, self.mode, self.config.option
        if config.record and mode is not Mode.SIMULATOR:
            raise SetupError(
                f"{option('record')} records a simulator run: use it with {option('mode')} "
                "simulator."
            )
        if config.record and config.cassettes is None:
            # The default directory is the kit's own, inside the installed package: recording
            # there would overwrite the shipped cassettes (or fail, read-only), never what QA meant.
            raise SetupError(
                f"{option('record')} needs {option('cassettes')} DIR: name the directory to "
                f"write the cassettes to (then replay them with {option('mode')} replay "
                f"{option('cassettes')} DIR)."
            )
        if mode is not Mode.LIVE:
            for name, value in (("base-url", config.base_url), ("vault-path", config.vault_path)):
                if value:
                    raise SetupError(
                        f"{option(name)} is for {option('mode')} live; this {mode.value} run "
                        "would ignore it."
                    )
        if config.faults and mode is not Mode.SIMULATOR:
            raise SetupError(
                f"{option('faults')} injects faults through the kit's proxy in front of its "
                f"simulator: use it with {option('mode')} simulator (this {mode.value} run would "
                "skip every fault scenario)."
            )
        if mode is Mode.SIMULATOR and config.cassettes is not None and not config.record:
            raise SetupError(
                f"{option('cassettes')} without {option('record')} does nothing in simulator "
                f"mode: add {option('record')} to write cassettes, or use {option('mode')} replay "
                "to replay them."
            )
        if mode is Mode.REPLAY:
            directory = self.cassette_dir
            if not directory.is_dir():
                raise SetupError(f"No cassette directory {directory} ({self._record_hint()}).")
            if not any(directory.glob("*.json")):
                raise SetupError(f"No cassettes in {directory} ({self._record_hint()}).")

    def _record_hint(self) -> str:
        """How to record the cassettes a replay did not find. With ``--cassettes DIR``, into
        that directory; without it the replay read the kit's own directory, which only holds the
        cassettes shipped with the kit: a connector's are recorded into a directory of the
        user's (recording into the installed kit is refused), then replayed from there."""
        connector, option = self.manifest.id, self.config.option
        if self.config.cassettes is not None:
            return f"record them with: {record_command(connector, self.config.cassettes)}"
        return (
            f"without {option('cassettes')}, the kit's own cassette directory is read. Record "
            f"{connector}'s cassettes into a directory of yours: "
            f"{record_command(connector, Path('DIR'))}, then replay them with "
            f"{option('mode')} replay {option('cassettes')} DIR"
        )

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start what the mode needs; on failure, ``close()`` still undoes what did start."""
        self.logs.start()
        if self.config.openapi is not None:
            try:
                self.contract = ContractValidator.load(self.config.openapi)
            except SpecLoadError as exc:
                raise SetupError(str(exc)) from None
        self.credentials = await self._credentials()
        for name in self.credentials:
            self.scanner.add(f"credential {name}", self.credentials.reveal(name), "credential")
        base_path = urlsplit(self.manifest.base_urls.sandbox).path.rstrip("/")
        if self.mode is Mode.SIMULATOR:
            await self._start_simulator(base_path)
        elif self.mode is Mode.REPLAY:
            self.cassettes = CassetteStore(self.cassette_dir)
            self.base_url = REPLAY_BASE + base_path
        else:
            self.base_url = (
                self.config.base_url or self.manifest.base_url(Environment.SANDBOX)
            ).rstrip("/")
            self.test_mode = is_local_url(self.base_url)
        if self.config.record:
            self.cassettes = CassetteStore(self.cassette_dir)

    async def _start_simulator(self, base_path: str) -> None:
        factory = find_simulator(self.manifest.id)
        if factory is None:
            raise SetupError(
                f"Connector {self.manifest.id!r} has no simulator (entry point group "
                f"'tessera.simulators'); use {self.config.option('mode')} live "
                f"{self.config.option('base-url')} URL, or {self.config.option('mode')} replay."
            )
        if Operation.WEBHOOKS in self.manifest.operations:
            self.receiver = await WebhookReceiver().start()
        self.simulator = await start_simulator(
            factory,
            self.sandbox.simulator,
            webhook_url=self.receiver.url if self.receiver else None,
        )
        if not self.simulator.delivers_webhooks and self.receiver is not None:
            await self.receiver.close()
            self.receiver = None
        self.proxy = await FaultProxy(self.simulator.host, self.simulator.port).start()
        self.base_url = self.proxy.url + base_path

    async def close(self) -> None:
        try:
            if self.proxy is not None:
                await self.proxy.close()
            if self.simulator is not None:
                await self.simulator.close()
            if self.receiver is not None:
                await self.receiver.close()
        finally:
            self.logs.stop()

    # -- credentials ----------------------------------------------------------------------------

    async def _credentials(self) -> Credentials:
        values = dict(self.sandbox.credentials)
        if self.mode is Mode.LIVE:
            if not self.config.vault_path:
                return self.credentials  # read from the environment, and checked, by __init__
            values.update(await _vault_kv(self.config.vault_path, self.config.option("vault-path")))
            return self._live_credentials(values)
        return Credentials(with_made_up_values(self.manifest, values, "conformance"))

    def _live_credentials(self, values: dict[str, str]) -> Credentials:
        """``values`` with the ``TESSERA_<CONNECTOR>_<FIELD>`` variables over them, checked
        against the manifest (``SetupError`` naming the variables when one is missing)."""
        manifest = self.manifest
        values.update(credentials_from_environment(manifest))
        credentials = Credentials(values)
        try:
            credentials.check_against(manifest)
        except TesseraError as exc:
            variables = ", ".join(
                environment_variable(manifest.id, f.name)
                for f in manifest.credentials
                if f.required
            )
            raise SetupError(
                f"{exc} Set {variables} or use {self.config.option('vault-path')}."
            ) from None
        return credentials

    # -- per scenario ---------------------------------------------------------------------------

    def recording(self, instance_id: str) -> Recording | None:
        if self.mode is not Mode.REPLAY or self.cassettes is None:
            return None
        return self.cassettes.load(instance_id)

    def network_transport(self, recording: Recording | None) -> httpx.AsyncBaseTransport:
        if recording is not None:
            return recording.transport()
        return network_transport(HttpSettings(), test_mode=self.test_mode)

    async def preflight(self) -> str | None:
        """Why the live sandbox looks unhealthy, or None. Other modes are always healthy."""
        if self.mode is not Mode.LIVE:
            return None
        url = self.base_url + "/" + self.sandbox.preflight_path.lstrip("/")
        timeout = self.sandbox.preflight_timeout
        probe = f"{self.sandbox.preflight_method} {url}"
        # A bank that wants a client certificate (mutual TLS) gets it from the probe too.
        verify: ssl.SSLContext | bool = True
        if self.manifest.client_tls and url.startswith("https://"):
            try:
                verify = client_tls_context(client_identity(self.credentials))
            except TesseraError as exc:
                return f"sandbox not probed: {exc}"
        try:
            async with httpx.AsyncClient(timeout=timeout, trust_env=False, verify=verify) as client:
                response = await client.request(self.sandbox.preflight_method, url)
        except httpx.HTTPError as exc:
            return f"sandbox unhealthy: {probe} failed ({type(exc).__name__})"
        if response.status_code >= 500:
            return f"sandbox unhealthy: {probe} answered {response.status_code}"
        return None


async def _vault_kv(path: str, option: str = "--vault-path") -> dict[str, str]:
    """Credentials from a Vault/OpenBao KV v2 secret (``mount/path``); ``option`` is how the
    user spelled ``--vault-path``, for the error."""
    address, token = os.environ.get("VAULT_ADDR"), os.environ.get("VAULT_TOKEN")
    if not address or not token:
        raise SetupError(f"{option} needs VAULT_ADDR and VAULT_TOKEN in the environment.")
    mount, _, rest = path.strip("/").partition("/")
    url = f"{address.rstrip('/')}/v1/{mount}/data/{rest}"
    try:
        async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
            response = await client.get(url, headers={"X-Vault-Token": token})
    except httpx.HTTPError as exc:
        raise SetupError(f"Vault at {address} did not answer ({type(exc).__name__}).") from None
    if response.status_code != 200:
        raise SetupError(f"Vault refused to read {path!r} (HTTP {response.status_code}).")
    data = response.json().get("data", {}).get("data", {})
    return {str(k): str(v) for k, v in data.items()}
