"""Subcommands of the virtkit CLI: one module each, with register(subparsers)."""
