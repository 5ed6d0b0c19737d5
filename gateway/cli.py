"""The ``tessera`` command line.

Subcommands are thin: each parses its arguments and hands off to the module that owns the work,
imported lazily so ``tessera --help`` stays fast::

    tessera dev [--port P] [--data-dir D]        OpenBao dev server + gateway on SQLite
    tessera serve --config FILE [--workers N]    the gateway against an existing Vault and DB
    tessera vault provision --config FILE        transit, KV, policies, AppRole (idempotent)
    tessera merchants create NAME --config FILE  a merchant, its Vault keys and an API key
    tessera merchants webhook ID URL --config F  where signed payment notifications go
    tessera merchants list [--json] --config F   merchants, live key counts, webhook URLs
    tessera merchants keys create|list|revoke ID an API key: new (printed once), ids, revoke
    tessera merchants delete ID --yes --config F an unused merchant and its keys (audited)
    tessera keys rotate [--tenant T] [--settle-seconds S] --config F
                                              rotate transit keys and rewrap ciphertext
    tessera audit verify --config FILE           check the audit log's hash chain
    tessera reconcile --config FILE              settle unknown/pending attempts once
    tessera connector new NAME --category C      scaffold a connector package
    tessera connector list                       installed connectors and their manifests
    tessera conformance run --connector NAME     prove a connector (reports: JUnit/JSON/HTML)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config import Settings

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]


def _version() -> str:
    try:
        return version("tessera-pay")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def _admin_settings(args: argparse.Namespace, *, database: bool = True) -> Settings:
    """For an admin command: the gateway's JSON logs on stderr, through its card-data
    redaction, at ``--log-level`` (the command's output stays alone on stdout), and the
    configuration from ``--config`` and ``TESSERA_*``.

    ``database``: the command reads or writes the gateway's database. Then a database must be
    named (``--config`` or ``TESSERA_DATABASE_URL``): the default would be a new, empty SQLite
    file in the current directory, where ``audit verify`` finds an intact empty log and
    ``keys rotate`` no merchants, both exiting 0 (a cron job missing its flag passed silently).
    """
    from gateway.config import ConfigError, load_settings
    from gateway.observability import configure_logging

    configure_logging(args.log_level)
    settings = load_settings(args.config)
    if database and args.config is None and "url" not in settings.database.model_fields_set:
        raise ConfigError(
            "this command needs the gateway's database: pass --config FILE (the gateway's "
            "configuration) or set TESSERA_DATABASE_URL."
        )
    return settings


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _settle_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be from 0 to 3600 seconds, not {value:g}")
    return value


def _dev(args: argparse.Namespace) -> int:
    from gateway.devmode import run_dev
    from gateway.observability import configure_logging

    configure_logging(args.log_level)
    return run_dev(
        port=args.port,
        data_dir=Path(args.data_dir),
        connector=args.connector,
        connector_url=args.connector_url,
    )


def _serve(args: argparse.Namespace) -> int:
    from gateway.config import load_settings
    from gateway.observability import configure_logging
    from gateway.server import check_serve_settings, serve

    configure_logging(args.log_level)
    settings = load_settings(args.config)
    # A configured connector not installed, or whose plugin is broken: exit 2 here, before the
    # start-up checks and the workers (each would fail on it); unrelated broken plugins are only
    # logged, by each process that builds its connectors.
    from gateway.connector_pool import installed_connectors

    installed_connectors(settings.connectors, warn=False)
    if args.workers is not None:
        settings = settings.model_copy(
            update={"server": settings.server.model_copy(update={"workers": args.workers})}
        )
    check_serve_settings(settings)  # a random port for several workers, no Vault credentials
    return serve(settings, log_level=args.log_level)


def _vault_provision(args: argparse.Namespace) -> int:
    from gateway.commands.admin import vault_provision

    settings = _admin_settings(args, database=False)
    admin_file = Path(args.admin_secret_id_file) if args.admin_secret_id_file else None
    return vault_provision(settings, admin_secret_id_file=admin_file)


def _merchants_create(args: argparse.Namespace) -> int:
    from gateway.commands.admin import merchants_create

    return merchants_create(_admin_settings(args), args.name, dedup=args.dedup)


def _merchants_webhook(args: argparse.Namespace) -> int:
    from gateway.commands.admin import merchants_webhook_set

    return merchants_webhook_set(_admin_settings(args), args.merchant_id, args.url)


def _merchants_list(args: argparse.Namespace) -> int:
    from gateway.commands.admin import merchants_list

    return merchants_list(_admin_settings(args), as_json=args.json)


def _merchants_delete(args: argparse.Namespace) -> int:
    from gateway.commands.admin import merchants_delete

    return merchants_delete(
        _admin_settings(args), args.merchant_id, confirmed=args.yes, reason=args.reason
    )


def _merchants_keys_create(args: argparse.Namespace) -> int:
    from gateway.commands.admin import merchants_keys_create

    return merchants_keys_create(_admin_settings(args), args.merchant_id, reason=args.reason)


def _merchants_keys_list(args: argparse.Namespace) -> int:
    from gateway.commands.admin import merchants_keys_list

    return merchants_keys_list(_admin_settings(args), args.merchant_id, as_json=args.json)


def _merchants_keys_revoke(args: argparse.Namespace) -> int:
    from gateway.commands.admin import merchants_keys_revoke

    return merchants_keys_revoke(
        _admin_settings(args), args.merchant_id, args.key, every=args.all, reason=args.reason
    )


def _keys_rotate(args: argparse.Namespace) -> int:
    from gateway.commands.admin import rotate_keys

    return rotate_keys(_admin_settings(args), args.tenant, settle_seconds=args.settle_seconds)


def _audit_verify(args: argparse.Namespace) -> int:
    from gateway.commands.admin import audit_verify

    return audit_verify(_admin_settings(args), anchor=args.anchor)


def _reconcile(args: argparse.Namespace) -> int:
    from gateway.commands.admin import reconcile

    return reconcile(_admin_settings(args))


def _attempts_list(args: argparse.Namespace) -> int:
    from gateway.commands.admin import attempts_list

    return attempts_list(_admin_settings(args), limit=args.limit)


def _attempts_settle(args: argparse.Namespace) -> int:
    from gateway.commands.admin import attempts_settle

    return attempts_settle(
        _admin_settings(args),
        args.attempt_id,
        happened=args.happened,
        reason=args.reason,
        status=args.status,
        provider_reference=args.provider_reference,
    )


def _conformance_run(args: argparse.Namespace) -> int:
    from conformance import cli as conformance_cli

    return conformance_cli.run(args)


def _connector_new(args: argparse.Namespace) -> int:
    """Scaffold a connector project.

    What the generator refuses (a name that is no usable slug, an id already installed, a
    project directory that already exists) is the operator's argument to fix: exit 2 with one
    ``tessera:`` line, as for argparse's own argument errors. A project that cannot be written
    (permissions, a file where a directory should be) is a failed command: exit 1.
    """
    from normalization import ConnectorConfigurationError
    from sdk.generator import generate_connector, slugify

    try:
        package = generate_connector(args.name, args.category, Path(args.path))
    except ConnectorConfigurationError as exc:
        print(f"tessera: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # Not a database error: main() would let it through as a traceback.
        reason = exc.strerror or type(exc).__name__
        print(
            f"tessera: cannot write the connector project under {args.path}: {reason} "
            f"({exc.filename or args.path}).",
            file=sys.stderr,
        )
        return 1
    print(f"Created {package}")
    project, slug = package.parent, slugify(args.name)
    print(f"Next: pip install -e '{project}[dev]' && tessera connector list")
    print(f"Then: cd {project} && pytest && tessera conformance run --connector {slug}")
    return 0


def _connector_list(args: argparse.Namespace) -> int:
    """The usable connectors on stdout; broken plugins, with why, on stderr and exit 1 (so CI
    and install scripts notice; the table is printed all the same)."""
    from sdk.registry import (
        describe_manifest,
        format_broken_plugins,
        format_manifest_table,
        load_registry,
    )

    registry = load_registry()
    if args.verbose and registry.manifests():
        print("\n\n".join(describe_manifest(m) for m in registry.manifests()))
    else:
        print(format_manifest_table(registry.manifests()))
    broken = registry.broken()
    if not broken:
        return 0
    print(
        "tessera: broken connector plugins, not loaded (fix or uninstall them):\n"
        + format_broken_plugins(broken),
        file=sys.stderr,
    )
    return 1


def _connector_credentials_set(args: argparse.Namespace) -> int:
    from gateway.commands.credentials import credentials_set

    return credentials_set(
        _admin_settings(args), args.connector_id, args.from_file, merge=args.merge
    )


def _connector_credentials_show(args: argparse.Namespace) -> int:
    from gateway.commands.credentials import credentials_show

    return credentials_show(_admin_settings(args), args.connector_id)


def _config_arg(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument(
        "--config",
        required=required,
        metavar="FILE",
        help="TOML configuration (see docs/operating.md); TESSERA_* variables override it.",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tessera",
        description="Tessera: vault-backed tokenization gateway and connector SDK.",
    )
    parser.add_argument("--version", action="version", version=f"tessera {_version()}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="DEBUG, INFO, WARNING or ERROR, any case (INFO).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    dev = commands.add_parser("dev", help="Run OpenBao (dev) + the gateway on SQLite, locally.")
    dev.add_argument("--port", type=int, default=8080, help="Gateway port (default 8080).")
    dev.add_argument("--data-dir", default=".tessera", help="Where state lives (./.tessera).")
    dev.add_argument(
        "--connector",
        metavar="ID",
        help="Route payments to this installed connector (its simulator) instead of the sandbox.",
    )
    dev.add_argument(
        "--connector-url",
        metavar="URL",
        help="With --connector: the provider sandbox's URL instead of the simulator "
        "(credentials from TESSERA_<ID>_<FIELD> variables).",
    )
    dev.set_defaults(handler=_dev)

    serve = commands.add_parser("serve", help="Run the gateway against an existing Vault and DB.")
    _config_arg(serve, required=True)
    serve.add_argument(
        "--workers", type=_positive_int, help="Worker processes (SO_REUSEPORT), at least 1."
    )
    serve.set_defaults(handler=_serve)

    vault = commands.add_parser("vault", help="OpenBao/Vault administration.")
    vault_cmds = vault.add_subparsers(dest="vault_command", metavar="ACTION", required=True)
    prov = vault_cmds.add_parser("provision", help="Enable engines, write policies and roles.")
    _config_arg(prov)
    prov.add_argument(
        "--admin-secret-id-file",
        metavar="FILE",
        help="Also issue a secret id for the tessera-admin AppRole and write it to FILE, created "
        "with mode 0600 (never overwritten). Without it none is issued; it is never printed.",
    )
    prov.set_defaults(handler=_vault_provision)

    merchants = commands.add_parser("merchants", help="Merchant administration.")
    m_cmds = merchants.add_subparsers(dest="merchants_command", metavar="ACTION", required=True)
    create = m_cmds.add_parser("create", help="Create a merchant; prints its API key once.")
    create.add_argument("name")
    create.add_argument(
        "--dedup", action="store_true", help="Return the existing token for a known card."
    )
    _config_arg(create)
    create.set_defaults(handler=_merchants_create)
    webhook = m_cmds.add_parser("webhook", help="Set where payment notifications are posted.")
    webhook.add_argument("merchant_id")
    webhook.add_argument("url", help="https:// URL receiving signed notifications.")
    _config_arg(webhook)
    webhook.set_defaults(handler=_merchants_webhook)
    m_list = m_cmds.add_parser("list", help="Merchants: id, name, created, live keys, webhook.")
    m_list.add_argument("--json", action="store_true", help="One JSON array, for scripts.")
    _config_arg(m_list)
    m_list.set_defaults(handler=_merchants_list)
    m_delete = m_cmds.add_parser(
        "delete", help="Delete a merchant no token or payment names, with its keys (audited)."
    )
    m_delete.add_argument("merchant_id", metavar="MERCHANT")
    m_delete.add_argument(
        "--yes", action="store_true", help="Delete it (without: say what would go, exit 2)."
    )
    m_delete.add_argument("--reason", help="Why (ticket): goes to the audit log.")
    _config_arg(m_delete)
    m_delete.set_defaults(handler=_merchants_delete)
    m_keys = m_cmds.add_parser("keys", help="A merchant's API keys: create, list, revoke.")
    mk_cmds = m_keys.add_subparsers(dest="merchants_keys_command", metavar="ACTION", required=True)
    mk_create = mk_cmds.add_parser("create", help="A new API key; printed once (audited).")
    mk_create.add_argument("merchant_id", metavar="MERCHANT")
    mk_create.add_argument("--reason", help="Why (ticket): goes to the audit log.")
    _config_arg(mk_create)
    mk_create.set_defaults(handler=_merchants_keys_create)
    mk_list = mk_cmds.add_parser("list", help="Key ids, prefixes, created and revoked times.")
    mk_list.add_argument("merchant_id", metavar="MERCHANT")
    mk_list.add_argument("--json", action="store_true", help="One JSON array, for scripts.")
    _config_arg(mk_list)
    mk_list.set_defaults(handler=_merchants_keys_list)
    mk_revoke = mk_cmds.add_parser(
        "revoke", help="Revoke a key by id or prefix, or --all (audited)."
    )
    mk_revoke.add_argument("merchant_id", metavar="MERCHANT")
    which = mk_revoke.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "key", nargs="?", metavar="KEY_ID_OR_PREFIX",
        help="key_... or the key's first 8 characters (tsk_ + 4), as keys list shows them.",
    )  # fmt: skip
    which.add_argument("--all", action="store_true", help="Every live key of the merchant.")
    mk_revoke.add_argument("--reason", help="Why (ticket, leak): goes to the audit log.")
    _config_arg(mk_revoke)
    mk_revoke.set_defaults(handler=_merchants_keys_revoke)

    keys = commands.add_parser("keys", help="Encryption key management.")
    k_cmds = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    rotate = k_cmds.add_parser("rotate", help="Rotate transit keys and rewrap stored tokens.")
    rotate.add_argument("--tenant", help="One merchant id (default: every merchant).")
    rotate.add_argument(
        "--settle-seconds",
        type=_settle_seconds,
        help="Wait before the last sweep; at least every gateway's data_key_seconds (default: "
        "this file's data_key_seconds + vault timeout + 1).",
    )
    _config_arg(rotate)
    rotate.set_defaults(handler=_keys_rotate)

    audit = commands.add_parser("audit", help="Audit log.")
    a_cmds = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = a_cmds.add_parser("verify", help="Verify the hash chain; exit 1 if broken.")
    _config_arg(verify)
    verify.add_argument(
        "--anchor",
        metavar="SEQ:HASH",
        help="A head printed by an earlier verify and kept outside the database: the chain "
        "must still hold that entry unchanged (catches entries cut off the end).",
    )
    verify.set_defaults(handler=_audit_verify)

    rec = commands.add_parser("reconcile", help="Settle unknown/pending attempts once.")
    _config_arg(rec, required=True)
    rec.set_defaults(handler=_reconcile)

    attempts = commands.add_parser("attempts", help="Open connector calls: list, settle.")
    t_cmds = attempts.add_subparsers(dest="attempts_command", metavar="ACTION", required=True)
    open_list = t_cmds.add_parser("list", help="Open attempts and how each will be settled.")
    open_list.add_argument(
        "--limit", type=_positive_int, default=100, help="At most this many (100)."
    )
    _config_arg(open_list, required=True)
    open_list.set_defaults(handler=_attempts_list)
    settle = t_cmds.add_parser(
        "settle", help="Settle an open attempt from what the provider shows (audited)."
    )
    settle.add_argument("attempt_id", help="att_... (from tessera attempts list).")
    verdict = settle.add_mutually_exclusive_group(required=True)
    verdict.add_argument(
        "--happened", dest="happened", action="store_true", default=None,
        help="The provider did it (the capture, refund, void, authorization exists there).",
    )  # fmt: skip
    verdict.add_argument(
        "--not-happened", dest="happened", action="store_false",
        help="The provider has no trace of it.",
    )  # fmt: skip
    settle.add_argument(
        "--status", choices=("authorized", "captured"),
        help="For an authorization, complete or submit that happened: what the provider shows.",
    )  # fmt: skip
    settle.add_argument("--provider-reference", help="The provider's id for it, if known.")
    settle.add_argument(
        "--reason", required=True, help="Why (ticket, what the dashboard shows): audited."
    )
    _config_arg(settle, required=True)
    settle.set_defaults(handler=_attempts_settle)

    connector = commands.add_parser("connector", help="Connector development.")
    c_cmds = connector.add_subparsers(dest="connector_command", metavar="ACTION", required=True)
    new = c_cmds.add_parser("new", help="Scaffold an installable connector package.")
    new.add_argument("name")
    new.add_argument(
        "--category", required=True, choices=("card-acquirer", "bank-rail", "open-banking")
    )
    new.add_argument("--path", default=".", help="Parent directory (default: here).")
    new.set_defaults(handler=_connector_new)
    listing = c_cmds.add_parser(
        "list",
        help="Installed connectors and their manifests; broken plugins on stderr (exit 1).",
    )
    listing.add_argument(
        "--verbose", "-v", action="store_true", help="Every manifest field, credentials included."
    )
    listing.set_defaults(handler=_connector_list)
    creds = c_cmds.add_parser(
        "credentials", help="A connector's credentials in Vault KV (credentials_from = vault)."
    )
    cr_cmds = creds.add_subparsers(dest="credentials_command", metavar="ACTION", required=True)
    cr_set = cr_cmds.add_parser("set", help="Write them from a JSON/TOML file or stdin.")
    cr_set.add_argument("connector_id", metavar="CONNECTOR")
    cr_set.add_argument(
        "--from-file",
        required=True,
        metavar="PATH",
        help='JSON object or TOML table of names to values ({"api_key": "..."}); - for stdin.',
    )
    cr_set.add_argument(
        "--merge", action="store_true", help="Keep the names this file does not set."
    )
    _config_arg(cr_set)
    cr_set.set_defaults(handler=_connector_credentials_set)
    cr_show = cr_cmds.add_parser("show", help="Which credentials Vault holds (names only).")
    cr_show.add_argument("connector_id", metavar="CONNECTOR")
    _config_arg(cr_show)
    cr_show.set_defaults(handler=_connector_credentials_show)

    from conformance import cli as conformance_cli  # light: the runner loads inside run()

    conformance = commands.add_parser("conformance", help="Connector conformance kit.")
    k_sub = conformance.add_subparsers(dest="conformance_command", metavar="ACTION", required=True)
    run = k_sub.add_parser("run", help="Run the conformance scenarios against a connector.")
    conformance_cli.add_arguments(run)
    run.set_defaults(handler=_conformance_run)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; operator mistakes end as one ``tessera: ...`` line, never a traceback.

    Exit codes: 0 success, 1 the command failed (Vault, database, a failed check), 2 usage or
    configuration errors (argparse's convention), 130 interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        problem = _operator_problem(exc, connects=hasattr(args, "config"))
        if problem is None:
            raise
        message, code = problem
        print(f"tessera: {message}", file=sys.stderr)
        return code


def _operator_problem(exc: Exception, *, connects: bool) -> tuple[str, int] | None:
    """(message, exit code) for the failures an operator can fix; ``None`` for bugs.

    ``connects``: the command talks to the configured database (``--config`` commands), so a
    connection-level ``OSError`` is the database's (Vault's are ``VaultUnavailableError``).
    """
    import sqlite3

    from gateway.config import ConfigError
    from normalization.errors import (
        TesseraError,
        VaultPermissionDeniedError,
        VaultSealedError,
        VaultUnavailableError,
    )

    if isinstance(exc, ConfigError):
        return str(exc), 2
    if isinstance(exc, VaultUnavailableError):
        return f"{exc} Check [vault] addr (TESSERA_VAULT_ADDR) and that it is running.", 1
    if isinstance(exc, VaultSealedError):
        return f"{exc} Unseal it (bao operator unseal) and run the command again.", 1
    if isinstance(exc, VaultPermissionDeniedError):
        return (
            f"{exc} Check the token this command uses (vault.admin_token / "
            "TESSERA_VAULT_ADMIN_TOKEN for administration, the gateway's credentials otherwise).",
            1,
        )
    if isinstance(exc, TesseraError):
        return str(exc), 1
    if not connects:
        return None
    database_errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)
    try:
        import asyncpg

        database_errors += (asyncpg.PostgresError, asyncpg.InterfaceError)
    except ImportError:  # pragma: no cover - PostgreSQL support not installed
        pass
    if isinstance(exc, database_errors):
        return (
            f"database error ({type(exc).__name__}: {exc}); check [database] url "
            "(TESSERA_DATABASE_URL) and that the database is up.",
            1,
        )
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
