# shellcheck shell=bash
# Shared helpers for scripts/test and scripts/demo. Source it; do not execute it.
#
# Everything here is idempotent: on a machine that is already set up, no helper changes anything
# or touches the network.

# Name of the unprivileged user the rootless runs use.
RSBX_TEST_USER="${RSANDBOX_TEST_USER:-rsbx-test}"

rsbx_header() {
    printf '\n==== %s ====\n' "$*"
}

rsbx_info() {
    printf '  %s\n' "$*"
}

rsbx_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Moves to the repository root (the parent of the directory holding this file).
rsbx_cd_root() {
    cd -P "$(dirname "${BASH_SOURCE[0]}")/.." || rsbx_die "cannot cd to the repository root"
}

rsbx_is_root() {
    [ "$(id -u)" -eq 0 ]
}

rsbx_require_root() {
    rsbx_is_root || rsbx_die "$1 must run as root (it installs packages, creates the test user and switches to it)"
}

# rsbx_ensure_packages PKG...: installs the Debian packages that are missing. Runs `apt-get update`
# only when something has to be installed.
rsbx_ensure_packages() {
    command -v dpkg-query >/dev/null 2>&1 || rsbx_die "dpkg-query not found: these scripts expect Debian 12"
    local pkg missing=()
    for pkg in "$@"; do
        if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        rsbx_info "packages present: $*"
        return 0
    fi
    rsbx_is_root || rsbx_die "missing packages (${missing[*]}) and not root: install them with apt-get"
    rsbx_info "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || rsbx_die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null \
        || rsbx_die "apt-get install ${missing[*]} failed"
}

# Makes `cargo` callable, adding ~/.cargo/bin to PATH when needed.
rsbx_ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [ -n "${HOME:-}" ] && [ -d "$HOME/.cargo/bin" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 \
        || rsbx_die "cargo not found (looked on PATH and in \$HOME/.cargo/bin): install the Rust toolchain"
    rsbx_info "$(cargo --version)"
}

# rsbx_build_cli DEST: builds the release CLI as a static, position-dependent executable and
# installs it as DEST. Static: no dynamic loader, no libraries to map, no symbols to bind and no
# relocations to apply at each start (~0.7 ms of every `rsandbox run` on a small VM). With musl
# where Rust's musl target is installed, because glibc's start probes the CPU with `cpuid` at
# every exec, which a VM may trap (~0.6 ms of each run on the Intel VM of the README's table);
# otherwise with glibc, and it says so. libseccomp is linked in either way (core/build.rs supplies
# the one glibc-only symbol Debian's libseccomp.a needs under musl). The price of a fixed load
# address is the CLI's own code only (its heap, stacks and mappings stay randomised); the
# sandboxed command never shares its address space. The static build has its own target
# directory (target/static), so it never invalidates the ordinary one.
rsbx_build_cli() {
    local dest=$1 target_dir libseccomp triple out deps
    target_dir=$(cargo metadata --format-version 1 --no-deps \
        | rsbx_python -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    libseccomp=$(gcc -print-file-name=libseccomp.a 2>/dev/null || true)
    [ -f "$libseccomp" ] || rsbx_die "libseccomp.a not found (apt-get install libseccomp-dev gcc)"
    triple="$(uname -m)-unknown-linux-musl"
    if [ -d "$(rustc --print sysroot)/lib/rustlib/$triple/lib" ]; then
        # A directory of its own: the host's library directory also holds glibc's libc.a.
        deps="$target_dir/static/$triple-deps"
        mkdir -p "$deps"
        cp "$libseccomp" "$deps/libseccomp.a"
        LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=$deps \
            cargo rustc --release -p rsandbox-cli --bin rsandbox --target-dir "$target_dir/static" \
            --target "$triple" -- -C relocation-model=static
        out="$target_dir/static/$triple/release/rsandbox"
        rsbx_info "CLI: static, musl ($triple)"
    else
        rsbx_info "CLI: static, glibc (Rust's $triple target is not installed: rustup target add $triple)"
        LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=$(dirname "$libseccomp") \
            cargo rustc --release -p rsandbox-cli --bin rsandbox --target-dir "$target_dir/static" \
            -- -C target-feature=+crt-static -C relocation-model=static
        out="$target_dir/static/release/rsandbox"
    fi
    install -m 0755 "$out" "$dest"
    if ldd "$dest" 2>&1 | grep -q '=>'; then
        rsbx_die "$dest is not static: $(ldd "$dest" 2>&1 | tr '\n' ' ')"
    fi
}

# rsbx_bench_executable: reads cargo's --message-format=json output on stdin and prints the
# path of the last benchmark executable it built.
rsbx_bench_executable() {
    rsbx_python -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line) if line.startswith("{") else {}
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
        print(m["executable"])' | tail -n 1
}

# A python3 for parsing cargo's JSON output.
rsbx_python() {
    if command -v python3 >/dev/null 2>&1; then
        python3 "$@"
    elif [ -x /usr/bin/python3 ]; then
        /usr/bin/python3 "$@"
    else
        rsbx_die "python3 not found"
    fi
}

# rsbx_subid_append FILE USER: gives USER a 65536-id range in FILE (/etc/subuid or /etc/subgid)
# unless it already has one. The range starts at 100000, or after the highest range already
# allocated to someone else, so it never overlaps another user's.
rsbx_subid_append() {
    local file=$1 user=$2 start
    [ -e "$file" ] || install -m 0644 /dev/null "$file"
    if grep -q "^${user}:" "$file"; then
        return 0
    fi
    start=$(awk -F: 'NF >= 3 && $2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ {
                         end = $2 + $3; if (end > max) max = end }
                     END { if (max < 100000) max = 100000; print max }' "$file")
    printf '%s:%s:65536\n' "$user" "$start" >>"$file"
    rsbx_info "added ${user}:${start}:65536 to $file"
}

# Creates the unprivileged test user ($RSBX_TEST_USER) and its subordinate id ranges if missing.
rsbx_ensure_test_user() {
    local user=$RSBX_TEST_USER
    case "$user" in
        root | "" | *[!a-z0-9_.-]*) rsbx_die "unusable test user name '$user' (RSANDBOX_TEST_USER)" ;;
    esac
    if ! id -u "$user" >/dev/null 2>&1; then
        rsbx_is_root || rsbx_die "test user $user does not exist and we are not root"
        useradd -m -s /bin/bash "$user" || rsbx_die "useradd $user failed"
        rsbx_info "created user $user"
    fi
    [ "$(id -u "$user")" -ne 0 ] || rsbx_die "test user $user has uid 0; it must be unprivileged"
    if rsbx_is_root; then
        rsbx_subid_append /etc/subuid "$user"
        rsbx_subid_append /etc/subgid "$user"
    fi
    rsbx_info "test user: $(id "$user")"
    rsbx_info "subuid: $(grep "^${user}:" /etc/subuid 2>/dev/null || echo none)," \
        "subgid: $(grep "^${user}:" /etc/subgid 2>/dev/null || echo none)"
}

# Home directory of a user.
rsbx_home_of() {
    getent passwd "$1" | cut -d: -f6
}

# rsbx_as_user DIR VAR=VALUE... -- CMD ARGS...: runs CMD as $RSBX_TEST_USER from DIR with a clean
# environment (HOME, PATH, USER, LOGNAME, LANG plus the given assignments). When we are not root,
# runs CMD as ourselves with the same clean environment.
rsbx_as_user() {
    local dir=$1
    shift
    local user=$RSBX_TEST_USER home
    rsbx_is_root || user=$(id -un)
    home=$(rsbx_home_of "$user")
    local envs=("HOME=${home:-/}" "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        "USER=$user" "LOGNAME=$user" "LANG=C.UTF-8")
    while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
        envs+=("$1")
        shift
    done
    [ "${1:-}" = "--" ] && shift
    if rsbx_is_root; then
        (cd "$dir" && exec runuser -u "$user" -- env -i "${envs[@]}" "$@")
    else
        (cd "$dir" && exec env -i "${envs[@]}" "$@")
    fi
}

# rsbx_cgroup_cleanup DIR: moves this shell out of the cgroup subtree DIR (to its parent) and
# removes DIR with every cgroup below it, deepest first. Processes still inside are killed.
rsbx_cgroup_cleanup() {
    local top=$1 d
    [ -d "$top" ] || return 0
    echo $$ >"$(dirname "$top")/cgroup.procs" 2>/dev/null || true
    while read -r d; do
        [ -e "$d/cgroup.kill" ] && echo 1 >"$d/cgroup.kill" 2>/dev/null
        rmdir "$d" 2>/dev/null || { sleep 0.2; rmdir "$d" 2>/dev/null; } || true
    done < <(find "$top" -mindepth 0 -type d | sort -r)
}

# rsbx_python_venv [--release] DIR: builds the Python module's abi3 wheel with maturin (in
# DIR/build; optimised with --release, as the benchmark needs) and installs it into DIR/venv, a
# venv of Debian's /usr/bin/python3 outside /root, so that an unprivileged user can import it.
# Extra arguments are more packages for the venv.
rsbx_python_venv() {
    local profile=()
    if [ "$1" = --release ]; then
        profile=(--release)
        shift
    fi
    local dir=$1
    shift
    mkdir -p "$dir"
    if [ ! -x "$dir/build/bin/maturin" ]; then
        /usr/bin/python3 -m venv "$dir/build" && "$dir/build/bin/pip" install -q "maturin==1.16.0" || return 1
    fi
    rm -rf "$dir/wheels" "$dir/venv"
    (cd python && "$dir/build/bin/maturin" build -q "${profile[@]}" --auditwheel skip --compatibility linux --out "$dir/wheels") || return 1
    /usr/bin/python3 -m venv "$dir/venv" || return 1
    "$dir/venv/bin/pip" install -q "$dir"/wheels/*.whl "$@" || return 1
    chmod -R a+rX "$dir"
}
