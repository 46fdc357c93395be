#!/usr/bin/env bash
# Install the Debian packages virtkit builds guests with and measures against.
# Idempotent: only missing packages are installed. Needs root (or sudo) for apt.
set -euo pipefail
PKGS=(
  # python3-dev: Python.h, for the AOT-compiled RISC-V core (virtkit engine build) with Debian's python3
  python3-dev python3-venv
  # cross toolchain and guest image ingredients
  build-essential gcc-riscv64-linux-gnu libc6-dev-riscv64-cross linux-source-6.1 bc flex bison
  libssl-dev libelf-dev cpio dpkg-dev device-tree-compiler e2fsprogs xz-utils
  # peers measured against and interop tools
  qemu-system-misc opensbi qemu-utils nbdkit libnbd-bin fio
  crun runc vde2 iproute2 iperf3 tshark
  # network interop tests: ping between namespaces, veth offloads off
  iputils-ping ethtool
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
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
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    $SUDO sed -i 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources
  elif [ -f /etc/apt/sources.list ]; then
    grep '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' | $SUDO tee -a /etc/apt/sources.list >/dev/null
  fi
fi
echo "virtkit: installing Debian packages: ${missing[*]:-(source lists only)}" >&2
$SUDO apt-get update -q
if [ ${#missing[@]} -gt 0 ]; then
  echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi
