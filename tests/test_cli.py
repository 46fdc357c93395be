"""The CLI's top level: help, version, and clear errors for bad usage."""

import subprocess
import sys

from virtkit.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert "virtkit" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_unknown_command_is_a_clear_error():
    p = subprocess.run([sys.executable, "-m", "virtkit.cli", "frobnicate"], capture_output=True, text=True)
    assert p.returncode == 2
    assert "invalid choice" in p.stderr
    assert "Traceback" not in p.stderr


def _subparsers(parser, path=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if sub in [p for _, p in getattr(_subparsers, "_seen", [])]:
                    continue
                yield (*path, name), sub
                yield from _subparsers(sub, (*path, name))


def test_help_is_for_users_and_every_subcommand_has_an_example():
    from virtkit.cli import build_parser

    top = build_parser()
    text = top.format_help()
    assert "virtual machines" in text and "examples:" in text and "Nothing else lives here" not in text
    missing = []
    for path, sub in _subparsers(top):
        helptext = sub.format_help()
        if "example" not in helptext and not any(isinstance(a, __import__("argparse")._SubParsersAction)
                                                 for a in sub._actions):
            missing.append(" ".join(path))
    assert not missing, f"subcommands without an example in their help: {', '.join(missing)}"
