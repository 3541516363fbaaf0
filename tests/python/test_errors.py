"""Bad input of every kind gets the right exception (never a crash), and every exception class is
raised where it should be, with its details."""

import copy
import errno
import os
import pathlib
import pickle
import subprocess
import time

import pytest

import rsandbox

BAD_OPTIONS = [
    # sizes
    {"memory": -1}, {"memory": 0}, {"memory": "12Q"}, {"memory": "M"}, {"memory": True},
    {"memory": 1.5}, {"memory": [1]}, {"memory_swap": "x"}, {"output_limit": -5},
    {"upper_size": "1M"},  # without overlay=
    # numbers
    {"pids": 0}, {"pids": -3}, {"pids": 2.5}, {"pids": "10"}, {"cpus": 0}, {"cpus": float("nan")},
    {"cpus": float("inf")}, {"cpu_time": -1}, {"cpu_weight": 0.5}, {"timeout": -1},
    {"timeout": "soon"}, {"timeout": True}, {"timeout": 0},
    # ids and names
    {"uid": "root"}, {"uid": -1}, {"uid": 2**32}, {"gid": 1.0}, {"hostname": 7},
    {"hostname": "x" * 65}, {"hostname": "a\0b"}, {"network": "sideways"}, {"limits": "sometimes"},
    # paths
    {"rootfs": 42}, {"rootfs": ""}, {"rootfs": "bad\0path"}, {"rootfs": b"/bytes"},
    {"binds": "/etc"}, {"binds": [("/etc",)]}, {"binds": [("/etc", "/a", "/b")]}, {"binds": [None]},
    {"rw_binds": [3]}, {"tmpfs": "/t"}, {"tmpfs": [("/t", -1)]}, {"tmpfs": ["/t:lots"]},
    {"overlay": "/"}, {"overlay": [1]}, {"overlay_driver": "magic", "overlay": ["/"]},
    {"upper": "/tmp/u"}, {"image_store": "/tmp/s"},
    {"rootfs": "/", "overlay": ["/"]}, {"cgroup_parent": 5},
    # security
    {"seccomp": 3}, {"landlock": "maybe"}, {"landlock_read": "/etc"}, {"tcp_bind": [0]},
    {"tcp_connect": [70000]}, {"tcp_connect": ["80"]}, {"capabilities": "CAP_NET_RAW"},
    {"capabilities": [1]}, {"capabilities": ["CAP_NOPE"]}, {"allow_nested_userns": "yes"},
    {"mask_proc": 1}, {"template": "no"}, {"rlimits": {"nofile": -1}}, {"rlimits": {"nofile": "64"}}, {"rlimits": [1]},
    {"rlimits": {"no-such-limit": 1}},
]


@pytest.mark.parametrize("kwargs", BAD_OPTIONS, ids=lambda kw: ",".join(f"{k}={v!r}"[:40] for k, v in kw.items()))
def test_bad_options_raise_config_error(kwargs):
    with pytest.raises(rsandbox.ConfigError) as e:
        rsandbox.run(["true"], **kwargs)
    assert isinstance(e.value, ValueError) and str(e.value)
    assert e.value.kind == "invalid-spec"


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError):
        rsandbox.run(["true"], memroy="1G")


@pytest.mark.parametrize("args", [[], "echo hi", b"echo", ["echo", 3], ["echo", None], ["echo", "a\0b"],
                                  ["echo", b"bytes"], None, 42, [""]])
def test_bad_argv(args):
    with pytest.raises((rsandbox.ConfigError, rsandbox.SandboxFileNotFoundError)):
        rsandbox.run(args)


@pytest.mark.parametrize("kwargs", [
    {"env": {"K": 1}}, {"env": {1: "v"}}, {"env": {"A=B": "v"}}, {"env": {"K": "a\0b"}}, {"env": ["K=v"]},
    {"cwd": "bad\0dir"}, {"cwd": ""}, {"stdout": "file.txt"}, {"stdout": -7}, {"stdout": True},
    {"stdin": rsandbox.STDOUT}, {"stdin": rsandbox.PIPE}, {"stdin": 999999},
    {"input": 12}, {"input": b"x", "stdin": rsandbox.DEVNULL},
    {"capture_output": True, "stdout": rsandbox.PIPE}, {"spec": "not a spec"},
])
def test_bad_run_arguments(kwargs):
    with pytest.raises(rsandbox.ConfigError):
        rsandbox.run(["true"], **kwargs)


def test_bad_spec_json():
    for text in ['{"process": {"argz": []}}', "not json", '{"limits": {"memory": "lots"}}', "[]", 5]:
        with pytest.raises(rsandbox.ConfigError):
            rsandbox.Spec.from_json(text)  # type: ignore[arg-type]


def test_spec_round_trip_and_reuse():
    s = rsandbox.Spec(hostname="x", memory="64M", limits="best-effort", timeout=2, tmpfs=["/t:1M"],
                      binds=["/etc"], rlimits={"nofile": 100}, tcp_connect=[80])
    again = rsandbox.Spec.from_json(s.to_json())
    assert again == s and s.data["limits"]["memory"] == 64 << 20
    assert s.validate() is s
    copy = s.copy().update(hostname="y")
    assert s.data["hostname"] == "x" and copy.data["hostname"] == "y"
    r = rsandbox.run(["hostname"], spec=s, capture_output=True, text=True, hostname="z")
    assert r.stdout == "z\n" and s.data["hostname"] == "x"
    sb = rsandbox.Sandbox(s, hostname="from-sandbox")
    assert sb.run(["hostname"], capture_output=True, text=True).stdout == "from-sandbox\n"


def test_os_errors_are_the_builtin_classes(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        rsandbox.run(["no-such-command-rsbx"])
    assert isinstance(e.value, rsandbox.SandboxError) and e.value.kind == "executable-not-found"
    with pytest.raises(FileNotFoundError) as e:
        rsandbox.run(["true"], rootfs="/nonexistent/rootfs")
    assert e.value.path == e.value.filename == "/nonexistent/rootfs" and e.value.errno == errno.ENOENT
    with pytest.raises(FileNotFoundError):
        rsandbox.run(["true"], binds=["/nonexistent/bind-source"])
    f = tmp_path / "plain"
    f.write_text("x")
    f.chmod(0o644)
    with pytest.raises(PermissionError) as e:
        rsandbox.run(["/d/plain"], binds=[(str(tmp_path), "/d")])
    assert e.value.kind == "not-executable"


def test_setup_error_names_step_errno_and_path():
    with pytest.raises(rsandbox.SetupError) as e:
        rsandbox.run(["true"], cwd="/does/not/exist")
    assert e.value.step == "chdir" and e.value.errno == errno.ENOENT
    assert "/does/not/exist" in str(e.value)


def test_unsupported_error_names_feature_and_remedy():
    with pytest.raises(rsandbox.UnsupportedError) as e:
        rsandbox.run(["true"], memory="64M", cgroup_parent="/sys/fs/cgroup/rsandbox-no-such-parent")
    assert e.value.remedy and e.value.feature and e.value.kind == "unsupported"


def test_timeout_expired_is_like_subprocess():
    with pytest.raises(rsandbox.TimeoutExpired) as e:
        rsandbox.run(["sh", "-c", "echo partial; sleep 100"], timeout=0.5, capture_output=True)
    assert e.value.timeout == 0.5 and e.value.stdout == e.value.output == b"partial\n"
    assert e.value.cmd == ["sh", "-c", "echo partial; sleep 100"]
    assert "timed out after 0.5 seconds" in str(e.value)
    # Unlike subprocess, the whole result comes with it: a grader keeps the verdict and usage.
    r = e.value.result
    assert r.verdict == "wall-timeout" and r.timed_out and r.stdout == b"partial\n", r
    assert 0.4 < r.wall_time < 10 and r.report["features"], r
    # A spec's own timeout raises the same way.
    with pytest.raises(rsandbox.TimeoutExpired) as e:
        rsandbox.run(["sleep", "100"], spec=rsandbox.Spec(timeout=0.3))
    assert e.value.timeout == 0.3


def test_called_process_error_is_like_subprocess():
    with pytest.raises(rsandbox.CalledProcessError) as e:
        rsandbox.run(["sh", "-c", "echo out; echo err >&2; exit 2"], capture_output=True, check=True, text=True)
    assert (e.value.returncode, e.value.stdout, e.value.stderr) == (2, "out\n", "err\n")
    assert str(e.value) == str(subprocess.CalledProcessError(2, e.value.cmd))
    with pytest.raises(rsandbox.CalledProcessError) as e:
        rsandbox.run(["sh", "-c", "kill -KILL $$"], check=True)
    assert e.value.returncode == -9 and "SIGKILL" in str(e.value)
    rsandbox.run(["true"], check=True)


def test_every_error_is_a_sandbox_error():
    for cls in (rsandbox.ConfigError, rsandbox.SetupError, rsandbox.UnsupportedError,
                rsandbox.SandboxFileNotFoundError, rsandbox.SandboxPermissionError,
                rsandbox.TimeoutExpired, rsandbox.CalledProcessError):
        assert issubclass(cls, rsandbox.SandboxError)


def test_process_misuse():
    sb = rsandbox.Sandbox()
    with sb.spawn(["cat"], stdin=rsandbox.PIPE, stdout=rsandbox.PIPE) as p:
        with pytest.raises(rsandbox.ConfigError):
            p.send_signal(0)
        with pytest.raises(rsandbox.ConfigError):
            p.wait(timeout=-1)
        assert p.communicate(b"once") == (b"once", None)
        with pytest.raises(ValueError):
            p.communicate(b"twice")
        # Signalling a reaped sandbox is a no-op, as with Popen.
        p.kill()
    with sb.spawn(["true"]) as p:
        with pytest.raises(ValueError):
            p.communicate(b"no stdin pipe")
    with pytest.raises(rsandbox.ConfigError):
        rsandbox.Sandbox(spec={"hostname": "x"})  # type: ignore[arg-type]


def test_path_like_arguments(tmp_path):
    (tmp_path / "f").write_text("pathlib\n")
    r = rsandbox.run([pathlib.Path("/bin/cat"), "/d/f"], binds=[(tmp_path, pathlib.PurePosixPath("/d"))],
                     capture_output=True, text=True, cwd=pathlib.Path("/d"))
    assert r.stdout == "pathlib\n", r


def test_fd_count_is_stable_over_many_runs_and_errors():
    def fds():
        # A result can come before the sandbox's init has exited; the library's background
        # reaper holds that sandbox's pidfd and control pipe until then (milliseconds). Count
        # once the number has stopped moving: a leak stays, a pending reap does not.
        deadline = time.monotonic() + 5
        last = len(os.listdir("/proc/self/fd"))
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = len(os.listdir("/proc/self/fd"))
            if now == last:
                break
            last = now
        return last

    rsandbox.run(["true"])
    before = fds()
    for _ in range(20):
        rsandbox.run(["true"], capture_output=True, input=b"x")
        with pytest.raises(FileNotFoundError):
            rsandbox.run(["no-such-command-rsbx"], capture_output=True)
        with rsandbox.Sandbox().spawn(["cat"], stdin=rsandbox.PIPE, stdout=rsandbox.PIPE,
                                      stderr=rsandbox.PIPE) as p:
            p.communicate(b"y")
        with rsandbox.Sandbox().spawn(["sleep", "10"], stdin=rsandbox.PIPE, stdout=rsandbox.PIPE):
            pass
    assert fds() == before


def _fields(e):
    """Everything an exception of this package carries."""
    fields = dict(vars(e), args=e.args, str=str(e), type=type(e))
    if isinstance(e, OSError):
        fields.update(errno=e.errno, strerror=e.strerror, filename=e.filename, filename2=e.filename2)
    for name in ("kind", "errno", "step", "remedy", "path"):
        fields[name] = getattr(e, name)
    return fields


def _raised(f, *args, **kwargs):
    try:
        f(*args, **kwargs)
    except rsandbox.SandboxError as e:
        return e
    raise AssertionError(f"{f.__name__}{args} raised nothing")


def test_every_exception_pickles_and_copies_with_all_its_attributes(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("x")
    plain.chmod(0o644)
    errors = [
        _raised(rsandbox.run, ["sh", "-c", "echo partial; sleep 30"], timeout=0.3, capture_output=True),
        _raised(rsandbox.run, ["sh", "-c", "echo out; echo err >&2; exit 3"], capture_output=True,
                text=True, check=True),
        _raised(rsandbox.run, ["no-such-command-rsbx"]),
        _raised(rsandbox.run, ["true"], rootfs="/nonexistent/rootfs"),
        _raised(rsandbox.run, ["/d/plain"], binds=[(str(tmp_path), "/d")]),
        _raised(rsandbox.run, ["true"], cwd="/does/not/exist"),
        _raised(rsandbox.run, ["true"], memory="lots"),
        _raised(rsandbox.run, ["true"], memory="64M", cgroup_parent="/sys/fs/cgroup/rsandbox-no-such-parent"),
        # Made directly, every attribute set.
        rsandbox.TimeoutExpired(["a", "b"], 1.5, "out", "err"),
        rsandbox.CalledProcessError(-9, ["a"], b"out", b"err"),
        rsandbox.SetupError("failed", kind="setup", errno=errno.EPERM, step="mount", remedy="r", path="/p"),
        rsandbox.SandboxError("plain"),
    ]
    kinds = [type(e) for e in errors]
    assert kinds[:8] == [rsandbox.TimeoutExpired, rsandbox.CalledProcessError, rsandbox.SandboxFileNotFoundError,
                         rsandbox.SandboxFileNotFoundError, rsandbox.SandboxPermissionError,
                         rsandbox.SetupError, rsandbox.ConfigError, rsandbox.UnsupportedError], kinds
    assert errors[3].errno == errno.ENOENT and errors[3].filename == "/nonexistent/rootfs"
    assert errors[4].errno == errno.EACCES
    for e in errors:
        for again in (pickle.loads(pickle.dumps(e)), copy.copy(e), copy.deepcopy(e)):
            assert _fields(again) == _fields(e), e
    timeout = pickle.loads(pickle.dumps(errors[0]))
    assert timeout.stdout == b"partial\n" and timeout.timeout == 0.3 and timeout.cmd == errors[0].cmd
    assert timeout.result.verdict == "wall-timeout" and timeout.result.report["features"]
    called = pickle.loads(pickle.dumps(errors[1]))
    assert (called.returncode, called.stdout, called.stderr) == (3, "out\n", "err\n")
    assert isinstance(pickle.loads(pickle.dumps(errors[2])), FileNotFoundError)
    assert pickle.loads(pickle.dumps(errors[7])).feature == errors[7].feature


MULTIPROCESSING_POOL = r"""
import functools, multiprocessing, rsandbox

if __name__ == "__main__":
    job = functools.partial(rsandbox.run, timeout=0.3)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pending = pool.map_async(job, [["sleep", "0"], ["sleep", "30"]])
        try:
            pending.get(timeout=60)
        except rsandbox.TimeoutExpired as e:
            assert e.timeout == 0.3 and e.result.verdict == "wall-timeout", e
            print("TimeoutExpired")
        # Control: the pool still works.
        print([r.returncode for r in pool.map(job, [["true"], ["false"]])])
"""


def test_a_timeout_in_a_multiprocessing_pool_reaches_the_caller():
    # The worker sends the exception back pickled: one that cannot be unpickled kills the pool's
    # result handler and the caller waits forever. (In an interpreter of its own: the spawn
    # context leaves a resource tracker process behind.)
    import sys

    r = subprocess.run([sys.executable, "-c", MULTIPROCESSING_POOL], capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0 and r.stdout.split("\n")[:2] == ["TimeoutExpired", "[0, 1]"], r


@pytest.mark.parametrize("kwargs, error", [
    ({"encoding": "no-such-codec"}, LookupError),
    ({"encoding": 5}, TypeError),
    ({"encoding": "base64"}, LookupError),  # a codec, but not a text encoding
    ({"text": True, "errors": "no-such-handler"}, LookupError),
    ({"text": True, "errors": 5}, TypeError),
], ids=["unknown-encoding", "encoding-int", "not-text-encoding", "unknown-errors", "errors-int"])
def test_bad_encoding_or_errors_is_refused_before_anything_runs(tmp_path, kwargs, error):
    cmd = ["sh", "-c", "touch /w/ran"]
    binds = [(str(tmp_path), "/w")]
    with pytest.raises(error):
        rsandbox.run(cmd, capture_output=True, rw_binds=binds, **kwargs)
    with pytest.raises(error):
        rsandbox.Sandbox(rw_binds=binds).spawn(cmd, stdout=rsandbox.PIPE, **kwargs)
    with rsandbox.Pool(1, rw_binds=binds) as pool:
        with pytest.raises(error):
            pool.run(cmd, capture_output=True, **kwargs)
        with pytest.raises(error):
            pool.spawn(cmd, stdout=rsandbox.PIPE, **kwargs)
    time.sleep(0.2)
    assert not (tmp_path / "ran").exists(), "the command ran before the codec was refused"
    # Control: the same with a sound codec runs.
    r = rsandbox.run(cmd, capture_output=True, rw_binds=binds, encoding="latin-1", errors="strict")
    assert r.returncode == 0 and (tmp_path / "ran").exists()
