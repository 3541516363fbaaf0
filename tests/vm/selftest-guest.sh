# shellcheck shell=dash
# tests/vm/selftest-guest.sh: the guest half of tests/vm/selftest.sh, run by busybox sh inside the
# VM as the unprivileged user. Checks what the VM lane promises; prints one line per check and
# exits non-zero if any failed.
# `COND && ok ... || bad ...` is safe here: ok never fails. Single-quoted scripts run in the guest.
# shellcheck disable=SC2015,SC2016
failures=0
checks=0
ok() {
    checks=$((checks + 1))
    echo "selftest: ok   $*"
}
bad() {
    checks=$((checks + 1))
    failures=$((failures + 1))
    echo "selftest: FAIL $*"
}
check() { # DESCRIPTION COMMAND...
    d=$1
    shift
    if out=$("$@" 2>&1); then ok "$d"; else bad "$d: $out"; fi
}

D=/sys/fs/cgroup/delegated

[ "$(id -u):$(id -g)" = 1000:1000 ] && ok "runs as uid/gid 1000" || bad "runs as $(id)"
[ "$(cat /proc/self/cgroup)" = "0::/delegated/init" ] && ok "starts in the leaf /delegated/init" \
    || bad "own cgroup is $(cat /proc/self/cgroup)"
[ "${RSANDBOX_CGROUP_PARENT:-}" = "$D" ] && ok "RSANDBOX_CGROUP_PARENT=$D" \
    || bad "RSANDBOX_CGROUP_PARENT='${RSANDBOX_CGROUP_PARENT:-}'"
grep -q " /sys/fs/cgroup cgroup2 .*nsdelegate.*memory_recursiveprot" /proc/self/mounts \
    && ok "cgroup2 mounted with nsdelegate,memory_recursiveprot" || bad "cgroup2 mount: $(grep cgroup /proc/self/mounts)"
grep -q cgroup /proc/filesystems && ! grep -q " cgroup " /proc/self/mounts \
    && ok "no cgroup v1 hierarchy" || bad "cgroup v1 is mounted"
for c in memory pids cpu; do
    grep -qw $c $D/init/cgroup.controllers || bad "controller $c not available below $D"
done
[ -w $D/cgroup.procs ] && [ -w $D/cgroup.subtree_control ] && ok "$D is delegated to the user" \
    || bad "$D is not writable by uid $(id -u)"
[ ! -w $D/memory.max ] && ok "the user cannot raise delegated/memory.max (owned by root)" \
    || bad "$D/memory.max is writable by the user"
[ "$(stat -c %u "$HOME")" = 1000 ] && echo x >"$HOME/probe" && ok "HOME=$HOME is writable" || bad "HOME=$HOME"

# A child cgroup with limits, as the library makes one per sandbox.
T=$D/selftest
if mkdir $T; then
    check "memory.max writable in a child cgroup" sh -c "echo 33554432 >$T/memory.max && [ \$(cat $T/memory.max) = 33554432 ]"
    check "pids.max writable in a child cgroup" sh -c "echo 16 >$T/pids.max && [ \$(cat $T/pids.max) = 16 ]"
    check "cpu.max writable in a child cgroup" sh -c "echo '20000 100000' >$T/cpu.max && [ \"\$(cat $T/cpu.max)\" = '20000 100000' ]"
    # memory.max is enforced: a 64 MiB buffer (dd touches it) in a 32 MiB cgroup is OOM-killed.
    sh -c "echo \$\$ >$T/cgroup.procs && exec dd if=/dev/zero of=/dev/null bs=64M count=1" >/dev/null 2>&1
    rc=$?
    kills=$(sed -n 's/^oom_kill //p' $T/memory.events)
    [ "$rc" = 137 ] && [ "$kills" = 1 ] && ok "memory.max is enforced (exit 137, oom_kill 1)" \
        || bad "64 MiB in a 32 MiB cgroup: exit $rc, oom_kill '$kills'"
    # pids.max is enforced: the 17th process of the cgroup cannot be forked.
    sh -c "echo \$\$ >$T/cgroup.procs && i=0 && while [ \$i -lt 20 ]; do sleep 5 & i=\$((i+1)); done" >/dev/null 2>&1
    n=$(wc -l <$T/cgroup.procs)
    events=$(sed -n 's/^max //p' $T/pids.events)
    [ "$n" -le 16 ] && [ "${events:-0}" -ge 1 ] && ok "pids.max is enforced ($n processes, pids.events max $events)" \
        || bad "pids.max 16: $n processes in the cgroup, pids.events max '$events'"
    echo 1 >$T/cgroup.kill
    i=0
    while ! grep -qx "populated 0" $T/cgroup.events && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    rmdir $T && ok "cgroup.kill empties the child cgroup, which is then removed" || bad "rmdir $T"
else
    bad "mkdir $T"
fi
# A sibling leaf the program moves itself into (needs write access at delegated/, the ancestor).
if mkdir $D/other && sh -c "echo \$\$ >$D/other/cgroup.procs && grep -qx 0::/delegated/other /proc/self/cgroup"; then
    ok "moves itself between leaves of the delegated subtree"
else
    bad "cannot move into $D/other"
fi
rmdir $D/other 2>/dev/null

check "unshare -Ur maps the user to root" sh -c '[ "$(unshare -Ur id -u)" = 0 ]'
grep -qw overlay /proc/filesystems && ok "overlay is loaded" || bad "overlay not in /proc/filesystems"
W=$(mktemp -d /tmp/selftest.XXXXXX)
mkdir "$W/lower" "$W/upper" "$W/work" "$W/merged"
echo lower >"$W/lower/f"
check "overlayfs mounts in a user namespace" unshare -Urm sh -c \
    "mount -t overlay overlay -o lowerdir=$W/lower,upperdir=$W/upper,workdir=$W/work $W/merged && echo upper >$W/merged/f && [ \"\$(cat $W/lower/f)\" = lower ]"
mkdir -p "$W/new/old"
check "pivot_root works in a user+mount namespace" unshare -Urm sh -c \
    "mount --bind $W/new $W/new && cd $W/new && pivot_root . old && [ -d /old/proc ]"
rm -rf "$W"
for m in /proc /sys /dev /dev/pts /dev/shm /tmp /run; do
    grep -q "^[^ ]* $m " /proc/self/mounts || bad "$m is not mounted"
done
[ "$(awk '$2 == "/" { print $3 }' /proc/self/mounts)" = tmpfs ] && ok "/ is a tmpfs, not the initramfs rootfs" \
    || bad "/ is $(awk '$2 == "/" { print $3 }' /proc/self/mounts)"

echo "selftest: $((checks - failures)) of $checks checks passed"
[ "$failures" -eq 0 ]
