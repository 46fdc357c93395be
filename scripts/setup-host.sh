#!/usr/bin/env bash
# Install the Debian packages virtkit needs, and say which and why before installing.
#   scripts/setup-host.sh run    what `make run` needs: build the guest images and the compiled core, boot
#   scripts/setup-host.sh test   that, plus the peers the tests and benchmarks compare against
# Idempotent: only missing packages are installed. Needs root (or sudo) for apt.
set -euo pipefail
what="${1:-test}"

# name:reason pairs
RUN_PKGS=(
  "python3-dev:Python.h for the ahead-of-time compiled RISC-V core (virtkit engine build)"
  "python3-venv:the project's virtual environment"
  "build-essential:a C compiler for the compiled core"
  "gcc-riscv64-linux-gnu:cross compiler for the guest kernel and busybox"
  "libc6-dev-riscv64-cross:the guest's static C library (busybox)"
  "linux-source-6.1:the guest kernel's source"
  "bc:kernel build"
  "flex:kernel build"
  "bison:kernel build"
  "libssl-dev:kernel build"
  "libelf-dev:kernel build"
  "cpio:kernel build"
  "xz-utils:unpacking the kernel source"
  "dpkg-dev:apt-get source (busybox is built from Debian's source package)"
  "opensbi:the guest firmware (fw_jump.bin)"
)
TEST_PKGS=(
  "qemu-system-misc:the peer the RISC-V engine and boots are checked and measured against"
  "qemu-system-x86:the peer the KVM engine's x86-64 test kernels also run on (proof of the tests)"
  "qemu-utils:qemu-img, the peer of virtkit disk"
  "nbdkit:NBD peer"
  "libnbd-bin:nbdinfo/nbdcopy, NBD clients"
  "fio:storage benchmarks"
  "device-tree-compiler:dtc checks the board's device tree"
  "e2fsprogs:ext4 disks for guest tests"
  "busybox-static:the root file system of the container tests"
  "crun:container runtime peer"
  "runc:container runtime peer"
  "containerd:ctr drives virtkit-runc in the container tests"
  "docker.io:dockerd --add-runtime drives virtkit-runc in the container tests"
  "mmdebstrap:virtkit image build --debian (Debian images from packages)"
  "npm:fetches the web console's xterm.js from the npm registry"
  "chromium:the browser the web console is tested in"
  "chromium-driver:drives that browser (Selenium)"
  "vde2:vde_switch, the switch's peer"
  "iproute2:network namespaces, veth, TAP"
  "iperf3:network throughput"
  "tshark:reads the switch's pcapng captures"
  "iputils-ping:ping between namespaces"
  "ethtool:veth offloads"
  "gdb-multiarch:the debugger the GDB stub is tested with"
)

case "$what" in
  run) LIST=("${RUN_PKGS[@]}") ;;
  test) LIST=("${RUN_PKGS[@]}" "${TEST_PKGS[@]}") ;;
  *) echo "usage: $0 run|test" >&2; exit 2 ;;
esac

missing=()
reasons=()
for entry in "${LIST[@]}"; do
  p="${entry%%:*}"
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" && continue
  # a tool installed some other way counts (npm from NodeSource's nodejs, which conflicts with Debian's npm)
  [ "$p" = npm ] && command -v npm >/dev/null && continue
  missing+=("$p")
  reasons+=("  $p: ${entry#*:}")
done
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# busybox is cross-compiled from Debian's source package: apt-get source needs deb-src.
need_src=0
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  need_src=1
fi
if [ ${#missing[@]} -eq 0 ] && [ $need_src -eq 0 ]; then
  exit 0
fi
if [ $need_src -eq 1 ]; then
  echo "virtkit: enabling Debian source lists (deb-src): busybox is built from Debian's source package" >&2
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    $SUDO sed -i 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources
  elif [ -f /etc/apt/sources.list ]; then
    grep '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' | $SUDO tee -a /etc/apt/sources.list >/dev/null
  fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "virtkit: installing Debian packages for 'make $what':" >&2
  printf '%s\n' "${reasons[@]}" >&2
fi
$SUDO apt-get update -q
if [ ${#missing[@]} -gt 0 ]; then
  echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi
