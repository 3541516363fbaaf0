"""The Python module, run as the unprivileged user (tests/python/run)."""

import os
import threading

import pytest

import rsandbox


def test_run_like_subprocess():
    r = rsandbox.run(["sh", "-c", "echo out; echo err >&2; exit 3"], capture_output=True, text=True)
    assert (r.returncode, r.stdout, r.stderr, r.verdict) == (3, "out\n", "err\n", "exit-nonzero")
    assert r.wall_time > 0 and r.cpu_time >= 0 and r.memory_peak > 0
    assert not r.timed_out and not r.oom_killed and not r.truncated


def test_input_bytes_and_text():
    assert rsandbox.run(["cat"], input=b"\x00\x01", capture_output=True).stdout == b"\x00\x01"
    assert rsandbox.run(["cat"], input="héllo", capture_output=True, text=True).stdout == "héllo"


def test_signal_returncode_is_negative():
    r = rsandbox.run(["sh", "-c", "kill -TERM $$"], capture_output=True)
    assert r.returncode == -15 and r.signal == 15 and r.verdict == "signaled"


def test_timeout_expired_kills_the_tree():
    with pytest.raises(rsandbox.TimeoutExpired) as e:
        rsandbox.run(["sh", "-c", "sleep 100 & sleep 100"], timeout=0.3, capture_output=True)
    assert e.value.timeout == 0.3


def test_check_raises_called_process_error():
    with pytest.raises(rsandbox.CalledProcessError) as e:
        rsandbox.run(["sh", "-c", "echo partial; exit 2"], capture_output=True, check=True)
    assert e.value.returncode == 2 and e.value.stdout == b"partial\n"


def test_isolation_options_and_env():
    r = rsandbox.run(["sh", "-c", "id -u; hostname; echo $K; pwd"], capture_output=True, text=True,
                     uid=1234, hostname="py-box", env={"K": "v"}, cwd="/tmp")
    assert r.stdout == "1234\npy-box\nv\n/tmp\n"
    os.environ["RSBX_PY_SECRET"] = "leak"
    assert "RSBX_PY_SECRET" not in rsandbox.run(["env"], capture_output=True, text=True).stdout


def test_binds_and_network(tmp_path):
    (tmp_path / "f").write_text("bound\n")
    r = rsandbox.run(["cat", "/data/f"], capture_output=True, text=True, binds=[(str(tmp_path), "/data")])
    assert r.stdout == "bound\n"
    lo = rsandbox.run(["cat", "/proc/net/dev"], capture_output=True, text=True).stdout
    assert [l.split(":")[0].strip() for l in lo.splitlines()[2:]] == ["lo"]


def test_report_and_protections():
    r = rsandbox.run(["grep", "-E", "^(Seccomp|NoNewPrivs|CapEff):", "/proc/self/status"], capture_output=True, text=True)
    assert "Seccomp:\t2" in r.stdout and "NoNewPrivs:\t1" in r.stdout and "CapEff:\t0000000000000000" in r.stdout
    names = {f["name"]: f["status"] for f in r.report["features"]}
    assert names["seccomp"] == "enforced" and names["namespace.pid"] == "enforced"


def test_output_limit_truncates():
    r = rsandbox.run(["head", "-c", "100000", "/dev/zero"], capture_output=True, output_limit=1000)
    assert len(r.stdout) == 1000 and r.truncated and r.verdict == "output-limit"


def test_large_output_through_pipes_without_deadlock():
    r = rsandbox.run(["sh", "-c", "head -c 20000000 /dev/zero; head -c 20000000 /dev/zero >&2"], capture_output=True, timeout=60)
    assert len(r.stdout) == 20000000 and len(r.stderr) == 20000000


def test_popen_like_process():
    sb = rsandbox.Sandbox(hostname="popen")
    with sb.spawn(["sh", "-c", "read x; echo got $x; hostname"], stdin=rsandbox.PIPE, stdout=rsandbox.PIPE, text=True) as p:
        assert p.pid > 0
        out, err = p.communicate("line\n")
    assert out == "got line\npopen\n" and err is None and p.returncode == 0
    with sb.spawn(["sleep", "30"]) as p:
        assert p.poll() is None
        with pytest.raises(rsandbox.TimeoutExpired):
            p.wait(timeout=0.1)
        p.kill()
        assert p.wait() == -9


def test_spec_round_trip():
    s = rsandbox.Spec(hostname="x", memory="64M", limits="best-effort", timeout=2)
    again = rsandbox.Spec.from_json(s.to_json())
    assert again.data == s.data and s.data["limits"]["memory"] == 64 << 20
    with pytest.raises(rsandbox.ConfigError):
        rsandbox.Spec.from_json('{"process": {"argz": []}}')


@pytest.mark.parametrize("kwargs", [
    {"memory": -1}, {"memory": "12Q"}, {"uid": "root"}, {"network": "sideways"}, {"timeout": -1},
    {"pids": 0}, {"memory": True},
])
def test_bad_arguments_raise_config_error(kwargs):
    with pytest.raises(rsandbox.ConfigError) as e:
        rsandbox.run(["true"], **kwargs)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("args", [[], "echo hi", ["echo", 3], ["echo", "a\0b"]])
def test_bad_argv(args):
    with pytest.raises(rsandbox.ConfigError):
        rsandbox.run(args)


def test_os_errors_are_the_builtin_classes(tmp_path):
    with pytest.raises(FileNotFoundError):
        rsandbox.run(["no-such-command-rsbx"])
    with pytest.raises(FileNotFoundError) as e:
        rsandbox.run(["true"], rootfs="/nonexistent/rootfs")
    assert e.value.path == "/nonexistent/rootfs" and e.value.errno == 2
    f = tmp_path / "plain"
    f.write_text("x")
    f.chmod(0o644)
    with pytest.raises(PermissionError):
        rsandbox.run(["/d/plain"], binds=[(str(tmp_path), "/d")])


def test_setup_and_unsupported_errors_carry_details():
    with pytest.raises(rsandbox.SetupError) as e:
        rsandbox.run(["true"], cwd="/does/not/exist")
    assert e.value.step == "chdir" and e.value.errno == 2
    with pytest.raises(rsandbox.UnsupportedError) as e:
        rsandbox.run(["true"], memory="64M", cgroup_parent="/sys/fs/cgroup/rsandbox-no-such-parent")
    assert e.value.remedy


def test_threads_spawn_concurrently():
    errors = []

    def worker(n):
        for i in range(50):
            r = rsandbox.run(["sh", "-c", f"echo {n}-{i}"], capture_output=True, text=True)
            if r.stdout != f"{n}-{i}\n":
                errors.append(r)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert os.waitpid(-1, os.WNOHANG) == (0, 0) if _has_children() else True


def _has_children():
    try:
        os.waitpid(-1, os.WNOHANG)
        return True
    except ChildProcessError:
        return False


def test_doctor():
    d = rsandbox.doctor()
    assert {c["name"] for c in d["checks"]} >= {"user-namespaces", "seccomp", "landlock"}


def test_ctrl_c_during_wait_kills_the_sandbox():
    import signal
    import time

    with rsandbox.Sandbox().spawn(["sleep", "30"]) as p:
        timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            p.wait()
        assert time.monotonic() - start < 5
        assert p.poll() is not None, "the sandbox outlived the interrupt"


def test_no_descriptor_leaks_into_the_sandbox():
    r, w = os.pipe()
    os.set_inheritable(r, True)
    out = rsandbox.run(["sh", "-c", "ls /proc/$$/fd"], capture_output=True, text=True).stdout
    os.close(r)
    os.close(w)
    assert out.split() == ["0", "1", "2"]


def test_python_m_rsandbox():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "rsandbox", "run", "--", "sh", "-c", "exit 7"])
    assert r.returncode == 7
    d = subprocess.run([sys.executable, "-m", "rsandbox", "doctor"], capture_output=True, text=True)
    assert d.returncode == 0 and '"checks"' in d.stdout
