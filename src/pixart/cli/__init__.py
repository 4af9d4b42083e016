"""The `pixart` command: one subcommand per module in this package, each ~20 lines of glue."""

from pixart.cli.main import main

__all__ = ["main"]
