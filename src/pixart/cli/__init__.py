"""The `pixart` command: one subcommand per module in this package: its arguments, their checks,
and the call into the library."""

from pixart.cli.main import main

__all__ = ["main"]
