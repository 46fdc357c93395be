"""Sub-commands that look alike: each with its help, a description and worked examples (``virtkit X Y --help``)."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction, name: str, help: str, examples: str | list[str],
        aliases: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """A sub-command parser whose ``--help`` ends with its examples (one per line)."""
    lines = [examples] if isinstance(examples, str) else examples
    epilog = ("example:\n" if len(lines) == 1 else "examples:\n") + "\n".join(f"  {e}" for e in lines)
    desc = help[0].upper() + help[1:] + ("" if help.endswith(".") else ".")
    if aliases:
        desc += f" (also: {', '.join(aliases)})"
    return sub.add_parser(name, help=help, description=desc, epilog=epilog, aliases=list(aliases),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def group(subparsers: argparse._SubParsersAction, name: str, help: str, doc: str | None,
          dest: str) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """A command with actions (``virtkit disk ...``): prints its help when no action is given."""
    p = subparsers.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest=dest, metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    return p, sub
