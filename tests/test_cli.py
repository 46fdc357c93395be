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
