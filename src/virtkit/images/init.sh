#!/bin/sh
# virtkit guest /init (busybox sh), PID 1 of the default initramfs.
#
# Contract with `virtkit run` and the tests (kernel command line):
#   virtkit.bench=init          print "virtkit-init-reached" and power off at once (boot benchmark)
#   virtkit.exec=<base64>       run the decoded command with `sh -c` (stdout+stderr on the console),
#                               then print "virtkit-exit-status: N" and power off
#   (neither)                   print a banner and run an interactive shell on the console;
#                               power off when it exits
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=vt100
# power off: the RISC-V boards have a power-off device; the x86-64 microVM has no ACPI, so the guest resets
# through the i8042 (reboot=k) and the VMM ends the VM there, as Firecracker's guests do
off() { if [ "$(uname -m)" = x86_64 ]; then reboot -f; else poweroff -f; fi; }
mount -t proc proc /proc
bench=""
exec_b64=""
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	virtkit.bench=*) bench="${arg#virtkit.bench=}" ;;
	virtkit.exec=*) exec_b64="${arg#virtkit.exec=}" ;;
	esac
done
if [ "$bench" = init ]; then
	echo virtkit-init-reached
	off
fi
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
hostname virtkit
ip link set lo up 2>/dev/null
exec </dev/console >/dev/console 2>&1

if [ -n "$exec_b64" ]; then
	dmesg -n 1  # keep kernel messages out of the command's output
	if cmd="$(echo "$exec_b64" | base64 -d 2>/dev/null)"; then
		sh -c "$cmd"
		rc=$?
	else
		echo "virtkit-init: virtkit.exec is not valid base64"
		rc=2
	fi
	sync
	echo "virtkit-exit-status: $rc"
	off
fi

echo
echo "virtkit guest: Linux $(uname -r) $(uname -m), $(busybox | head -n 1 | cut -d' ' -f1-2)"
echo "Leave the shell (exit or Ctrl-D) to power off."
setsid cttyhack sh -l
sync
off
