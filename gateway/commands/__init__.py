"""Implementations of the ``tessera`` subcommands that need more than a line or two."""
