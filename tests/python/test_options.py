"""Every isolation option of `rsandbox.run` / `Spec`, each shown to take effect inside the sandbox
(and, for the security ones, with a negative control showing the default differs)."""

import errno
import gzip
import hashlib
import io
import json
import os
import socket
import tarfile
import threading
from pathlib import Path

import pytest

import rsandbox
from conftest import must_work, skip, test_cgroup


def sh(script, **kw):
    return rsandbox.run(["sh", "-c", script], capture_output=True, text=True, timeout=30, **kw)


def feature(result, name):
    return next(f for f in result.report["features"] if f["name"] == name)


# ---------------------------------------------------------------------------- filesystem


def test_rootfs_replaces_the_host_view(busybox_root):
    r = sh("cat /etc/marker; ls /bin | wc -l; touch /etc/x 2>/dev/null || echo read-only",
           rootfs=busybox_root)
    lines = r.stdout.split()
    assert lines[0] == "busybox-rootfs" and lines[-1] == "read-only", r
    assert int(lines[1]) < 20, "the host's /bin leaked into the busybox root"


def test_template_copies_the_default_tree_from_the_second_sandbox_on():
    script = "grep ' /dev tmpfs ' /proc/self/mounts | cut -d' ' -f4 | cut -d, -f1"
    sh("true")  # a template is made at the second sandbox of a kind
    r = sh(script)
    names = [f["name"] for f in r.report["features"]]
    if "mount-template" not in names:
        start = feature(r, "start-without-copy")
        cgroup = feature(r, "cgroup")
        if os.geteuid() == 0 and cgroup["status"] == "enforced":
            return  # root enters a delegated cgroup only from its own user namespace
        assert start["status"] != "enforced", r.report
        return skip(f"the start copies the caller here: {start['detail']}")
    assert feature(r, "mount-template")["status"] == "enforced", r.report
    assert r.stdout == "ro\n", r
    # Negative control: built in full, /dev is the sandbox's own.
    full = sh(script, template=False)
    assert full.stdout == "rw\n", full
    assert "mount-template" not in [f["name"] for f in full.report["features"]]


def test_binds_are_read_only_and_rw_binds_writable(tmp_path):
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "f").write_text("seen\n")
    r = sh("cat /ro/f; echo x >/ro/g 2>/dev/null || echo ro-refused; echo written >/rw/out",
           binds=[(ro, "/ro")], rw_binds=[(str(rw), "/rw")])
    assert r.stdout == "seen\nro-refused\n", r
    assert (rw / "out").read_text() == "written\n"
    assert not (ro / "g").exists()
    same = sh(f"cat {ro}/f", binds=[ro])
    assert same.stdout == "seen\n"


def test_tmpfs_with_a_size_cap():
    r = sh("echo hi >/scratch/a && cat /scratch/a; head -c 3000000 /dev/zero >/scratch/big 2>/dev/null"
           " || echo full", tmpfs=["/scratch:1M"])
    assert r.stdout == "hi\nfull\n", r
    r = sh("head -c 3000000 /dev/zero >/s2/big && echo fits", tmpfs=[("/s2", "8M")])
    assert r.stdout == "fits\n", r


def test_overlay_ephemeral_and_persistent_upper(tmp_path, busybox_root):
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    (lower / "keep").write_text("lower\n")
    r = sh("cat /keep; echo new >/keep; echo added >/added; cat /keep", overlay=[lower, busybox_root])
    assert r.stdout == "lower\nnew\n", r
    assert (lower / "keep").read_text() == "lower\n" and not (lower / "added").exists()
    r = sh("echo changed >/keep; rm /etc/marker; echo added >/added", overlay=[lower, busybox_root],
           upper=upper)
    assert r.returncode == 0, r
    assert (upper / "keep").read_text() == "changed\n" and (upper / "added").read_text() == "added\n"
    assert (lower / "keep").read_text() == "lower\n" and (busybox_root / "etc/marker").exists()
    again = sh("cat /keep /added; cat /etc/marker 2>/dev/null || echo deleted",
               overlay=[upper, lower, busybox_root])
    assert again.stdout == "changed\nadded\ndeleted\n", again


def test_upper_size_caps_the_temporary_upper(busybox_root):
    # Kernel overlayfs in a user namespace cannot take a lower with mounts below it (like /): the
    # busybox root has none.
    r = sh("echo small >/ok && cat /ok; head -c 4000000 /dev/zero >/big 2>/dev/null || echo full",
           overlay=[busybox_root], upper_size="1M", overlay_driver="kernel")
    assert r.stdout == "small\nfull\n", r


def test_fuse_overlay_driver(tmp_path, busybox_root):
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        skip("/dev/fuse is not usable by this user (chmod 0666 /dev/fuse)")
    if not any(os.access(os.path.join(p, "fuse-overlayfs"), os.X_OK)
               for p in os.environ.get("PATH", "/usr/bin:/bin").split(":")):
        skip("fuse-overlayfs is not installed (apt-get install fuse-overlayfs)")
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "f").write_text("fuse\n")
    r = sh("cat /f; echo w >/f; cat /f; grep -c fuse /proc/self/mountinfo", overlay=[lower, busybox_root],
           overlay_driver="fuse")
    lines = r.stdout.split()
    assert lines[:2] == ["fuse", "w"] and int(lines[2]) >= 1, r
    assert (lower / "f").read_text() == "fuse\n"


def _blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _oci_layout(path: Path, files: dict, cmd: list) -> Path:
    """A one-layer OCI image layout (gzip layer) made from `files` (name -> bytes or a host path)."""
    (path / "blobs/sha256").mkdir(parents=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in files.items():
            if isinstance(content, Path):
                info = tar.gettarinfo(str(content), arcname=name)
                with open(content, "rb") as f:
                    tar.addfile(info, f)
            elif content is None:
                info = tarfile.TarInfo(name)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(content)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(content))
    layer = raw.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    layer_desc = dict(_blob(path, gzip.compress(layer)), mediaType="application/vnd.oci.image.layer.v1.tar+gzip")
    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": cmd, "Env": ["FROM_IMAGE=1"]},
              "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    config_desc = dict(_blob(path, json.dumps(config).encode()), mediaType="application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    manifest_desc = dict(_blob(path, json.dumps(manifest).encode()),
                         mediaType="application/vnd.oci.image.manifest.v1+json",
                         annotations={"org.opencontainers.image.ref.name": "v1"})
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}))
    return path


def test_kernel_driver_refuses_a_lower_with_submounts():
    with pytest.raises(rsandbox.UnsupportedError) as e:
        sh("true", overlay=["/"], overlay_driver="kernel")
    assert "mounts below it" in str(e.value) and e.value.remedy
    # The kernel's refusal, as its errno.
    assert e.value.errno == errno.EINVAL, e.value


def test_image_from_a_local_oci_layout(tmp_path, busybox_root):
    files = {"bin": None, "bin/busybox": busybox_root / "bin/busybox", "etc": None,
             "etc/release": b"from-the-image\n", "proc": None, "dev": None, "tmp": None, "work": None}
    layout = _oci_layout(tmp_path / "layout", files, ["/bin/busybox", "echo", "default-cmd"])
    store = tmp_path / "store"
    r = rsandbox.run(["/bin/busybox", "cat", "/etc/release"], capture_output=True, text=True,
                     image=f"{layout}:v1", image_store=store, timeout=30)
    assert r.stdout == "from-the-image\n", r
    assert any(store.iterdir()), "the unpacked layer is not in the store"
    with pytest.raises(rsandbox.ConfigError):
        rsandbox.run(["/bin/busybox", "true"], image=f"{layout}:no-such-tag", image_store=store)


# ---------------------------------------------------------------------------- identity


def test_uid_gid_and_root():
    assert sh("id -u; id -g", uid=4321, gid=765).stdout == "4321\n765\n"
    assert sh("id -u; id -g", root=True).stdout == "0\n0\n"
    default = sh("id -u").stdout.strip()
    assert default == str(os.getuid())


def _interfaces(proc_net_dev):
    return sorted(line.split(":")[0].strip() for line in proc_net_dev.splitlines()[2:])


def test_hostname_and_network():
    assert sh("hostname", hostname="box-7").stdout == "box-7\n"
    assert _interfaces(sh("cat /proc/net/dev").stdout) == ["lo"]
    with open("/proc/net/dev") as f:
        host = _interfaces(f.read())
    assert _interfaces(sh("cat /proc/net/dev", network="host").stdout) == host


# ---------------------------------------------------------------------------- limits


def test_limits_are_reported_and_required_ones_fail_without_a_controller():
    r = sh("true", memory="64M", pids=16, cpus=0.5, limits="best-effort")
    for name in ("limit.memory", "limit.pids", "limit.cpus"):
        f = feature(r, name)
        assert f["level"] == "best-effort" and f["status"] in ("enforced", "skipped"), f
        assert f["detail"], f
    if feature(r, "limit.memory")["status"] == "skipped":
        # No memory controller here (the VM lane tests the cgroup limits): a required limit
        # must refuse to run, naming the remedy.
        with pytest.raises(rsandbox.UnsupportedError) as e:
            sh("true", memory="64M")
        assert e.value.remedy and "cgroup" in str(e.value) and "best-effort" in e.value.remedy


def test_memory_best_effort_falls_back_to_an_address_space_limit():
    r = sh("ulimit -v", memory="64M", limits="best-effort")
    f = feature(r, "limit.memory")
    if f["status"] == "skipped":
        assert "RLIMIT_AS" in f["detail"]
        assert r.stdout.strip() == str(64 * 1024), r


def test_cpu_time_budget_kills_a_busy_loop():
    r = rsandbox.run(["sh", "-c", "while :; do :; done"], cpu_time=0.5, limits="best-effort", timeout=20)
    assert r.verdict == "cpu-timeout" and 0.4 < r.cpu_time < 3, r


def test_cpu_time_is_watched_while_output_is_captured():
    r = rsandbox.run(["sh", "-c", "while :; do echo tick; done"], cpu_time=0.5, limits="best-effort",
                     capture_output=True, output_limit=1000, timeout=20)
    assert r.verdict == "cpu-timeout" and r.wall_time < 10, r


def test_rlimits():
    assert sh("ulimit -n; ulimit -c", rlimits={"nofile": 64}).stdout == "64\n0\n"


def test_cgroup_parent_gives_the_sandbox_its_own_cgroup():
    parent = test_cgroup()
    if parent is None:
        skip("no delegated cgroup for this user (RSANDBOX_TEST_CGROUP; scripts/test makes one)")
    r = sh("grep '^0::' /proc/self/cgroup", cgroup_parent=parent)
    assert r.stdout == "0::/\n", r
    f = feature(r, "cgroup")
    assert f["status"] == "enforced" and parent in f["detail"], f
    assert not [d for d in os.listdir(parent) if d.startswith("rsandbox-")], "the cgroup was not removed"


def test_freeze_and_thaw():
    parent = test_cgroup()
    if parent is None:
        skip("no delegated cgroup for this user (RSANDBOX_TEST_CGROUP; scripts/test makes one)")
    sb = rsandbox.Sandbox(cgroup_parent=parent)
    with sb.spawn(["sh", "-c", "while :; do echo t; sleep 0.05; done"], stdout=rsandbox.PIPE) as p:
        assert p.stdout is not None
        p.stdout.readline()
        p.freeze()
        os.set_blocking(p.stdout.fileno(), False)
        import time

        time.sleep(0.3)
        try:
            while p.stdout.read1(65536):
                pass
        except BlockingIOError:
            pass
        time.sleep(0.4)
        try:
            frozen_output = p.stdout.read1(65536)
        except BlockingIOError:
            frozen_output = b""
        assert not frozen_output, "a frozen sandbox went on writing"
        p.thaw()
        os.set_blocking(p.stdout.fileno(), True)
        assert p.stdout.readline() == b"t\n"
        p.kill()
        assert p.wait(timeout=10) == -9


# ---------------------------------------------------------------------------- security


def test_seccomp_off_and_profile(tmp_path):
    status = "grep Seccomp: /proc/self/status"
    assert sh(status).stdout.split()[1] == "2"
    assert sh(status, seccomp="none").stdout.split()[1] == "0"
    profile = tmp_path / "deny-mkdir.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    }))
    script = "mkdir /scratch/d 2>/dev/null && echo made || echo refused"
    assert sh(script, tmpfs=["/scratch"], seccomp=profile).stdout == "refused\n"
    assert sh(script, tmpfs=["/scratch"]).stdout == "made\n"


def test_landlock_switch_and_report():
    on = sh("true")
    if feature(on, "landlock")["status"] != "enforced":
        skip("Landlock is not available on this kernel")
    assert feature(sh("true", landlock=False), "landlock")["status"] == "off"
    assert feature(sh("true", landlock="required"), "landlock")["status"] == "enforced"


@pytest.fixture
def loopback_listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                conn.close()
            except OSError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    srv.close()


def test_tcp_connect_rule_with_host_network(loopback_listener):
    port = loopback_listener
    probe = ["python3", "-c",
             f"import socket\ntry:\n socket.create_connection(('127.0.0.1', {port}), 5); print('connected')\n"
             "except OSError as e: print('refused', e.errno)"]

    def connect(**kw):
        return rsandbox.run(probe, capture_output=True, text=True, network="host", timeout=30, **kw)

    free = connect()
    assert free.stdout == "connected\n", free
    other = port + 1 if port < 65535 else port - 1
    only_other = connect(tcp_connect=[other])
    if "TCP" not in feature(only_other, "landlock")["detail"]:
        skip(f"Landlock TCP rules need ABI 4: {feature(only_other, 'landlock')['detail']}")
    assert only_other.stdout == "refused 13\n", only_other
    assert connect(tcp_connect=[port]).stdout == "connected\n"


def test_capabilities_kept_by_name():
    def cap_eff(**kw):
        return int(sh("grep CapEff: /proc/self/status", **kw).stdout.split()[1], 16)

    assert cap_eff() == 0
    assert cap_eff(capabilities=["CAP_NET_RAW"], root=True) == 1 << 13
    with pytest.raises(rsandbox.ConfigError):
        sh("true", capabilities=["CAP_NO_SUCH"])


def test_nested_user_namespaces_need_allow_nested_userns():
    script = "unshare -U true 2>/dev/null && echo nested || echo refused"
    assert sh(script).stdout == "refused\n"
    assert sh(script, allow_nested_userns=True).stdout == "nested\n"


def test_mask_proc():
    script = "grep -c ' /proc/keys ' /proc/self/mountinfo"
    assert sh(script).stdout == "1\n"
    assert sh(script, mask_proc=False).stdout == "0\n"


# ---------------------------------------------------------------------------- streams


def test_streams_to_files_and_descriptors(tmp_path):
    src = tmp_path / "in"
    src.write_bytes(b"from a file\n")
    out = tmp_path / "out"
    with open(src, "rb") as fin, open(out, "wb") as fout:
        r = rsandbox.run(["sh", "-c", "cat; echo to-err >&2"], stdin=fin, stdout=fout,
                         stderr=rsandbox.STDOUT)
    assert r.returncode == 0 and r.stdout is None
    assert out.read_bytes() == b"from a file\nto-err\n"
    rd, wr = os.pipe()
    r = rsandbox.run(["echo", "via-fd"], stdout=wr)
    os.close(wr)
    assert os.read(rd, 100) == b"via-fd\n"
    os.close(rd)


def test_stderr_merged_into_captured_stdout():
    r = rsandbox.run(["sh", "-c", "echo a; echo b >&2; echo c"], stdout=rsandbox.PIPE, stderr=rsandbox.STDOUT)
    assert r.stdout == b"a\nb\nc\n" and r.stderr is None


def test_encoding_and_errors():
    r = rsandbox.run(["printf", "caf\\351"], capture_output=True, encoding="latin-1")
    assert r.stdout == "café"
    with pytest.raises(UnicodeDecodeError):
        rsandbox.run(["printf", "\\377"], capture_output=True, text=True)
    r = rsandbox.run(["printf", "\\377"], capture_output=True, text=True, errors="replace")
    assert r.stdout == "\ufffd"


def test_must_work_is_honoured():
    # The suite's own switch: under RSANDBOX_MUST_WORK=1 a skip of something this machine has is
    # a failure (tested in the helper itself, not by skipping here).
    if must_work():
        with pytest.raises(pytest.fail.Exception):
            skip("probe")
