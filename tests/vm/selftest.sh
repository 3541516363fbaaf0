#!/usr/bin/env bash
# tests/vm/selftest.sh: checks the VM lane itself. Boots the VM of tests/vm/run-in-vm with busybox
# sh running tests/vm/selftest-guest.sh, which checks in the guest: uid/gid 1000, its cgroup is the
# leaf /delegated/init, the delegated subtree and its limits (memory.max, pids.max, cpu.max
# writable in a child cgroup, memory.max and pids.max enforced), moving between leaves,
# `unshare -Ur`, overlayfs in a user namespace, pivot_root, the mounts.
#
# Exits with the guest's status (0 when every check passed; 124/125 for VM trouble) and prints the
# time the boot and run took. Needs no root.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
start=${EPOCHREALTIME/,/.}
rc=0
VM_FILES="$HERE/selftest-guest.sh${VM_FILES:+ $VM_FILES}" \
    "$HERE/run-in-vm" /bin/busybox sh "$HERE/selftest-guest.sh" || rc=$?
end=${EPOCHREALTIME/,/.}
secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
if [ "$rc" -eq 0 ]; then
    echo "vm selftest: passed in ${secs}s (build, boot, checks, power-off)"
else
    echo "vm selftest: FAILED (exit $rc) after ${secs}s"
fi
exit "$rc"
