"""The Debian package-database answers behind recipe keys are remembered until dpkg/apt state changes."""

from __future__ import annotations

import os

import pytest

from virtkit.images import cache
from virtkit.images.cache import MissingToolError, debian_memo


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("VIRTKIT_CACHE", str(tmp_path / "cache"))
    stamp = tmp_path / "status"
    stamp.write_text("a")
    return stamp


def test_answer_is_kept_until_the_stamp_changes(state):
    calls = []

    def compute() -> str:
        calls.append(1)
        return f"v{len(calls)}"

    assert debian_memo("deb:x", [state], compute) == "v1"
    assert debian_memo("deb:x", [state], compute) == "v1"
    assert len(calls) == 1
    state.write_text("bb")  # dpkg installed something: size and mtime change
    os.utime(state, ns=(1, 1))
    assert debian_memo("deb:x", [state], compute) == "v2"
    assert debian_memo("deb:y", [state], compute) == "v3"  # keys are separate


def test_damaged_state_file_and_errors_are_not_trusted(state):
    path = cache.images_dir() / ".debian-state.json"
    assert debian_memo("deb:x", [state], lambda: "1") == "1"
    for junk in ("{not json", "[1, 2]", '{"deb:x": {"stamp": "nope", "value": 3}}'):
        path.write_text(junk)
        assert debian_memo("deb:x", [state], lambda: "2") == "2"

    def missing() -> str:
        raise MissingToolError("busybox: Debian package foo is not installed")

    with pytest.raises(MissingToolError):
        debian_memo("deb:z", [state], missing)
    assert debian_memo("deb:z", [state], lambda: "3") == "3"  # the error was not remembered


def test_missing_stamp_files_are_a_state_too(state, tmp_path):
    gone = tmp_path / "nothing-here"
    assert debian_memo("src:x", [gone], lambda: "1") == "1"
    assert debian_memo("src:x", [gone], lambda: "2") == "1"
    gone.write_text("now it exists")
    assert debian_memo("src:x", [gone], lambda: "3") == "3"


def test_real_package_versions_match_dpkg(state):
    """The remembered version of an installed package is dpkg's."""
    import shutil
    import subprocess

    if shutil.which("dpkg-query") is None:
        pytest.skip("needs dpkg-query (Debian)")
    want = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "coreutils"], capture_output=True, text=True).stdout
    assert cache.deb_version("coreutils", "test") == want
    assert cache.deb_version("coreutils", "test") == want
    with pytest.raises(MissingToolError, match="not installed"):
        cache.deb_version("virtkit-no-such-package", "test")
