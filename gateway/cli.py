"""The ``tessera`` command line.

Subcommands are thin: each parses its arguments and hands off to the module that owns the work,
imported lazily so ``tessera --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]


def _version() -> str:
    try:
        return version("tessera-pay")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def _not_ready(feature: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        print(f"tessera: {feature} is not available in this build yet.", file=sys.stderr)
        return 2

    return handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tessera",
        description="Tessera: vault-backed tokenization gateway and connector SDK.",
    )
    parser.add_argument("--version", action="version", version=f"tessera {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    dev = commands.add_parser("dev", help="Run OpenBao (dev) + the gateway on SQLite, locally.")
    dev.add_argument("--port", type=int, default=8080, help="Gateway port (default 8080).")
    dev.add_argument("--data-dir", default=".tessera", help="Where state lives (./.tessera).")
    dev.set_defaults(handler=_not_ready("tessera dev"))

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
