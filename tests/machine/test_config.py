"""MachineConfig: flags -> config -> TOML/JSON -> config round trips, and one clear error per bad file."""

from __future__ import annotations

import json

import pytest

from tests.helpers import virtkit
from virtkit.errors import ConfigError
from virtkit.machine.config import MachineConfig, dump_toml, parse_text
from virtkit.units import format_size, parse_duration, parse_size, parse_size_change

MiB = 1 << 20


@pytest.fixture
def files(tmp_path):
    for name in ("Image", "initrd.cpio", "fw.bin", "a.raw", "b.qcow2"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_flags_to_config_to_toml_and_back(files, tmp_path):
    """Every machine flag lands in the config; the dumped TOML loads back to an equal config."""
    args = ["run", "--name", "web1", "--cpus", "2", "--mem", "1.5G", "--kernel", str(files / "Image"),
            "--initrd", str(files / "initrd.cpio"), "--bios", str(files / "fw.bin"), "--append", "console=ttyS0 quiet",
            "--disk", f"{files / 'a.raw'},ro,format=raw", "--disk", f"{files / 'b.qcow2'},werror=stop,serial=data",
            "--net", "switch:lab,vlan=7,mac=52:54:00:00:00:07", "--net", "tap:tap3", "--no-rng", "--virtio-console",
            "--serial", "none", "--exec", "uname -a", "--timeout", "90", "--boot-timeout", "2m"]
    p = virtkit(*args, "--dump-config")
    assert p.returncode == 0, p.stderr
    toml = p.stdout
    cfg = MachineConfig.from_dict(parse_text(toml))
    assert (cfg.name, cfg.cpus, cfg.memory, cfg.cmdline, cfg.rng) == \
        ("web1", 2, 1536 * MiB, "console=ttyS0 quiet", False)
    assert cfg.kernel == str(files / "Image") and cfg.firmware == str(files / "fw.bin")
    assert [(d.read_only, d.format, d.werror, d.serial) for d in cfg.disks] == [(True, "raw", "report", None),
                                                                                 (False, None, "stop", "data")]
    assert [(n.backend, n.name, n.vlan, n.mac) for n in cfg.nics] == [("switch", "lab", 7, "52:54:00:00:00:07"),
                                                                       ("tap", "tap3", None, None)]
    assert (cfg.console.serial, cfg.console.virtio, cfg.exec, cfg.timeout, cfg.boot_timeout) == \
        ("none", True, "uname -a", 90.0, 120.0)
    # round trips: TOML and JSON files, and --config + --dump-config prints the same document
    f = tmp_path / "vm.toml"
    f.write_text(toml)
    assert MachineConfig.load(f).equivalent(cfg)
    j = tmp_path / "vm.json"
    j.write_text(cfg.to_json())
    assert MachineConfig.load(j).equivalent(cfg)
    assert virtkit("run", "--config", str(f), "--dump-config").stdout == toml
    # a flag overrides the file
    out = virtkit("run", "--config", str(f), "--cpus", "4", "--dump-config").stdout
    again = MachineConfig.from_dict(parse_text(out))
    assert again.cpus == 4 and again.name == "web1"
    assert json.loads(virtkit("run", "--config", str(f), "--dump-config", "json").stdout)["memory"] == "1536M"


def test_relative_paths_resolve_against_the_file(files):
    (files / "vm.toml").write_text('kernel = "Image"\ninitrd = "initrd.cpio"\n[[disks]]\npath = "a.raw"\n')
    cfg = MachineConfig.load(files / "vm.toml")
    assert cfg.kernel == str(files / "Image") and cfg.disks[0].path == str(files / "a.raw")


@pytest.mark.parametrize("text,message", [
    ('cpu = 2', "vm.toml: cpu: expected a string, got an integer 2"),
    ('cpus = "two"', "vm.toml: cpus: expected an integer, got a string 'two'"),
    ('cpus = 0', "vm.toml: cpus: 0 is out of range 1..64"),
    ('cpus = 2.5', "vm.toml: cpus: expected an integer, got a number 2.5"),
    ('memory = "lots"', "bad memory 'lots'"),
    ('memory = 0', "bad memory 0: must be at least 4K"),
    ('memory = true', "memory: expected a size such as 256M or 1G, got a boolean True"),
    ('kernel = "missing-Image"', "vm.toml: kernel: file 'missing-Image' does not exist"),
    ('rng = "yes"', "vm.toml: rng: expected true or false, got a string 'yes'"),
    ('name = "a/b"', "vm.toml: name: bad VM name 'a/b'"),
    ('timeout = -5', "vm.toml: timeout: must be a number of seconds"),
    ('[[disks]]\nformat = "raw"', "vm.toml: disks[0].path: missing (required)"),
    ('[[disks]]\npath = "x"\nformat = "vmdk"', "vm.toml: disks[0].format: 'vmdk' is not one of raw, qcow2"),
    ('[[disks]]\npath = "x"\nwerror = "panic"', "disks[0].werror: 'panic' is not one of report, stop, ignore"),
    ('[[disks]]\npath = "x"\nsize = 3', "vm.toml: disks[0].size: unknown key"),
    ('[[nics]]\nbackend = "tap"\nname = "t0"\nvlan = 7', "vm.toml: nics[0]: vlan, port and group are for switch NICs"),
    ('[[nics]]\nbackend = "switch"\nname = "lab"\nvlan = 5000', "nics[0].vlan: 5000 is out of range 1..4094"),
    ('[[nics]]\nbackend = "switch"\nname = "lab"\nmac = "zz"', "nics[0].mac: bad MAC address 'zz'"),
    ('disks = 3', "vm.toml: disks: expected a list, got an integer"),
    ('[console]\nserial = "pty"', "vm.toml: console.serial: 'pty' is not one of stdio, none"),
    ('cpus = ', "vm.toml: not valid TOML"),
])
def test_bad_config_files_get_one_clear_error(tmp_path, text, message):
    f = tmp_path / "vm.toml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        MachineConfig.load(f)
    assert message in str(e.value).replace(str(tmp_path) + "/", "")
    p = virtkit("run", "--config", str(f), "--dump-config")
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.count("virtkit: error:") == 1 and message in p.stderr.replace(str(tmp_path) + "/", "")


def test_bad_json_and_non_table(tmp_path):
    f = tmp_path / "vm.json"
    f.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        MachineConfig.load(f)
    f.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a table at the top level"):
        MachineConfig.load(f)


def test_toml_writer_escapes_strings():
    data = {"cmdline": 'quote " backslash \\ tab \t nl \n del \x7f é', "n": 3, "x": 1.5, "b": False,
            "disks": [{"path": "a b"}]}
    assert parse_text(dump_toml(data)) == data


def test_one_size_parser():
    assert parse_size("512M") == 512 * MiB and parse_size("1.5G") == 1536 * MiB and parse_size("2T") == 2 << 40
    assert parse_size("4096") == 4096 and parse_size("64KiB") == 65536
    assert parse_size("256", default_unit="M") == 256 * MiB
    assert parse_size_change("+4M") == (4 * MiB, True) and parse_size_change("-1G") == (-(1 << 30), True)
    assert parse_size_change("10G") == (10 << 30, False)
    for bad in ("", "lots", "1.3", "-5", "5X", "+3M"):
        with pytest.raises(ConfigError):
            parse_size(bad)
    with pytest.raises(ConfigError, match="between 16M and 16G"):
        parse_size("8M", minimum=16 * MiB, maximum=16 << 30)
    assert format_size(1536 * MiB) == "1.5G" and format_size(512 * MiB, exact=True) == "512M"
    assert format_size(1536 * MiB, exact=True) == "1536M" and format_size(1000, exact=True) == "1000"
    assert parse_duration("2m") == 120 and parse_duration("500ms") == 0.5 and parse_duration(3) == 3.0
    with pytest.raises(ConfigError):
        parse_duration("soon")
